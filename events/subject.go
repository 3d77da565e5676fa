package events

import "strings"

// Defaults for the names an installation can change (DESIGN.md §8).
const (
	DefaultStream        = "HERALD_EVENTS"
	DefaultSubjectPrefix = "herald.events"
	DefaultConsumer      = "herald-worker"
)

// Subject returns the subject an event with action is published on:
// prefix + "." + action, with characters that NATS subjects reserve
// (whitespace, '.', '*', '>') replaced by '_'.
func Subject(prefix, action string) string {
	return prefix + "." + subjectToken(action)
}

func subjectToken(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', '*', '>', ' ', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, s)
}
