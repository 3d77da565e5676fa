// Package rules is Herald's domain: notification rules, their policy
// bindings and transports, the rule engine that evaluates every stored event
// against every enabled rule with authentik's semantics, the fan-out that
// writes notifications and deliveries, and the outbox that carries effects
// out after commit.
//
// The engine never talks to goja or SMTP itself. It depends on the
// [Evaluator] interface, which package jsrt implements, and on
// [EventPublisher], which package events implements.
package rules
