package events

// Partition is partition, for the tests of package events_test.
var Partition = partition

// Held reports the messages and bytes s holds.
func (s *Subscriber) Held() (msgs, bytes int) { return s.held.held() }
