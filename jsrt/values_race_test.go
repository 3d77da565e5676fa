//go:build race

package jsrt_test

// raceEnabled: the race detector is on, which makes JavaScript much slower.
const raceEnabled = true
