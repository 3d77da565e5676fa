package events

// Partition is partition, for the tests of package events_test.
var Partition = partition

// Held reports the messages and bytes s holds.
func (s *Subscriber) Held() (msgs, bytes int) {
	s.held.mu.Lock()
	defer s.held.mu.Unlock()
	return len(s.held.since), s.held.bytes
}
