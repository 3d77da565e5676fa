package rules

import (
	"context"
	"crypto/sha1"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/events"
)

// Scope is what a policy evaluation may touch: the event's transaction, the
// rule set it runs under, and the effects it queues. Effects written through
// a Scope commit or roll back with the event.
type Scope struct {
	// Rules is the rule set the event is evaluated under.
	Rules *RuleSet
	// Rule and Binding are what is being evaluated (nil for a dry run).
	Rule    *Rule
	Binding *Binding

	tx        *policyTx
	run       *eventRun
	savepoint bool
	touched   bool // the policy used the database (optimistic batches)
	userSaved bool
	calls     int // nested ak_call_policy depth
	// calledEvents write the policy_exception and policy_execution events
	// of called policies after the policy ends.
	calledEvents []func(context.Context) error
	// ownAtSavepoint is the transaction's own writes (see [policyTx.own])
	// when the policy's savepoint was set: rolling back to it undoes them.
	ownAtSavepoint map[string]ownWrites
	// traced are the effects of the policy (and of the policies it
	// called) in a dry run, added to the report when it succeeds (see
	// [Scope.endTrace]).
	traced tracedEffects
}

// tracedEffects are the effects one policy evaluation made in a dry run.
// They share the fate of the policy's savepoint: the worker keeps them when
// the policy succeeds and rolls them back when it fails. A called policy
// (ak_call_policy) runs in its caller's scope and savepoint, so its effects
// go with the caller's, whether the called policy itself failed or not.
type tracedEffects struct {
	events []events.Event
	emails []Email
	saves  []string
}

// endTrace adds the policy's traced effects to the dry run's report when
// the policy succeeded, and drops them when it failed, as its savepoint
// drops its writes.
func (s *Scope) endTrace(failed bool) {
	t := s.traced
	s.traced = tracedEffects{}
	if failed || s.run == nil || s.run.trace == nil {
		return
	}
	r := s.run.trace
	r.CreatedEvents = append(r.CreatedEvents, t.events...)
	r.Emails = append(r.Emails, t.emails...)
	r.Saves = append(r.Saves, t.saves...)
}

// NewReadScope is a scope for expressions that only read, such as webhook
// mappings: their model queries and helpers run in tx (a webhook mapping's
// is read-only); rows are read without a lock, saves are refused, and
// events and emails cannot be created.
func NewReadScope(tx *sqlx.Tx) *Scope {
	return &Scope{tx: &policyTx{Tx: tx, readOnly: true}}
}

// errRedoWithSavepoints fails an optimistic batch in which a policy that
// used the database failed: its writes cannot be undone alone.
var errRedoWithSavepoints = errors.New("a policy that used the database failed")

// CancelsQueries reports whether the policy's queries must be cancelled
// at its deadline by the caller (in optimistic batches, where no
// server-side timeouts are set); a cancelled query fails the batch, which
// then runs again with savepoints and server-side timeouts.
func (s *Scope) CancelsQueries() bool {
	return s != nil && s.tx != nil && s.tx.optimistic
}

// savepointName marks where a policy's own writes begin, so that a policy
// that fails leaves no effects behind (and an SQL error it caused does not
// abort the event's transaction).
const savepointName = "herald_policy"

// Statements on the policy savepoint. Releasing a savepoint keeps the
// timeouts a policy set, so they are set back to the session's.
const (
	setSavepoint      = "SAVEPOINT " + savepointName
	releaseSavepoint  = "RELEASE SAVEPOINT " + savepointName
	rollbackSavepoint = "ROLLBACK TO SAVEPOINT " + savepointName + "; " + releaseSavepoint
	defaultTimeouts   = "SET LOCAL lock_timeout TO DEFAULT; SET LOCAL statement_timeout TO DEFAULT"
)

// policyTx is the transaction of a batch of events with the state of the
// policy savepoint. The savepoint of a policy that succeeded is released
// lazily, in the same round trip as the next policy's SAVEPOINT or before
// the engine's next statement: one round trip less per policy that uses
// the database.
//
// Policies' queries run through it (it is a [sqlx.QueryerContext]): a query
// text that runs a second time is prepared, once per connection (see
// [stmtCache]), so that PostgreSQL does not parse and plan it per event.
//
// In an optimistic batch, model saves are queued instead of sent: they go
// out, as one UPDATE per table and field list, before the first statement
// that could see them (any statement but a model query limited to other
// rows by its pk filter) and at the latest when the batch settles before
// writing its notifications. A queued save that fails fails the batch,
// which then runs again with savepoints, where saves are sent at once.
type policyTx struct {
	*sqlx.Tx
	// optimistic: no savepoints; a policy that used the database and
	// failed makes the batch run again without this flag.
	optimistic bool
	// releasePending: the savepoint of a policy that succeeded is open.
	releasePending bool
	// stmts are the engine's prepared statements; prepared those bound
	// to this transaction.
	stmts    *stmtCache
	prepared map[string]*sqlx.Stmt

	// saves are the queued saves, savedRows their rows; saveErr is the
	// first failure to write them, which fails the batch.
	saves     []*modelSave
	savedRows map[string]int // index in saves
	saveErr   error
	// rows are the rows the batch read, by [rowKey] (optimistic batches
	// only).
	rows map[string]*batchRow
	// lastSave is the updated value of the batch's latest save: saves in
	// one batch set distinct, increasing values.
	lastSave time.Time
	// savedUsers are the users rows saved in the batch since the engine
	// last read them: their users loaded for the batch are out of date.
	savedUsers map[int64]bool
	// readOnly: expressions that only read (see [NewReadScope]): rows are
	// read without a lock and saves are refused.
	readOnly bool
	// own are, by [rowKey], the updated values the transaction's own saves
	// replaced and wrote. An object read before such a save (a second copy
	// of the row) may save over it, as in Django: nobody else changed the
	// row meanwhile, as the first save checked it and holds its lock.
	own map[string]ownWrites
}

// execSaves writes saves of one shape (see [modelSave.shape]) and records
// them as the transaction's own writes.
func (t *policyTx) execSaves(ctx context.Context, saves []*modelSave) error {
	for _, s := range saves {
		s.own = t.own[s.row()]
	}
	if err := execSaves(ctx, t.Tx, saves); err != nil {
		return err
	}
	if t.own == nil {
		t.own = make(map[string]ownWrites)
	}
	for _, s := range saves {
		o := t.own[s.row()]
		if readAt, ok := s.readAt.(time.Time); ok {
			o.from = append(o.from, readAt)
		}
		o.from = append(o.from, s.absorbed...)
		if !o.to.IsZero() {
			o.from = append(o.from, o.to)
		}
		o.to = s.updated
		t.own[s.row()] = o
	}
	return nil
}

// maxPrepared bounds the statements a batch binds to its transaction.
const maxPrepared = 64

var _ sqlx.QueryerContext = (*policyTx)(nil)

// stmt returns query's statement of the engine's cache bound to this
// transaction, or nil to run it unprepared.
func (t *policyTx) stmt(ctx context.Context, query string) *sqlx.Stmt {
	if st, ok := t.prepared[query]; ok {
		return st
	}
	if t.stmts == nil || len(t.prepared) >= maxPrepared {
		return nil
	}
	shared := t.stmts.get(ctx, query)
	if shared == nil {
		return nil
	}
	if t.prepared == nil {
		t.prepared = make(map[string]*sqlx.Stmt)
	}
	// Prepared on this transaction's connection the first time only;
	// closing it with the transaction leaves it prepared there.
	st := t.Tx.StmtxContext(ctx, shared)
	t.prepared[query] = st
	return st
}

// stmtCache holds the prepared statements of the policy queries that run
// more than once. database/sql prepares each on a connection the first time
// a transaction there uses it and keeps it for the connection's later
// transactions, so a policy query costs no prepare or close round trips
// per batch, and PostgreSQL can settle on a generic plan for it.
type stmtCache struct {
	db    *sqlx.DB
	mu    sync.Mutex
	runs  map[string]int
	stmts map[string]*sqlx.Stmt
}

// Bounds of a stmtCache: the statements it keeps and the query texts it
// counts runs of.
const (
	maxCachedStmts = 256
	maxCountedRuns = 4096
)

func newStmtCache(db *sqlx.DB) *stmtCache {
	return &stmtCache{db: db, runs: make(map[string]int), stmts: make(map[string]*sqlx.Stmt)}
}

// prepareWait bounds the wait for a connection to prepare a statement on:
// a batch holding its own connection must not wait for the pool to free
// one.
const prepareWait = 200 * time.Millisecond

// get returns query prepared when it runs for the second time or more, or
// nil to run it unprepared (also while another batch prepares it, and when
// preparing fails: the unprepared run then reports any error).
func (c *stmtCache) get(ctx context.Context, query string) *sqlx.Stmt {
	c.mu.Lock()
	if st, ok := c.stmts[query]; ok {
		c.mu.Unlock()
		return st
	}
	if len(c.runs) >= maxCountedRuns {
		clear(c.runs)
	}
	c.runs[query]++
	stats := c.db.Stats()
	spare := stats.MaxOpenConnections == 0 || stats.InUse < stats.MaxOpenConnections
	if c.runs[query] < 2 || len(c.stmts) >= maxCachedStmts || !spare {
		c.mu.Unlock()
		return nil
	}
	c.stmts[query] = nil // being prepared
	c.mu.Unlock()

	pctx, cancel := context.WithTimeout(ctx, prepareWait)
	defer cancel()
	st, err := c.db.PreparexContext(pctx, query)
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.runs, query)
	if err != nil {
		delete(c.stmts, query)
		return nil
	}
	c.stmts[query] = st
	return st
}

// QueryContext implements [sqlx.QueryerContext], after the queued saves.
func (t *policyTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if err := t.flushSaves(ctx); err != nil {
		return nil, err
	}
	return readerTx{t}.QueryContext(ctx, query, args...)
}

// QueryxContext implements [sqlx.QueryerContext], after the queued saves.
func (t *policyTx) QueryxContext(ctx context.Context, query string, args ...any) (*sqlx.Rows, error) {
	if err := t.flushSaves(ctx); err != nil {
		return nil, err
	}
	return readerTx{t}.QueryxContext(ctx, query, args...)
}

// QueryRowxContext implements [sqlx.QueryerContext], after the queued
// saves (a failure to write them fails the batch at [policyTx.settle]).
func (t *policyTx) QueryRowxContext(ctx context.Context, query string, args ...any) *sqlx.Row {
	_ = t.flushSaves(ctx)
	return readerTx{t}.QueryRowxContext(ctx, query, args...)
}

// readerTx runs a policyTx's queries without sending its queued saves
// first: for model queries that cannot see them (see [reader]).
type readerTx struct{ t *policyTx }

func (r readerTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := r.t.stmt(ctx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return r.t.Tx.QueryContext(ctx, query, args...)
}

func (r readerTx) QueryxContext(ctx context.Context, query string, args ...any) (*sqlx.Rows, error) {
	if st := r.t.stmt(ctx, query); st != nil {
		return st.QueryxContext(ctx, args...)
	}
	return r.t.Tx.QueryxContext(ctx, query, args...)
}

func (r readerTx) QueryRowxContext(ctx context.Context, query string, args ...any) *sqlx.Row {
	if st := r.t.stmt(ctx, query); st != nil {
		return st.QueryRowxContext(ctx, args...)
	}
	return r.t.Tx.QueryRowxContext(ctx, query, args...)
}

// reader returns what runs the model query q: t itself, or, when q's pk
// filter keeps it off every row with a queued save, t without sending the
// saves first.
func reader(db sqlx.QueryerContext, q Query) sqlx.QueryerContext {
	t, ok := db.(*policyTx)
	if !ok || len(t.saves) == 0 {
		return db
	}
	rows, ok := q.pkRows()
	if !ok {
		return t
	}
	for _, row := range rows {
		if _, saved := t.savedRows[row]; saved {
			return t
		}
	}
	return readerTx{t}
}

// saveTime returns the updated value of a save in this batch.
func (t *policyTx) saveTime() time.Time {
	now := time.Now().UTC().Truncate(time.Microsecond)
	if !now.After(t.lastSave) {
		now = t.lastSave.Add(time.Microsecond)
	}
	t.lastSave = now
	return now
}

// queueSave queues s until a statement could see it, and applies it to the
// row if the batch holds it (see [batchRow]). A second save of a
// row made on the row as the first leaves it joins the first; another sends
// the first.
func (t *policyTx) queueSave(ctx context.Context, s *modelSave) error {
	if i, queued := t.savedRows[s.row()]; queued {
		if t.saves[i].absorb(s) {
			t.applyToRows(s)
			return nil
		}
		if err := t.flushSaves(ctx); err != nil {
			return err
		}
	}
	if t.savedRows == nil {
		t.savedRows = make(map[string]int)
	}
	t.savedRows[s.row()] = len(t.saves)
	t.saves = append(t.saves, s)
	t.applyToRows(s)
	return nil
}

// flushSaves sends the queued saves, one statement per table and field
// list. Its first failure stays: the batch cannot commit after it.
func (t *policyTx) flushSaves(ctx context.Context) error {
	if t.saveErr != nil || len(t.saves) == 0 {
		return t.saveErr
	}
	shapes := make(map[string][]*modelSave)
	var order []string
	for _, s := range t.saves {
		k := s.shape()
		if _, ok := shapes[k]; !ok {
			order = append(order, k)
		}
		shapes[k] = append(shapes[k], s)
	}
	t.saves = t.saves[:0]
	clear(t.savedRows)
	for _, k := range order {
		// Unprepared: these statements vary with the number of rows.
		if err := t.execSaves(ctx, shapes[k]); err != nil {
			t.saveErr = fmt.Errorf("queued saves: %w", err)
			return t.saveErr
		}
	}
	return nil
}

// settle sends the queued saves, releases a pending savepoint and restores
// the session's timeouts. A transaction found aborted there means a
// statement failed that the policy's evaluator did not report: the batch
// fails, as its effects can no longer be told apart.
func (t *policyTx) settle(ctx context.Context) error {
	if err := t.flushSaves(ctx); err != nil {
		return err
	}
	if !t.releasePending {
		return nil
	}
	t.releasePending = false
	if _, err := t.ExecContext(context.WithoutCancel(ctx), releaseSavepoint+"; "+defaultTimeouts); err != nil {
		return fmt.Errorf("release policy savepoint: %w", err)
	}
	return nil
}

// DB returns the event's transaction for a policy's queries. The first
// call sets a savepoint that [Scope.finish] releases, or rolls back to when
// the policy failed.
func (s *Scope) DB(ctx context.Context) (sqlx.QueryerContext, error) {
	if _, err := s.enter(ctx); err != nil {
		return nil, err
	}
	return s.tx, nil
}

// begin returns the transaction for a statement of the scope's own, after
// [Scope.enter] and the queued saves.
func (s *Scope) begin(ctx context.Context) (*sqlx.Tx, error) {
	tx, err := s.enter(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.tx.flushSaves(ctx); err != nil {
		return nil, err
	}
	return tx, nil
}

// enter sets the policy's savepoint on first use and returns the
// transaction.
func (s *Scope) enter(ctx context.Context) (*sqlx.Tx, error) {
	if s == nil || s.tx == nil {
		return nil, fmt.Errorf("no database in a dry run without one")
	}
	if s.tx.optimistic {
		s.touched = true
		return s.tx.Tx, nil
	}
	if !s.savepoint {
		stmt := setSavepoint
		if s.tx.releasePending {
			stmt = releaseSavepoint + "; " + defaultTimeouts + "; " + stmt
		}
		// The policy's remaining time bounds its lock waits and queries.
		if dl, ok := ctx.Deadline(); ok {
			ms := max(time.Until(dl).Milliseconds(), 1)
			stmt += fmt.Sprintf("; SET LOCAL lock_timeout = %d; SET LOCAL statement_timeout = %d", ms, ms)
		}
		if _, err := s.tx.ExecContext(context.WithoutCancel(ctx), stmt); err != nil {
			return nil, fmt.Errorf("set savepoint: %w", err)
		}
		s.tx.releasePending = false
		s.savepoint = true
		s.ownAtSavepoint = maps.Clone(s.tx.own)
	}
	return s.tx.Tx, nil
}

// finish ends the policy's savepoint: its writes are kept when it succeeded
// (the savepoint is released later, see [policyTx]) and undone when it
// failed. A dry run's trace keeps or drops the policy's effects alike.
func (s *Scope) finish(ctx context.Context, failed bool) error {
	s.endTrace(failed)
	if s.touched && failed {
		return errRedoWithSavepoints
	}
	if !s.savepoint {
		return nil
	}
	s.savepoint = false
	if !failed {
		s.tx.releasePending = true
		return nil
	}
	if _, err := s.tx.ExecContext(ctx, rollbackSavepoint+"; "+defaultTimeouts); err != nil {
		return fmt.Errorf("roll back failed policy: %w", err)
	}
	// The policy's saves are undone: a copy read before them is no longer
	// a copy of the transaction's own change.
	s.tx.own = s.ownAtSavepoint
	return nil
}

// Saved tells the scope that a policy saved an object of model with pk, so
// that later policies see the change in request.user: those of this event,
// and those of later events of the batch about the same user.
func (s *Scope) Saved(model string, pk any, fields []string) {
	if s == nil || s.run == nil {
		return
	}
	if s.run.trace != nil {
		s.traced.saves = append(s.traced.saves, fmt.Sprintf("%s %v: %s", model, pk, strings.Join(fields, ", ")))
	}
	if model != "User" {
		return
	}
	id, ok := events.Int64(pk)
	if !ok {
		return
	}
	if s.tx.savedUsers == nil {
		s.tx.savedUsers = make(map[int64]bool)
	}
	s.tx.savedUsers[id] = true
	if s.run.user != nil && id == s.run.user.ID {
		s.userSaved = true
	}
}

// EnterCall counts a nested ak_call_policy and reports false when the
// nesting is deeper than limit.
func (s *Scope) EnterCall(limit int) bool {
	if s.calls >= limit {
		return false
	}
	s.calls++
	return true
}

// LeaveCall ends a nested call counted by EnterCall.
func (s *Scope) LeaveCall() { s.calls-- }

// Email is an email queued by ak_send_email. Exactly one of Body and
// Template is set.
type Email struct {
	To       []string       `json:"to"`
	Cc       []string       `json:"cc,omitempty"`
	Bcc      []string       `json:"bcc,omitempty"`
	Subject  string         `json:"subject"`
	Body     string         `json:"body,omitempty"`
	Template string         `json:"template,omitempty"`
	Context  map[string]any `json:"context,omitempty"`
	// Key identifies the email; its Message-ID derives from it.
	Key string `json:"key"`
	// Cause is the event whose policy queued the email: the email_sent
	// event is caused by it.
	Cause *EventCause `json:"cause,omitempty"`
}

// QueueEmail stores e in the outbox, to be sent after the event commits.
// Its key derives from the event, rule, policy and a counter, so a re-run
// of the event queues nothing twice.
func (s *Scope) QueueEmail(ctx context.Context, e Email, policy *Policy) error {
	if s == nil || s.run == nil {
		return fmt.Errorf("send email: not performed in a dry run or a mapping")
	}
	tx, err := s.begin(ctx)
	if err != nil {
		return err
	}
	r := s.run
	r.created++
	ruleID, policyID := "", ""
	if s.Rule != nil {
		ruleID = s.Rule.ID
	}
	if policy != nil {
		policyID = policy.ID
	}
	e.Key = "email:" + derivedUUID(r.ev.PK, ruleID, policyID, "email", fmt.Sprint(r.created))
	e.Cause = causeOf(r.ev)
	e.Context = events.Sanitize(e.Context).(map[string]any)
	payload, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode email: %w", err)
	}
	if _, err := tx.ExecContext(ctx, insertOutbox, e.Key, OutboxEmail, string(payload)); err != nil {
		return fmt.Errorf("queue email: %w", err)
	}
	r.out.outbox++
	if r.trace != nil {
		s.traced.emails = append(s.traced.emails, e)
	}
	return nil
}

// PolicyException records a policy_exception event for a policy that failed
// while called from another (ak_call_policy). Like [Scope.PolicyExecution],
// it is written when the calling policy ends, outside its savepoint, so that
// it is kept whether the caller succeeds or fails, as authentik saves it at
// once.
func (s *Scope) PolicyException(p *Policy, perr *PolicyError) {
	if s == nil || s.run == nil || s.Rule == nil {
		return
	}
	b := &Binding{ID: "00000000-0000-0000-0000-000000000000", Policy: p}
	s.calledEvents = append(s.calledEvents, func(ctx context.Context) error {
		return s.run.policyException(ctx, s.Rule, b, perr)
	})
}

// PolicyExecution records a policy_execution event for a policy with
// execution_logging called from another (ak_call_policy), as authentik's
// PolicyProcess does for the binding it makes for the call.
func (s *Scope) PolicyExecution(p *Policy, res PolicyResult) {
	if s == nil || s.run == nil || s.Rule == nil {
		return
	}
	b := &Binding{ID: "00000000-0000-0000-0000-000000000000", Policy: p}
	s.calledEvents = append(s.calledEvents, func(ctx context.Context) error {
		return s.run.policyExecution(ctx, s.Rule, b, res, res.Passing)
	})
}

// writeCalledEvents writes the events of the policies the evaluated policy
// called, once it has ended (see [Scope.PolicyException]).
func (s *Scope) writeCalledEvents(ctx context.Context) error {
	for _, write := range s.calledEvents {
		if err := write(ctx); err != nil {
			return err
		}
	}
	s.calledEvents = nil
	return nil
}

// EmailTemplateExists reports whether name is the built-in
// event_notification template or a row of email_templates.
func (s *Scope) EmailTemplateExists(ctx context.Context, name string) (bool, error) {
	if name == BuiltinEmailTemplate {
		return true, nil
	}
	tx, err := s.begin(ctx)
	if err != nil {
		return false, err
	}
	var ok bool
	if err := tx.GetContext(ctx, &ok, `SELECT EXISTS (SELECT 1 FROM email_templates WHERE name = $1)`, name); err != nil {
		return false, fmt.Errorf("look up email template %q: %w", name, err)
	}
	return ok, nil
}

// BuiltinEmailTemplate is the name of the template that exists without a row.
const BuiltinEmailTemplate = "event_notification"

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
	return max(int(d), 0)
}

// CreateEvent stores a new event caused by the scope's event and queues it
// in the outbox for publishing after commit. The event's pk is derived from
// the causing event, the rule, the policy and a per-event counter, so a
// re-run of the same event creates the same pk.
func (s *Scope) CreateEvent(ctx context.Context, action, app string, user map[string]any, evContext map[string]any, policy *Policy) (events.Event, error) {
	if s == nil || s.run == nil {
		return events.Event{}, fmt.Errorf("create event %q: not performed in a dry run or a mapping", action)
	}
	tx, err := s.begin(ctx)
	if err != nil {
		return events.Event{}, err
	}
	ev, err := s.run.newEvent(ctx, tx, action, app, user, evContext, s.Rule, policy)
	if err == nil && s.run.trace != nil {
		s.traced.events = append(s.traced.events, ev)
	}
	return ev, err
}

// derivedUUID returns a name-based UUID (version 5 layout) from parts.
func derivedUUID(parts ...string) string {
	h := sha1.Sum([]byte(strings.Join(parts, "\x00")))
	h[6] = (h[6] & 0x0f) | 0x50
	h[8] = (h[8] & 0x3f) | 0x80
	x := hex.EncodeToString(h[:16])
	return x[:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
}

// createEvent stores an event of the engine's own (a policy_exception or
// policy_execution event, written outside any policy's savepoint) and
// traces it in a dry run.
func (r *eventRun) createEvent(ctx context.Context, tx *sqlx.Tx, action, app string, user, evContext map[string]any, rule *Rule, policy *Policy) (events.Event, error) {
	ev, err := r.newEvent(ctx, tx, action, app, user, evContext, rule, policy)
	if err == nil && r.trace != nil {
		r.trace.CreatedEvents = append(r.trace.CreatedEvents, ev)
	}
	return ev, err
}

// newEvent stores an event caused by the run's event and queues its
// publication.
func (r *eventRun) newEvent(ctx context.Context, tx *sqlx.Tx, action, app string, user, evContext map[string]any, rule *Rule, policy *Policy) (events.Event, error) {
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
	r.out.outbox++
	r.createdEvents++
	return ev, nil
}
