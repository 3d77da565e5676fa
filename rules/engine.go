package rules

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/heraldhq/herald/events"
)

// RuleSource gives the current rule set. [*RuleCache] implements it.
type RuleSource interface {
	Current() *RuleSet
}

// EngineConfig configures an [Engine]. The zero value of each field means
// its default.
type EngineConfig struct {
	// MaxEventDepth: an event created by Herald more than this many steps
	// away from an outside event is stored but matches no rule. Defaults to 3.
	MaxEventDepth int
	// AfterCommit is called with each committed batch, e.g. to wake the
	// outbox and the delivery dispatcher when it left them work. Optional.
	AfterCommit func(Committed)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Committed describes a committed batch of events.
type Committed struct {
	Events []events.Event
	// Deliveries is how many deliveries the batch queued for a transport
	// (local ones without a body mapping are done when they are written).
	Deliveries int
	// Outbox is how many created events and emails the batch queued.
	Outbox int
}

// Engine evaluates events against the rule set and writes the results. It
// implements [events.Handler]: each batch of events is processed in one
// transaction, and a batch that fails leaves nothing behind.
type Engine struct {
	db    *sqlx.DB
	stmts *stmtCache
	rules RuleSource
	eval  Evaluator
	cfg   EngineConfig
	log   *slog.Logger
	stats EngineStats
}

// EngineStats are running totals of committed batches, safe to read
// concurrently.
type EngineStats struct {
	EventsProcessed atomic.Int64 // events stored and evaluated
	EventsDuplicate atomic.Int64 // redelivered or re-published events skipped
	EventsGuarded   atomic.Int64 // events kept from matching by a loop guard
	RuleEvaluations atomic.Int64
	RulesFired      atomic.Int64
	PolicyErrors    atomic.Int64
	// BatchesRedone counts batches run again with a savepoint per policy
	// (see [Engine.HandleEvents]).
	BatchesRedone atomic.Int64
	Notifications atomic.Int64
	// PolicyNanos is the total time spent in expression policies.
	PolicyNanos       atomic.Int64
	PolicyEvaluations atomic.Int64
}

var _ events.Handler = (*Engine)(nil)

// NewEngine returns an Engine writing to db.
func NewEngine(db *sqlx.DB, rules RuleSource, eval Evaluator, cfg EngineConfig) *Engine {
	if cfg.MaxEventDepth <= 0 {
		cfg.MaxEventDepth = 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Engine{db: db, stmts: newStmtCache(db), rules: rules, eval: eval, cfg: cfg, log: BatchLogger(cfg.Logger)}
}

// batchStats are a batch's counts, added to the engine's totals when the
// batch commits (so that a batch that runs again counts once).
type batchStats struct {
	eventsProcessed, eventsDuplicate, eventsGuarded int64
	ruleEvaluations, rulesFired                     int64
	policyErrors, policyEvaluations, policyNanos    int64
	notifications                                   int64
}

func (s *EngineStats) add(b *batchStats) {
	s.EventsProcessed.Add(b.eventsProcessed)
	s.EventsDuplicate.Add(b.eventsDuplicate)
	s.EventsGuarded.Add(b.eventsGuarded)
	s.RuleEvaluations.Add(b.ruleEvaluations)
	s.RulesFired.Add(b.rulesFired)
	s.PolicyErrors.Add(b.policyErrors)
	s.PolicyEvaluations.Add(b.policyEvaluations)
	s.PolicyNanos.Add(b.policyNanos)
	s.Notifications.Add(b.notifications)
}

// Stats returns the engine's running totals.
func (e *Engine) Stats() *EngineStats { return &e.stats }

// HandleEvents implements [events.Handler]: it stores the events in one
// statement, evaluates the rules for the ones not seen before, writes the
// resulting notifications and deliveries in one statement, and commits once
// for the batch.
//
// A batch first runs optimistically, without a savepoint per policy: a
// policy that fails after it used the database, or any other failure, makes
// the batch run again from the start with a savepoint per policy, which
// undoes exactly the failed policy's writes (see [Scope]).
//
// What the batch logs through a [BatchLogger] (the engine's rule firings
// and policy failures, and policies' ak_logger lines) is written when the
// batch ends; the lines of an optimistic run that is run again are dropped,
// so that each is written once.
func (e *Engine) HandleEvents(ctx context.Context, evs []events.Event) error {
	logs := &batchLogs{}
	defer logs.write(ctx)
	err := e.handleBatch(withBatchLogs(ctx, logs), evs, true)
	if err == nil || ctx.Err() != nil {
		return err
	}
	logs.drop()
	e.stats.BatchesRedone.Add(1)
	e.log.DebugContext(ctx, "batch runs again with a savepoint per policy", slog.Int("events", len(evs)), slog.Any("reason", err))
	return e.handleBatch(withBatchLogs(ctx, logs), evs, false)
}

func (e *Engine) handleBatch(ctx context.Context, evs []events.Event, optimistic bool) error {
	rs := e.rules.Current()
	tx, err := e.db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin event transaction: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit

	fresh, err := StoreEvents(ctx, tx, evs)
	if err != nil {
		return err
	}
	ptx := &policyTx{Tx: tx, stmts: e.stmts, optimistic: optimistic}
	users, err := e.loadUsers(ctx, ptx, fresh)
	if err != nil {
		return err
	}
	if b, ok := e.eval.(Binder); ok {
		var release func()
		ctx, release = b.Bind(ctx)
		defer release()
	}
	out := &batchWriter{}
	for _, ev := range fresh {
		if err := e.processEvent(ctx, ptx, rs, ev, users, out); err != nil {
			return err
		}
	}
	if err := ptx.settle(ctx); err != nil {
		return err
	}
	if err := out.flush(ctx, tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit events: %w", err)
	}
	out.stats.eventsDuplicate = int64(len(evs) - len(fresh))
	e.stats.add(&out.stats)
	if e.cfg.AfterCommit != nil {
		e.cfg.AfterCommit(out.committed(evs))
	}
	return nil
}

// loadUsers reads the users rows of the events' users in one query. In an
// optimistic batch the rows also answer policies' reads of them without a
// lock (see [batchRow]).
func (e *Engine) loadUsers(ctx context.Context, tx *policyTx, evs []*events.Event) (map[int64]*User, error) {
	ids := make([]int64, 0, len(evs))
	for _, ev := range evs {
		if pk, ok := ev.UserPK(); ok {
			ids = append(ids, pk)
		}
	}
	users := make(map[int64]*User, len(ids))
	if len(ids) == 0 {
		return users, nil
	}
	model := Models["User"]
	// Scanned as Find scans model rows: sqlx's reflection showed in
	// profiles.
	rows, err := tx.Tx.QueryContext(ctx, "SELECT "+model.selectList()+" FROM users WHERE id = ANY($1::bigint[])", pq.Array(ids))
	if err != nil {
		return nil, fmt.Errorf("load event users: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		vals := make([]any, len(model.fields))
		dest := make([]any, len(vals))
		for i := range vals {
			dest[i] = &vals[i]
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("load event users: %w", err)
		}
		u, err := userFromRow(vals)
		if err != nil {
			return nil, fmt.Errorf("load event users: %w", err)
		}
		users[u.ID] = u
		tx.rememberRow(model, vals, false)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load event users: %w", err)
	}
	return users, nil
}

// eventRun is the processing of one event inside its transaction.
type eventRun struct {
	e   *Engine
	tx  *policyTx
	rs  *RuleSet
	ev  *events.Event
	out *batchWriter

	user       *User           // nil: anonymous or unknown
	users      map[int64]*User // the batch's users, by id (see [Engine.loadUsers])
	groups     map[string]bool
	groupsRead bool

	created       int // created-event counter, for derived pks
	createdEvents int

	// trace, when set, records a dry run; last is the result of the
	// policy binding evaluated last.
	trace *DryRunReport
	last  PolicyResult
}

// db returns the transaction for the engine's own statements, after any
// pending policy savepoint is released.
func (r *eventRun) db(ctx context.Context) (*sqlx.Tx, error) {
	if err := r.tx.settle(ctx); err != nil {
		return nil, err
	}
	return r.tx.Tx, nil
}

func (e *Engine) processEvent(ctx context.Context, tx *policyTx, rs *RuleSet, ev *events.Event, users map[int64]*User, out *batchWriter) error {
	out.stats.eventsProcessed++
	if reason := e.guard(rs, ev); reason != "" {
		out.stats.eventsGuarded++
		e.log.InfoContext(ctx, "event matches no rule: loop guard", slog.String("event", ev.PK),
			slog.String("action", ev.Action), slog.String("reason", reason))
		return nil
	}
	r := &eventRun{e: e, tx: tx, rs: rs, ev: ev, out: out, users: users}
	if pk, ok := ev.UserPK(); ok {
		r.user = users[pk]
		if tx.savedUsers[pk] {
			// An earlier event's policy saved this user.
			if err := r.reloadUser(ctx, pk); err != nil {
				return err
			}
		}
	}
	for _, rule := range rs.Rules {
		if !rule.CanMatch(ev.Action) {
			continue
		}
		out.stats.ruleEvaluations++
		passing, err := r.evalRule(ctx, rule)
		if err != nil {
			return fmt.Errorf("rule %q, event %s: %w", rule.Name, ev.PK, err)
		}
		if !passing {
			continue
		}
		out.stats.rulesFired++
		n, err := r.fanOut(ctx, rule)
		if err != nil {
			return fmt.Errorf("rule %q, event %s: %w", rule.Name, ev.PK, err)
		}
		e.log.InfoContext(ctx, "rule fired", slog.String("rule", rule.Name), slog.String("event", ev.PK),
			slog.String("action", ev.Action), slog.Int("notifications", n))
	}
	return nil
}

// guard returns why ev must match no rule, or "".
func (e *Engine) guard(rs *RuleSet, ev *events.Event) string {
	if d := EventDepth(ev); d > e.cfg.MaxEventDepth {
		return fmt.Sprintf("depth %d exceeds %d", d, e.cfg.MaxEventDepth)
	}
	// authentik's guard: events about a policy that is bound to a rule
	// (its policy_exception and policy_execution events) notify nobody.
	if id, ok := ev.Context["policy_uuid"].(string); ok && rs.PolicyBoundToRule(id) {
		return "policy_uuid of a policy bound to a rule"
	}
	return ""
}

// evalRule evaluates every enabled binding of rule in order (all of them,
// as authentik does, so that side effects of later policies happen) and
// reports whether any passed. A rule without bindings never fires.
func (r *eventRun) evalRule(ctx context.Context, rule *Rule) (bool, error) {
	passing := false
	for _, b := range rule.Bindings {
		r.last = PolicyResult{}
		ok, err := r.evalBinding(ctx, rule, b)
		if err != nil {
			return false, err
		}
		if r.trace != nil {
			r.trace.addBinding(rule, b, r.last, ok)
		}
		passing = passing || ok
	}
	return passing, nil
}

func (r *eventRun) evalBinding(ctx context.Context, rule *Rule, b *Binding) (bool, error) {
	switch {
	case b.GroupID != nil:
		groups, err := r.userGroups(ctx)
		if err != nil {
			return false, err
		}
		return groups[*b.GroupID] != b.Negate, nil
	case b.UserID != nil:
		return (r.user != nil && r.user.ID == *b.UserID) != b.Negate, nil
	case b.Policy == nil:
		return false, nil
	}

	p := b.Policy
	var res PolicyResult
	switch p.Kind {
	case KindEventMatcher:
		res = MatchEvent(p, r.ev)
	default:
		start := time.Now()
		scope := &Scope{tx: r.tx, Rules: r.rs, Rule: rule, Binding: b, run: r}
		res = r.e.eval.Evaluate(ctx, &PolicyRequest{
			Policy:  p,
			Event:   r.ev,
			User:    r.user,
			Timeout: b.Timeout(),
			Scope:   scope,
		})
		r.out.stats.policyNanos += int64(time.Since(start))
		r.out.stats.policyEvaluations++
		if err := ctx.Err(); err != nil {
			return false, fmt.Errorf("evaluate policy %q: %w", p.Name, context.Cause(ctx))
		}
		if res.Retry != nil {
			return false, fmt.Errorf("evaluate policy %q: %w", p.Name, res.Retry)
		}
		if err := scope.finish(ctx, res.Err != nil); err != nil {
			return false, err
		}
		if err := scope.writeCalledEvents(ctx); err != nil {
			return false, err
		}
		if scope.userSaved && r.user != nil {
			// The next policy's request.user must see this save.
			if err := r.reloadUser(ctx, r.user.ID); err != nil {
				return false, err
			}
		}
	}
	r.last = res
	if res.Err != nil {
		r.out.stats.policyErrors++
		r.e.log.WarnContext(ctx, "policy failed", slog.String("policy", p.Name), slog.String("rule", rule.Name),
			slog.String("event", r.ev.PK), slog.String("error", res.Err.Error()))
		if err := r.policyException(ctx, rule, b, res.Err); err != nil {
			return false, err
		}
		return b.FailureResult, nil // not negated, as in authentik
	}
	passing := res.Passing != b.Negate
	if p.ExecutionLogging {
		if err := r.policyExecution(ctx, rule, b, res, passing); err != nil {
			return false, err
		}
	}
	return passing, nil
}

// reloadUser reads the event's user id again, after a policy saved it, for
// this event and the batch's later events about the user.
func (r *eventRun) reloadUser(ctx context.Context, id int64) error {
	tx, err := r.db(ctx)
	if err != nil {
		return err
	}
	u, err := LoadUser(ctx, tx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		u = nil
	case err != nil:
		return err
	}
	r.user = u
	if r.users != nil {
		r.users[id] = u
	}
	delete(r.tx.savedUsers, id)
	return nil
}

func (r *eventRun) userGroups(ctx context.Context) (map[string]bool, error) {
	if r.groupsRead {
		return r.groups, nil
	}
	r.groupsRead = true
	if r.user == nil {
		return nil, nil
	}
	tx, err := r.db(ctx)
	if err != nil {
		return nil, err
	}
	g, err := UserGroupIDs(ctx, tx, r.user.ID)
	if err != nil {
		return nil, err
	}
	r.groups = g
	return g, nil
}

// MatchEvent evaluates an event matcher policy: every match_* column that
// is set must equal the event's action, client_ip, app, or
// "<context.model.app>.<context.model.model_name>"; none set passes. As in
// authentik, each check that is set adds its message ("Action matched.",
// ...) whether it passes or not.
func MatchEvent(p *Policy, ev *events.Event) PolicyResult {
	res := PolicyResult{Passing: true}
	check := func(want *string, have func() string, message string) {
		if want == nil {
			return
		}
		if *want != have() {
			res.Passing = false
		}
		res.Messages = append(res.Messages, message)
	}
	check(p.MatchAction, func() string { return ev.Action }, "Action matched.")
	check(p.MatchClientIP, func() string { return ev.ClientIP }, "Client IP matched.")
	check(p.MatchApp, func() string { return ev.App }, "App matched.")
	check(p.MatchModel, func() string {
		model, _ := ev.Context["model"].(map[string]any)
		app, _ := model["app"].(string)
		name, _ := model["model_name"].(string)
		return app + "." + name
	}, "Model matched.")
	return res
}

func hexID(id string) string { return strings.ReplaceAll(id, "-", "") }

func (r *eventRun) requestUser() map[string]any {
	return r.user.EventUser()
}

// policyRefs are the context keys authentik puts in events about a policy.
func (r *eventRun) policyRefs(rule *Rule, b *Binding) map[string]any {
	p := b.Policy
	return map[string]any{
		"policy_uuid": hexID(p.ID),
		"policy":      map[string]any{"app": "authentik_policies_" + p.Kind, "model_name": strings.ReplaceAll(p.Kind, "_", "") + "policy", "pk": hexID(p.ID), "name": p.Name},
		"binding": map[string]any{"app": "authentik_policies", "model_name": "policybinding", "pk": hexID(b.ID),
			"name": fmt.Sprintf("Binding from Notification Rule %s #%d to Policy %s", rule.Name, b.Order, p.Name)},
		"rule": rule.Name,
		"request": map[string]any{
			"user":    r.requestUser(),
			"context": map[string]any{"event": map[string]any{"app": "authentik_events", "model_name": "event", "pk": hexID(r.ev.PK), "name": "Event action=" + r.ev.Action}},
		},
	}
}

// policyException records a policy_exception event for a failed policy.
func (r *eventRun) policyException(ctx context.Context, rule *Rule, b *Binding, perr *PolicyError) error {
	c := r.policyRefs(rule, b)
	c["message"] = "Policy failed to execute"
	c["exception"] = perr.Error()
	c["error"] = map[string]any{"kind": perr.Kind, "message": perr.Message, "line": int64(perr.Line), "column": int64(perr.Column), "stack": perr.Stack}
	tx, err := r.db(ctx)
	if err != nil {
		return err
	}
	_, err = r.createEvent(ctx, tx, "policy_exception", "authentik.policies.process", r.requestUser(), c, rule, b.Policy)
	return err
}

// policyExecution records a policy_execution event (execution_logging).
func (r *eventRun) policyExecution(ctx context.Context, rule *Rule, b *Binding, res PolicyResult, passing bool) error {
	c := r.policyRefs(rule, b)
	c["message"] = "Policy Execution"
	messages := make([]any, len(res.Messages))
	for i, m := range res.Messages {
		messages[i] = m
	}
	c["result"] = map[string]any{"passing": passing, "messages": messages, "raw_result": jsonValue(res.Raw)}
	logs := make([]any, len(res.Logs))
	for i, l := range res.Logs {
		logs[i] = map[string]any{"level": l.Level, "message": l.Message, "fields": jsonValue(l.Fields)}
	}
	c["logs"] = logs
	tx, err := r.db(ctx)
	if err != nil {
		return err
	}
	_, err = r.createEvent(ctx, tx, "policy_execution", "authentik.policies.process", r.requestUser(), c, rule, b.Policy)
	return err
}

// jsonValue turns an exported JavaScript value into plain JSON data.
func jsonValue(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("<not serialisable: %v>", err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return string(b)
	}
	return out
}
