package jsrt

// installJSON adjusts the JSON built-in before the shared globals are
// frozen.
func (v *vm) installJSON() {}
