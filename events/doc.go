// Package events owns Herald's wire format and its inbound edge: the [Event]
// type and its strict [Decode], authentik's sanitising and cleansing of event
// contexts, the stream and subject names, the [Publisher] that sets
// Nats-Msg-Id, and the [Subscriber] that consumes a durable JetStream pull
// consumer with explicit acks and hands batches of events to a [Handler].
//
// It imports only the standard library and nats.go.
package events
