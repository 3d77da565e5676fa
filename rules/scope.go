package rules

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/events"
)

// Scope is what a policy evaluation may touch: the event's transaction, the
// rule set it runs under, and the effects it queues. Effects written through
// a Scope commit or roll back with the event.
type Scope struct {
	// Tx is the event's transaction.
	Tx *sqlx.Tx
	// Rules is the rule set the event is evaluated under.
	Rules *RuleSet
	// Rule and Binding are what is being evaluated (nil for a dry run).
	Rule    *Rule
	Binding *Binding

	run *eventRun
}

// causedBy is the loop-guard record that every event Herald creates carries
// in context.caused_by.
type causedBy struct {
	Event  string `json:"event"`
	Rule   string `json:"rule,omitempty"`
	Policy string `json:"policy,omitempty"`
	Depth  int    `json:"depth"`
}

// EventDepth is how many Herald-created events separate ev from an event
// published from outside (0 for those).
func EventDepth(ev *events.Event) int {
	cb, _ := ev.Context["caused_by"].(map[string]any)
	d, _ := events.Int64(cb["depth"])
	return int(d)
}

// CreateEvent stores a new event caused by the scope's event and queues it
// in the outbox for publishing after commit. The event's pk is derived from
// the causing event, the rule, the policy and a per-event counter, so a
// re-run of the same event creates the same pk.
func (s *Scope) CreateEvent(ctx context.Context, action, app string, user map[string]any, evContext map[string]any, policy *Policy) (events.Event, error) {
	if s == nil || s.run == nil {
		return events.Event{}, fmt.Errorf("create event %q: not allowed in a dry run", action)
	}
	return s.run.createEvent(ctx, s.Tx, action, app, user, evContext, s.Rule, policy)
}

// derivedUUID returns a name-based UUID (version 5 layout) from parts.
func derivedUUID(parts ...string) string {
	h := sha1.Sum([]byte(strings.Join(parts, "\x00")))
	h[6] = (h[6] & 0x0f) | 0x50
	h[8] = (h[8] & 0x3f) | 0x80
	x := hex.EncodeToString(h[:16])
	return x[:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
}

func (r *eventRun) createEvent(ctx context.Context, tx *sqlx.Tx, action, app string, user, evContext map[string]any, rule *Rule, policy *Policy) (events.Event, error) {
	r.created++
	cb := causedBy{Event: r.ev.PK, Depth: EventDepth(r.ev) + 1}
	ruleID, policyID := "", ""
	if rule != nil {
		cb.Rule, ruleID = rule.Name, rule.ID
	}
	if policy != nil {
		cb.Policy, policyID = policy.Name, policy.ID
	}
	c := events.Cleanse(events.Sanitize(evContext).(map[string]any))
	c["caused_by"] = map[string]any{"event": cb.Event, "rule": cb.Rule, "policy": cb.Policy, "depth": int64(cb.Depth)}
	if user == nil {
		user = map[string]any{}
	}
	ev := events.Event{
		PK:      derivedUUID(r.ev.PK, ruleID, policyID, action, fmt.Sprint(r.created)),
		Action:  action,
		App:     app,
		User:    events.Sanitize(user).(map[string]any),
		Context: c,
		Created: time.Now().UTC(),
		Brand:   r.ev.Brand,
	}
	if err := insertCreatedEvent(ctx, tx, &ev); err != nil {
		return events.Event{}, err
	}
	r.createdEvents++
	return ev, nil
}
