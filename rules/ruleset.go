package rules

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
)

// RuleSet is an immutable snapshot of the rule configuration: the enabled
// rules, every policy by name, and which policies are bound to a rule.
type RuleSet struct {
	// Rules are the enabled rules, by name.
	Rules []*Rule
	// Policies holds every policy by name (for ak_call_policy).
	Policies map[string]*Policy
	// bound holds the ids (dashless hex) of policies bound to any rule.
	bound map[string]bool
	// Loaded is when the snapshot was read.
	Loaded time.Time
}

// PolicyBoundToRule reports whether the policy with id (dashed or dashless)
// is bound to any notification rule, enabled or not.
func (rs *RuleSet) PolicyBoundToRule(id string) bool {
	return rs.bound[strings.ReplaceAll(strings.ToLower(id), "-", "")]
}

const (
	selectRules = `SELECT id, name, severity, destination_group_id, destination_event_user
FROM notification_rules WHERE enabled ORDER BY name`
	selectRuleBindings = `SELECT id, target_rule_id, policy_id, group_id, user_id, "order",
       negate, timeout_seconds, failure_result
FROM policy_bindings
WHERE target_rule_id IS NOT NULL AND enabled
ORDER BY "order", created, id`
	selectPolicies = `SELECT id, name, kind, expression, match_action, match_app, match_model,
       match_client_ip, execution_logging
FROM policies`
	selectBoundPolicies = `SELECT DISTINCT policy_id FROM policy_bindings
WHERE target_rule_id IS NOT NULL AND policy_id IS NOT NULL`
	selectRuleTransports = `SELECT rt.rule_id AS rule_id, t.id, t.name, t.mode, t.send_once, t.webhook_url,
       t.webhook_mapping_body_id, t.webhook_mapping_headers_id, t.email_subject_prefix, t.email_template
FROM notification_rule_transports rt JOIN notification_transports t ON t.id = rt.transport_id
ORDER BY rt.created, t.name`
)

// LoadRuleSet reads the current rule configuration in one snapshot.
func LoadRuleSet(ctx context.Context, db *sqlx.DB) (*RuleSet, error) {
	tx, err := db.BeginTxx(ctx, &sqlTxReadOnlySnapshot)
	if err != nil {
		return nil, fmt.Errorf("begin rule set read: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only

	var rules []*Rule
	if err := tx.SelectContext(ctx, &rules, selectRules); err != nil {
		return nil, fmt.Errorf("select rules: %w", err)
	}
	var policies []*Policy
	if err := tx.SelectContext(ctx, &policies, selectPolicies); err != nil {
		return nil, fmt.Errorf("select policies: %w", err)
	}
	var bindings []*Binding
	if err := tx.SelectContext(ctx, &bindings, selectRuleBindings); err != nil {
		return nil, fmt.Errorf("select bindings: %w", err)
	}
	var boundIDs []string
	if err := tx.SelectContext(ctx, &boundIDs, selectBoundPolicies); err != nil {
		return nil, fmt.Errorf("select bound policies: %w", err)
	}
	var transports []struct {
		RuleID string `db:"rule_id"`
		Transport
	}
	if err := tx.SelectContext(ctx, &transports, selectRuleTransports); err != nil {
		return nil, fmt.Errorf("select transports: %w", err)
	}

	rs := &RuleSet{
		Rules:    rules,
		Policies: make(map[string]*Policy, len(policies)),
		bound:    make(map[string]bool, len(boundIDs)),
		Loaded:   time.Now(),
	}
	byID := make(map[string]*Policy, len(policies))
	for _, p := range policies {
		rs.Policies[p.Name] = p
		byID[p.ID] = p
	}
	for _, id := range boundIDs {
		rs.bound[strings.ReplaceAll(id, "-", "")] = true
	}
	ruleByID := make(map[string]*Rule, len(rules))
	for _, r := range rules {
		ruleByID[r.ID] = r
	}
	for _, b := range bindings {
		r := ruleByID[b.RuleID]
		if r == nil {
			continue // a disabled rule
		}
		if b.PolicyID != nil {
			b.Policy = byID[*b.PolicyID]
		}
		r.Bindings = append(r.Bindings, b)
	}
	for _, r := range rules {
		slices.SortStableFunc(r.Bindings, func(a, b *Binding) int { return cmp.Compare(a.Order, b.Order) })
		r.index()
	}
	for i := range transports {
		if r := ruleByID[transports[i].RuleID]; r != nil {
			t := transports[i].Transport
			r.Transports = append(r.Transports, &t)
		}
	}
	return rs, nil
}

// Guard sets the guard actions of rs's expression policies with guard and
// indexes the rules again. It must be called before rs is shared.
func (rs *RuleSet) Guard(guard ActionGuard) {
	for _, p := range rs.Policies {
		if p.Kind == KindExpression {
			p.guardActions = guard(p)
		}
	}
	for _, r := range rs.Rules {
		r.index()
	}
}

// StaticRules is a [RuleSource] that always gives the same rule set.
type StaticRules struct{ Set *RuleSet }

// Current implements [RuleSource].
func (s StaticRules) Current() *RuleSet { return s.Set }

// OnlyPolicy returns a copy of rs whose only rule evaluates the policy
// named name (bound or not), with a 30 second timeout and no transports:
// for dry runs of a single policy.
func (rs *RuleSet) OnlyPolicy(name string) (*RuleSet, error) {
	p := rs.Policies[name]
	if p == nil {
		return nil, fmt.Errorf("no policy named %q", name)
	}
	out := *rs
	rule := &Rule{ID: "00000000-0000-0000-0000-000000000000", Name: "policy " + name, Severity: "notice",
		Bindings: []*Binding{{ID: "00000000-0000-0000-0000-000000000000", PolicyID: &p.ID, TimeoutSeconds: 30, Policy: p}}}
	rule.index()
	out.Rules = []*Rule{rule}
	return &out, nil
}

// ReportBrokenPolicies compiles every expression policy of rs with check
// and records a configuration_error event (published like any other) for
// each one that does not compile. The event's pk derives from the policy's
// name and expression, so a broken version is reported once, however often
// the rules are reloaded and however many workers run.
func ReportBrokenPolicies(ctx context.Context, db *sqlx.DB, rs *RuleSet, check func(*Policy) error) (broken []error) {
	for _, p := range rs.Policies {
		if p.Kind != KindExpression {
			continue
		}
		err := check(p)
		if err == nil {
			continue
		}
		broken = append(broken, err)
		c := map[string]any{
			// No policy_uuid: authentik's loop guard would keep the event
			// from notifying anyone when the policy is bound to a rule.
			"message": fmt.Sprintf("Policy %s does not compile: %v", p.Name, err),
			"policy":  map[string]any{"app": "authentik_policies_expression", "model_name": "expressionpolicy", "pk": hexID(p.ID), "name": p.Name},
		}
		var perr *PolicyError
		if errors.As(err, &perr) {
			c["error"] = map[string]any{"kind": perr.Kind, "message": perr.Message, "line": int64(perr.Line), "column": int64(perr.Column)}
		}
		if cerr := CreateEventAfter(ctx, db, nil, "configuration_error", "herald.rules", nil, c, p.Name+"\x00"+p.Expression); cerr != nil {
			broken = append(broken, fmt.Errorf("record configuration_error for policy %q: %w", p.Name, cerr))
		}
	}
	return broken
}
