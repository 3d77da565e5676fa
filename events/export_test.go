package events

// Partition is partition, for the tests of package events_test.
var Partition = partition
