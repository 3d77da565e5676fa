package rules

import (
	"context"
	"errors"
	"fmt"

	"github.com/heraldhq/herald/events"
)

// DryRunReport is what evaluating an event would do: every binding's
// result, the rules that fire, and the effects, none of them kept.
type DryRunReport struct {
	Event         events.Event   `json:"event"`
	Bindings      []BindingTrace `json:"bindings"`
	Fired         []string       `json:"fired"`
	Notifications []NotifiedUser `json:"notifications"`
	CreatedEvents []events.Event `json:"created_events"`
	Emails        []Email        `json:"emails"`
	Saves         []string       `json:"saves"`
	// Guard is why the event matches no rule (a loop guard), if it does not.
	Guard string `json:"guard,omitempty"`
}

// BindingTrace is one binding's evaluation in a dry run.
type BindingTrace struct {
	Rule     string    `json:"rule"`
	Order    int       `json:"order"`
	Kind     string    `json:"kind"` // policy, group or user
	Target   string    `json:"target"`
	Negate   bool      `json:"negate"`
	Passing  bool      `json:"passing"`
	Messages []string  `json:"messages,omitempty"`
	Raw      any       `json:"raw_result,omitempty"`
	Logs     []LogLine `json:"logs,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// NotifiedUser is a notification a dry run would create, with the
// deliveries it would get.
type NotifiedUser struct {
	Rule       string   `json:"rule"`
	UserID     int64    `json:"user_id"`
	Severity   string   `json:"severity"`
	Body       string   `json:"body"`
	Transports []string `json:"transports"`
}

func (t *DryRunReport) addBinding(rule *Rule, b *Binding, res PolicyResult, passing bool) {
	bt := BindingTrace{Rule: rule.Name, Order: b.Order, Negate: b.Negate, Passing: passing,
		Messages: res.Messages, Raw: res.Raw, Logs: res.Logs}
	switch {
	case b.GroupID != nil:
		bt.Kind, bt.Target = "group", *b.GroupID
	case b.UserID != nil:
		bt.Kind, bt.Target = "user", fmt.Sprint(*b.UserID)
	case b.Policy != nil:
		bt.Kind, bt.Target = "policy", b.Policy.Name
	}
	if res.Err != nil {
		bt.Error = res.Err.Error()
	}
	t.Bindings = append(t.Bindings, bt)
}

// ErrAlreadyStored is returned by a dry run of an event whose pk is stored.
var ErrAlreadyStored = errors.New("rules: an event with this pk is stored already; leave pk out for a dry run")

// DryRun evaluates ev against the rules (only the rule named onlyRule when
// it is not empty) exactly as the worker would, inside a transaction that
// is rolled back: it reports every binding's result and the effects
// (notifications, deliveries, created events, emails, model saves) that the
// worker would commit, and performs none of them. The effects of a policy
// that fails are left out, as the worker rolls them back (see
// [tracedEffects]).
func (e *Engine) DryRun(ctx context.Context, ev events.Event, onlyRule string) (*DryRunReport, error) {
	rs := e.rules.Current()
	if onlyRule != "" {
		filtered := *rs
		filtered.Rules = nil
		for _, r := range rs.Rules {
			if r.Name == onlyRule {
				filtered.Rules = append(filtered.Rules, r)
			}
		}
		if len(filtered.Rules) == 0 {
			return nil, fmt.Errorf("no enabled rule named %q", onlyRule)
		}
		rs = &filtered
	}
	tx, err := e.db.BeginTxx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("begin dry run: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a dry run never commits

	fresh, err := StoreEvents(ctx, tx, []events.Event{ev})
	if err != nil {
		return nil, err
	}
	if len(fresh) == 0 {
		return nil, ErrAlreadyStored
	}
	ptx := &policyTx{Tx: tx, stmts: e.stmts}
	users, err := e.loadUsers(ctx, ptx, fresh)
	if err != nil {
		return nil, err
	}
	if b, ok := e.eval.(Binder); ok {
		var release func()
		ctx, release = b.Bind(ctx)
		defer release()
	}
	report := &DryRunReport{Event: ev}
	report.Guard = e.guard(rs, &ev)
	out := &batchWriter{}
	if report.Guard == "" {
		r := &eventRun{e: e, tx: ptx, rs: rs, ev: fresh[0], out: out, users: users, trace: report}
		if pk, ok := ev.UserPK(); ok {
			r.user = users[pk]
		}
		for _, rule := range rs.Rules {
			passing, err := r.evalRule(ctx, rule)
			if err != nil {
				return nil, fmt.Errorf("rule %q: %w", rule.Name, err)
			}
			if !passing {
				continue
			}
			report.Fired = append(report.Fired, rule.Name)
			if _, err := r.fanOut(ctx, rule); err != nil {
				return nil, fmt.Errorf("rule %q: %w", rule.Name, err)
			}
		}
	}
	names := map[string]string{}
	for _, r := range rs.Rules {
		names[r.ID] = r.Name
		for _, t := range r.Transports {
			names[t.ID] = t.Name + " (" + t.Mode + ")"
		}
	}
	byID := map[string]int{}
	for _, n := range out.notifications {
		byID[n.id] = len(report.Notifications)
		report.Notifications = append(report.Notifications, NotifiedUser{Rule: names[n.ruleID], UserID: n.userID, Severity: n.severity, Body: n.body})
	}
	for _, d := range out.deliveries {
		if i, ok := byID[d.notificationID]; ok {
			report.Notifications[i].Transports = append(report.Notifications[i].Transports, names[d.transportID])
		}
	}
	return report, nil
}
