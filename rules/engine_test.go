package rules_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
)

// ---------------------------------------------------------------------------
// Test bundle and helpers.

// testBundle is an engine on a fresh, migrated schema of its own with the
// real JavaScript runtime.
type testBundle struct {
	db     *testinfra.DB
	cache  *rules.RuleCache
	engine *rules.Engine
	evals  *recordingEvaluator
}

// recordingEvaluator is the real evaluator that also records the name of
// every policy the engine asks it to run, in order.
type recordingEvaluator struct {
	rules.Evaluator
	mu    sync.Mutex
	names []string
}

func (r *recordingEvaluator) Evaluate(ctx context.Context, req *rules.PolicyRequest) rules.PolicyResult {
	r.mu.Lock()
	r.names = append(r.names, req.Policy.Name)
	r.mu.Unlock()
	return r.Evaluator.Evaluate(ctx, req)
}

func (r *recordingEvaluator) evaluated() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.names...)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	return setupOn(t, testinfra.Postgres(t))
}

// setupOn builds the bundle on db.
func setupOn(t *testing.T, db *testinfra.DB) *testBundle {
	t.Helper()
	return setupLogged(t, db, testLogger(t))
}

// setupLogged builds the bundle on db, logging to logger.
func setupLogged(t *testing.T, db *testinfra.DB, logger *slog.Logger) *testBundle {
	t.Helper()
	// Many tests run at once, each on its own schema: keep the connections
	// few. The engine needs one for its transaction, the cache one to reload.
	db.SetMaxOpenConns(4)
	pool := jsrt.New(jsrt.Config{Logger: logger})
	cache, err := rules.NewRuleCache(t.Context(), db.DB, rules.RuleCacheConfig{DSN: db.URL, ActionGuard: pool.ActionGuard, Logger: logger})
	require.NoError(t, err)
	evals := &recordingEvaluator{Evaluator: pool}
	engine := rules.NewEngine(db.DB, cache, evals, rules.EngineConfig{Logger: logger})
	return &testBundle{db: db, cache: cache, engine: engine, evals: evals}
}

func (b *testBundle) insert(t *testing.T, query string, args ...any) string {
	t.Helper()
	var id string
	require.NoError(t, b.db.GetContext(t.Context(), &id, query, args...), "insert: %s", query)
	return id
}

func (b *testBundle) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, b.db.GetContext(t.Context(), &n, query, args...), "count: %s", query)
	return n
}

// user inserts a user and returns its id.
func (b *testBundle) user(t *testing.T, username string) int64 {
	t.Helper()
	var id int64
	require.NoError(t, b.db.GetContext(t.Context(), &id,
		`INSERT INTO users (username, email) VALUES ($1, $1 || '@example.com') RETURNING id`, username))
	return id
}

// group inserts a group below parent ("" for none) and adds members.
func (b *testBundle) group(t *testing.T, name, parent string, members ...int64) string {
	t.Helper()
	id := b.insert(t, `INSERT INTO groups (name, parent_id) VALUES ($1, NULLIF($2, '')::uuid) RETURNING id`, name, parent)
	for _, m := range members {
		b.db.MustExec(t, `INSERT INTO group_members (group_id, user_id) VALUES ($1, $2)`, id, m)
	}
	return id
}

// policy inserts an expression policy.
func (b *testBundle) policy(t *testing.T, name, expression string) string {
	t.Helper()
	return b.insert(t, `INSERT INTO policies (name, kind, expression) VALUES ($1, 'expression', $2) RETURNING id`, name, expression)
}

// loggedPolicy inserts an expression policy with execution_logging.
func (b *testBundle) loggedPolicy(t *testing.T, name, expression string) string {
	t.Helper()
	return b.insert(t, `INSERT INTO policies (name, kind, expression, execution_logging) VALUES ($1, 'expression', $2, true) RETURNING id`, name, expression)
}

// matcher is an event matcher policy; empty fields are not set (NULL).
type matcher struct {
	Action, App, Model, ClientIP string
}

func (b *testBundle) matcher(t *testing.T, name string, m matcher) string {
	t.Helper()
	return b.insert(t, `INSERT INTO policies (name, kind, match_action, match_app, match_model, match_client_ip)
VALUES ($1, 'event_matcher', NULLIF($2, ''), NULLIF($3, ''), NULLIF($4, ''), NULLIF($5, '')) RETURNING id`,
		name, m.Action, m.App, m.Model, m.ClientIP)
}

// rule describes a notification rule.
type rule struct {
	Name      string
	Severity  string // default notice
	EventUser bool   // destination_event_user
	Group     string // destination_group_id
	Disabled  bool
	// Transports are attached in this order.
	Transports []string
}

func (b *testBundle) rule(t *testing.T, r rule) string {
	t.Helper()
	if r.Severity == "" {
		r.Severity = "notice"
	}
	id := b.insert(t, `INSERT INTO notification_rules (name, severity, destination_event_user, destination_group_id, enabled)
VALUES ($1, $2, $3, NULLIF($4, '')::uuid, $5) RETURNING id`, r.Name, r.Severity, r.EventUser, r.Group, !r.Disabled)
	for _, tr := range r.Transports {
		b.db.MustExec(t, `INSERT INTO notification_rule_transports (rule_id, transport_id) VALUES ($1, $2)`, id, tr)
	}
	return id
}

// binding describes a policy binding; exactly one of Policy, Group, User.
type binding struct {
	Policy, Group string
	User          int64
	Order         int
	Disabled      bool
	Negate        bool
	FailureResult bool
	Timeout       int // seconds; default 30
}

func (b *testBundle) bind(t *testing.T, ruleID string, bd binding) string {
	t.Helper()
	if bd.Timeout == 0 {
		bd.Timeout = 30
	}
	return b.insert(t, `INSERT INTO policy_bindings (target_rule_id, policy_id, group_id, user_id, "order", enabled, negate, failure_result, timeout_seconds)
VALUES ($1, NULLIF($2, '')::uuid, NULLIF($3, '')::uuid, NULLIF($4, 0), $5, $6, $7, $8, $9) RETURNING id`,
		ruleID, bd.Policy, bd.Group, bd.User, bd.Order, !bd.Disabled, bd.Negate, bd.FailureResult, bd.Timeout)
}

func (b *testBundle) transport(t *testing.T, name, mode string, sendOnce bool) string {
	t.Helper()
	return b.insert(t, `INSERT INTO notification_transports (name, mode, send_once, webhook_url)
VALUES ($1, $2, $3, CASE WHEN $2 LIKE 'webhook%' THEN 'http://127.0.0.1:1/hook' ELSE '' END) RETURNING id`, name, mode, sendOnce)
}

// alertRule is a rule that notifies the event's user through a local
// transport whenever its bindings pass: the usual probe of these tests.
func (b *testBundle) alertRule(t *testing.T, name string, bindings ...binding) string {
	t.Helper()
	inbox := b.transport(t, "inbox-"+name, "local", false)
	id := b.rule(t, rule{Name: name, EventUser: true, Transports: []string{inbox}})
	for _, bd := range bindings {
		b.bind(t, id, bd)
	}
	return id
}

func (b *testBundle) reload(t *testing.T) {
	t.Helper()
	require.NoError(t, b.cache.Reload(t.Context()))
}

func (b *testBundle) handle(t *testing.T, evs ...events.Event) {
	t.Helper()
	require.NoError(t, b.engine.HandleEvents(t.Context(), evs))
}

// fired reports whether rule notified anyone about event pk.
func (b *testBundle) fired(t *testing.T, ruleID, pk string) bool {
	t.Helper()
	return b.count(t, `SELECT count(*) FROM notifications WHERE rule_id = $1 AND event_id = $2`, ruleID, pk) > 0
}

// notified returns the users notified by rule about event pk, by username.
func (b *testBundle) notified(t *testing.T, ruleID, pk string) []string {
	t.Helper()
	var names []string
	require.NoError(t, b.db.SelectContext(t.Context(), &names, `SELECT u.username FROM notifications n JOIN users u ON u.id = n.user_id
WHERE n.rule_id = $1 AND n.event_id = $2 ORDER BY u.username`, ruleID, pk))
	return names
}

// deliveries returns "username/status" for each delivery of transport.
func (b *testBundle) deliveries(t *testing.T, transportID string) []string {
	t.Helper()
	var out []string
	require.NoError(t, b.db.SelectContext(t.Context(), &out, `SELECT u.username || '/' || d.status FROM deliveries d
JOIN notifications n ON n.id = d.notification_id JOIN users u ON u.id = n.user_id
WHERE d.transport_id = $1 ORDER BY u.username`, transportID))
	return out
}

// createdEvents returns the context of the events with action that the
// engine created, decoded.
func (b *testBundle) createdEvents(t *testing.T, action string) []map[string]any {
	t.Helper()
	var raw []string
	require.NoError(t, b.db.SelectContext(t.Context(), &raw, `SELECT context::text FROM events WHERE action = $1 ORDER BY stored, id`, action))
	out := make([]map[string]any, len(raw))
	for i, r := range raw {
		require.NoError(t, json.Unmarshal([]byte(r), &out[i]))
	}
	return out
}

func newPK(t *testing.T) string {
	t.Helper()
	var b [16]byte
	_, err := rand.Read(b[:])
	require.NoError(t, err)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// event builds an event as the worker receives it: fields (pk, action,
// user, context, client_ip, app, …) encoded to JSON and decoded with
// [events.Decode]. A missing pk is generated.
func event(t *testing.T, fields map[string]any) events.Event {
	t.Helper()
	m := map[string]any{"pk": newPK(t), "app": "authentik.events.signals", "created": time.Now().UTC().Format(time.RFC3339Nano)}
	for k, v := range fields {
		m[k] = v
	}
	data, err := json.Marshal(m)
	require.NoError(t, err)
	ev, err := events.Decode(data)
	require.NoError(t, err)
	return ev
}

// userEvent is an event with action by the user with pk (0: no user).
func userEvent(t *testing.T, action string, pk int64, context map[string]any) events.Event {
	t.Helper()
	fields := map[string]any{"action": action, "context": context}
	if pk != 0 {
		fields["user"] = map[string]any{"pk": pk, "username": fmt.Sprintf("user%d", pk), "email": ""}
	}
	return event(t, fields)
}

func dashless(id string) string { return strings.ReplaceAll(id, "-", "") }

// path walks nested JSON objects.
func path(t *testing.T, m map[string]any, keys ...string) any {
	t.Helper()
	var cur any = m
	for _, k := range keys {
		obj, ok := cur.(map[string]any)
		require.True(t, ok, "%v: %q is not inside an object (%v)", keys, k, cur)
		cur = obj[k]
	}
	return cur
}

// ---------------------------------------------------------------------------
// DESIGN.md §4: which rules fire.

func TestEngineEnabledRulesOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	yes := b.policy(t, "yes", "return true;")
	onlyOff := b.policy(t, "only-off", "return true;")
	on := b.alertRule(t, "on", binding{Policy: yes})
	inbox := b.transport(t, "inbox-off", "local", false)
	off := b.rule(t, rule{Name: "off", EventUser: true, Disabled: true, Transports: []string{inbox}})
	b.bind(t, off, binding{Policy: yes, Order: 1})
	b.bind(t, off, binding{Policy: onlyOff, Order: 2})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	b.handle(t, ev)

	require.True(t, b.fired(t, on, ev.PK))
	require.False(t, b.fired(t, off, ev.PK))
	// The disabled rule's policies do not even run.
	require.Equal(t, []string{"yes"}, b.evals.evaluated())
}

// A rule whose expression policies all start by returning false for other
// actions is skipped for those events: nothing is evaluated. Negated or
// logged bindings and unguarded policies keep every event evaluated, and
// the results are those of a full evaluation.
func TestEngineSkipsRulesGuardedByAction(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	guarded := b.alertRule(t, "guarded", binding{Policy: b.policy(t, "login-only", `const event = request.context.event;
if (!event || event.action !== "login") return false;
return true;`)})
	negated := b.alertRule(t, "negated", binding{Policy: b.policy(t, "login-only-negated", `if (request.context.event.action !== "login") return false;
return true;`), Negate: true})
	logged := b.alertRule(t, "logged", binding{Policy: b.loggedPolicy(t, "login-only-logged", `if (request.context.event.action !== "login") return false;
return true;`)})
	b.alertRule(t, "unguarded", binding{Policy: b.policy(t, "anything", `return request.context.event.action === "logout";`)})
	b.reload(t)

	logout := userEvent(t, "logout", jane, nil)
	b.handle(t, logout)
	require.ElementsMatch(t, []string{"login-only-negated", "login-only-logged", "anything"}, b.evals.evaluated())
	require.False(t, b.fired(t, guarded, logout.PK))
	require.True(t, b.fired(t, negated, logout.PK), "a negated binding passes when its policy returns false")
	require.False(t, b.fired(t, logged, logout.PK))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE action = 'policy_execution'`))

	login := userEvent(t, "login", jane, nil)
	b.handle(t, login)
	require.True(t, b.fired(t, guarded, login.PK))
	require.False(t, b.fired(t, negated, login.PK))
	require.True(t, b.fired(t, logged, login.PK))
	require.Contains(t, b.evals.evaluated(), "login-only")
}

// A batch runs without a savepoint per policy; only when a policy that used
// the database fails does it run again with savepoints, and the results
// are those of the careful run: the failed policy's writes are undone, the
// others' kept.
func TestEngineRedoesBatchWithSavepointsOnlyWhenADatabasePolicyFails(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	bob := b.user(t, "bob")
	b.alertRule(t, "counts", binding{Policy: b.policy(t, "count-logins", `const u = User.objects.get({pk: request.user.pk});
u.attributes.logins = (u.attributes.logins || 0) + 1;
u.save({update_fields: ["attributes"]});
return true;`)})
	b.alertRule(t, "bob-fails", binding{Policy: b.policy(t, "fails-for-bob", `const u = User.objects.get({pk: request.user.pk});
u.attributes.marked = true;
u.save({update_fields: ["attributes"]});
if (u.username === "bob") throw new Error("bob");
return false;`)})
	b.reload(t)

	batch := func(users ...int64) {
		t.Helper()
		evs := make([]events.Event, len(users))
		for i, u := range users {
			evs[i] = userEvent(t, "login", u, nil)
		}
		require.NoError(t, b.engine.HandleEvents(t.Context(), evs))
	}
	batch(jane, jane)
	require.Zero(t, b.engine.Stats().BatchesRedone.Load())
	requireJSON(t, `{"logins": 2, "marked": true}`, b.jsonColumn(t, `SELECT attributes::text FROM users WHERE id = $1`, jane))

	batch(jane, bob, jane)
	require.EqualValues(t, 1, b.engine.Stats().BatchesRedone.Load())
	requireJSON(t, `{"logins": 4, "marked": true}`, b.jsonColumn(t, `SELECT attributes::text FROM users WHERE id = $1`, jane))
	requireJSON(t, `{"logins": 1}`, b.jsonColumn(t, `SELECT attributes::text FROM users WHERE id = $1`, bob))
	require.Len(t, b.createdEvents(t, "policy_exception"), 1)
	require.Equal(t, 5, b.count(t, `SELECT count(*) FROM events WHERE action = 'login'`))
}

func TestEngineBindingsInAscendingOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	r := b.alertRule(t, "ordered")
	// Inserted out of order; 10 sorts before 2 as text, not as a number.
	b.bind(t, r, binding{Policy: b.policy(t, "ten", "return false;"), Order: 10})
	b.bind(t, r, binding{Policy: b.policy(t, "two", "return false;"), Order: 2})
	b.bind(t, r, binding{Policy: b.policy(t, "minus-one", "return false;"), Order: -1})
	b.bind(t, r, binding{Policy: b.policy(t, "zero", "return true;"), Order: 0})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	b.handle(t, ev)

	require.Equal(t, []string{"minus-one", "zero", "two", "ten"}, b.evals.evaluated())
	require.True(t, b.fired(t, r, ev.PK))
}

func TestEngineDisabledBindingSkipped(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	r := b.alertRule(t, "rule",
		binding{Policy: b.policy(t, "disabled-pass", "return true;"), Order: 0, Disabled: true},
		binding{Policy: b.policy(t, "enabled-fail", "return false;"), Order: 1},
	)
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	b.handle(t, ev)

	require.False(t, b.fired(t, r, ev.PK))
	require.Equal(t, []string{"enabled-fail"}, b.evals.evaluated())
}

func TestEngineAnyBindingPasses(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	no1 := b.policy(t, "no-1", "return false;")
	yes := b.policy(t, "yes", "return true;")
	no2 := b.policy(t, "no-2", "return false;")
	anyRule := b.alertRule(t, "any", binding{Policy: no1, Order: 0}, binding{Policy: yes, Order: 1}, binding{Policy: no2, Order: 2})
	noneRule := b.alertRule(t, "none", binding{Policy: no1, Order: 0}, binding{Policy: no2, Order: 1})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	b.handle(t, ev)

	require.True(t, b.fired(t, anyRule, ev.PK))
	require.False(t, b.fired(t, noneRule, ev.PK))
	// As in authentik every binding is evaluated, even after one passed.
	require.ElementsMatch(t, []string{"no-1", "yes", "no-2", "no-1", "no-2"}, b.evals.evaluated())
}

func TestEngineRuleWithoutBindingsNeverFires(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	bare := b.alertRule(t, "bare")
	disabledOnly := b.alertRule(t, "disabled-only", binding{Policy: b.policy(t, "yes", "return true;"), Disabled: true})
	control := b.alertRule(t, "control", binding{Policy: b.policy(t, "control-yes", "return true;")})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	b.handle(t, ev)

	require.False(t, b.fired(t, bare, ev.PK), "a rule with no bindings")
	require.False(t, b.fired(t, disabledOnly, ev.PK), "a rule whose only binding is disabled")
	require.True(t, b.fired(t, control, ev.PK))
}

func TestEngineGroupBinding(t *testing.T) {
	t.Parallel()

	// Groups: root > mid > leaf. jane is in leaf, bob in mid, eve in none.
	tests := []struct {
		name  string
		bound string // the group of the binding
		user  string // the event's user: jane, bob, eve, ghost (no row) or "" (no user)
		want  bool
	}{
		{name: "DirectMember", bound: "leaf", user: "jane", want: true},
		{name: "MemberOfChildGroup", bound: "mid", user: "jane", want: true},
		{name: "MemberOfGrandchildGroup", bound: "root", user: "jane", want: true},
		{name: "MemberOfParentGroupOnly", bound: "leaf", user: "bob", want: false},
		{name: "DirectMemberOfMid", bound: "mid", user: "bob", want: true},
		{name: "NotAMember", bound: "root", user: "eve", want: false},
		{name: "UnknownUser", bound: "root", user: "ghost", want: false},
		{name: "NoUser", bound: "root", user: "", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			users := map[string]int64{"jane": b.user(t, "jane"), "bob": b.user(t, "bob"), "eve": b.user(t, "eve"), "ghost": 999999}
			root := b.group(t, "root", "")
			mid := b.group(t, "mid", root, users["bob"])
			leaf := b.group(t, "leaf", mid, users["jane"])
			groups := map[string]string{"root": root, "mid": mid, "leaf": leaf}

			// The rule notifies a fixed admin, so that it can fire for
			// events without a (known) user too.
			admin := b.user(t, "admin")
			admins := b.group(t, "admins", "", admin)
			r := b.rule(t, rule{Name: "group", Group: admins, Transports: []string{b.transport(t, "inbox", "local", false)}})
			b.bind(t, r, binding{Group: groups[tt.bound]})
			b.reload(t)

			ev := userEvent(t, "login", users[tt.user], nil)
			b.handle(t, ev)
			require.Equal(t, tt.want, b.fired(t, r, ev.PK))
		})
	}
}

func TestEngineUserBinding(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		user string
		want bool
	}{
		{name: "BoundUser", user: "jane", want: true},
		{name: "OtherUser", user: "bob", want: false},
		{name: "NoUser", user: "", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			users := map[string]int64{"jane": b.user(t, "jane"), "bob": b.user(t, "bob")}
			admin := b.user(t, "admin")
			r := b.rule(t, rule{Name: "user", Group: b.group(t, "admins", "", admin), Transports: []string{b.transport(t, "inbox", "local", false)}})
			b.bind(t, r, binding{User: users["jane"]})
			b.reload(t)

			ev := userEvent(t, "login", users[tt.user], nil)
			b.handle(t, ev)
			require.Equal(t, tt.want, b.fired(t, r, ev.PK))
		})
	}
}

func TestEngineNegate(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		bind func(t *testing.T, b *testBundle, jane int64) binding
		want bool
	}{
		{name: "PassingPolicyNegated", want: false, bind: func(t *testing.T, b *testBundle, _ int64) binding {
			return binding{Policy: b.policy(t, "yes", "return true;"), Negate: true}
		}},
		{name: "FailingPolicyNegated", want: true, bind: func(t *testing.T, b *testBundle, _ int64) binding {
			return binding{Policy: b.policy(t, "no", "return false;"), Negate: true}
		}},
		{name: "MatchingEventMatcherNegated", want: false, bind: func(t *testing.T, b *testBundle, _ int64) binding {
			return binding{Policy: b.matcher(t, "login", matcher{Action: "login"}), Negate: true}
		}},
		{name: "MismatchingEventMatcherNegated", want: true, bind: func(t *testing.T, b *testBundle, _ int64) binding {
			return binding{Policy: b.matcher(t, "logout", matcher{Action: "logout"}), Negate: true}
		}},
		{name: "GroupMemberNegated", want: false, bind: func(t *testing.T, b *testBundle, jane int64) binding {
			return binding{Group: b.group(t, "staff", "", jane), Negate: true}
		}},
		{name: "NonMemberNegated", want: true, bind: func(t *testing.T, b *testBundle, _ int64) binding {
			return binding{Group: b.group(t, "staff", ""), Negate: true}
		}},
		{name: "BoundUserNegated", want: false, bind: func(t *testing.T, _ *testBundle, jane int64) binding {
			return binding{User: jane, Negate: true}
		}},
		{name: "OtherUserNegated", want: true, bind: func(t *testing.T, b *testBundle, _ int64) binding {
			return binding{User: b.user(t, "bob"), Negate: true}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			jane := b.user(t, "jane")
			r := b.alertRule(t, "negated", tt.bind(t, b, jane))
			b.reload(t)

			ev := userEvent(t, "login", jane, nil)
			b.handle(t, ev)
			require.Equal(t, tt.want, b.fired(t, r, ev.PK))
		})
	}
}

// ---------------------------------------------------------------------------
// Failing policies: failure_result, not negated, and a policy_exception event.

func TestEnginePolicyErrors(t *testing.T) {
	t.Parallel()

	policies := []struct {
		name       string
		expression string
		kind       string
		message    string
		line       int
	}{
		{name: "Throws", expression: "const e = request.context.event;\nif (e.action === \"login\") {\n  throw new Error(\"boom\");\n}\nreturn true;",
			kind: "exception", message: "boom", line: 3},
		{name: "TypeError", expression: "const e = request.context.event;\nreturn e.context.missing.deeper;",
			kind: "exception", message: "TypeError", line: 2},
		{name: "DoesNotCompile", expression: "const a = 1;\nconst b = 2;\nreturn a +* b;",
			kind: "syntax", message: "SyntaxError", line: 3},
	}
	results := []struct {
		failureResult, negate, want bool
	}{
		{failureResult: true, negate: false, want: true},
		{failureResult: true, negate: true, want: true},   // failure_result is not negated
		{failureResult: false, negate: true, want: false}, // a negated false would pass
		{failureResult: false, negate: false, want: false},
	}
	for _, p := range policies {
		for _, r := range results {
			name := fmt.Sprintf("%s/FailureResult=%t/Negate=%t", p.name, r.failureResult, r.negate)
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				b := setup(t)
				jane := b.user(t, "jane")
				policyName := "broken-" + strings.ToLower(p.name)
				policy := b.policy(t, policyName, p.expression)
				rl := b.alertRule(t, "rule", binding{Policy: policy, Negate: r.negate, FailureResult: r.failureResult})
				b.reload(t)

				ev := userEvent(t, "login", jane, nil)
				b.handle(t, ev)
				require.Equal(t, r.want, b.fired(t, rl, ev.PK))

				exceptions := b.createdEvents(t, "policy_exception")
				require.Len(t, exceptions, 1)
				c := exceptions[0]
				require.Equal(t, "Policy failed to execute", c["message"])
				require.Equal(t, dashless(policy), c["policy_uuid"])
				require.Equal(t, policyName, path(t, c, "policy", "name"))
				require.Equal(t, p.kind, path(t, c, "error", "kind"))
				require.Contains(t, path(t, c, "error", "message"), p.message)
				require.EqualValues(t, p.line, path(t, c, "error", "line"), "context.error.line: %v", c["error"])
				require.Equal(t, ev.PK, path(t, c, "caused_by", "event"))
				require.EqualValues(t, 1, path(t, c, "caused_by", "depth"))
				require.Equal(t, policyName, path(t, c, "caused_by", "policy"))
				require.EqualValues(t, jane, path(t, c, "request", "user", "pk"))
			})
		}
	}
}

func TestEnginePolicyExceptionEventIsQueuedAndGuarded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	broken := b.alertRule(t, "broken", binding{Policy: b.policy(t, "broken", `throw new Error("boom");`)})
	// authentik's default-notify-exception rule: notifies about every policy_exception.
	notifyExceptions := b.alertRule(t, "notify-exceptions", binding{Policy: b.matcher(t, "exceptions", matcher{Action: "policy_exception"})})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	b.handle(t, ev)
	require.False(t, b.fired(t, broken, ev.PK))

	// The policy_exception event is stored and queued for publishing.
	var created struct {
		ID      string `db:"id"`
		Payload string `db:"payload"`
	}
	require.NoError(t, b.db.GetContext(t.Context(), &created, `SELECT e.id, o.payload::text AS payload
FROM events e JOIN outbox o ON o.key = 'event:' || e.id WHERE e.action = 'policy_exception'`))

	// Consumed back from the stream, it notifies nobody: its policy is bound to a rule.
	exc, err := events.Decode([]byte(created.Payload))
	require.NoError(t, err)
	require.Equal(t, created.ID, exc.PK)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE id = $1 AND NOT processed`, exc.PK))
	b.handle(t, exc)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE id = $1 AND processed`, exc.PK))
	require.False(t, b.fired(t, notifyExceptions, exc.PK))
	require.Zero(t, b.count(t, `SELECT count(*) FROM notifications`))
}

func TestEngineTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	loop := b.policy(t, "infinite-loop", "while (true) {}")
	timedOutTrue := b.alertRule(t, "timed-out-true", binding{Policy: loop, Timeout: 1, FailureResult: true, Negate: true})
	timedOutFalse := b.alertRule(t, "timed-out-false", binding{Policy: loop, Timeout: 1, FailureResult: false})
	other := b.alertRule(t, "other", binding{Policy: b.policy(t, "yes", "return true;")})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	start := time.Now()
	b.handle(t, ev)
	require.Less(t, time.Since(start), 20*time.Second, "the loop was not interrupted after its 1s timeout")

	require.True(t, b.fired(t, timedOutTrue, ev.PK), "failure_result true, not negated")
	require.False(t, b.fired(t, timedOutFalse, ev.PK), "failure_result false")
	require.True(t, b.fired(t, other, ev.PK), "another rule for the same event still fires")

	exceptions := b.createdEvents(t, "policy_exception")
	require.Len(t, exceptions, 2)
	for _, c := range exceptions {
		require.Equal(t, "timeout", path(t, c, "error", "kind"))
		require.Equal(t, "infinite-loop", path(t, c, "policy", "name"))
		require.Equal(t, dashless(loop), c["policy_uuid"])
	}
}

// ---------------------------------------------------------------------------
// Event matcher policies.

func TestEngineEventMatcher(t *testing.T) {
	t.Parallel()

	userModel := map[string]any{"model": map[string]any{"app": "authentik_core", "model_name": "user", "pk": 12, "name": "Jane"}}
	appModel := map[string]any{"model": map[string]any{"app": "authentik_core", "model_name": "application", "pk": "b7c1e5a0d3f04e5c9a7e2f6d8c4b1a90"}}
	tests := []struct {
		name    string
		matcher matcher
		event   map[string]any // action, app, client_ip, context
		want    bool
	}{
		{name: "NoneSetPasses", matcher: matcher{}, event: map[string]any{"action": "anything"}, want: true},
		{name: "ActionMatches", matcher: matcher{Action: "login"}, event: map[string]any{"action": "login"}, want: true},
		{name: "ActionMismatch", matcher: matcher{Action: "login"}, event: map[string]any{"action": "logout"}, want: false},
		{name: "AppMatches", matcher: matcher{App: "authentik.events.middleware"},
			event: map[string]any{"action": "model_created", "app": "authentik.events.middleware"}, want: true},
		{name: "AppMismatch", matcher: matcher{App: "authentik.events.middleware"},
			event: map[string]any{"action": "model_created", "app": "authentik.events.signals"}, want: false},
		{name: "ModelMatches", matcher: matcher{Model: "authentik_core.user"},
			event: map[string]any{"action": "model_updated", "context": userModel}, want: true},
		{name: "ModelMismatch", matcher: matcher{Model: "authentik_core.user"},
			event: map[string]any{"action": "model_updated", "context": appModel}, want: false},
		{name: "ModelMissing", matcher: matcher{Model: "authentik_core.user"},
			event: map[string]any{"action": "model_updated"}, want: false},
		{name: "ClientIPMatches", matcher: matcher{ClientIP: "192.0.2.10"},
			event: map[string]any{"action": "login", "client_ip": "192.0.2.10"}, want: true},
		{name: "ClientIPMismatch", matcher: matcher{ClientIP: "192.0.2.10"},
			event: map[string]any{"action": "login", "client_ip": "192.0.2.11"}, want: false},
		{name: "ClientIPMissing", matcher: matcher{ClientIP: "192.0.2.10"},
			event: map[string]any{"action": "login"}, want: false},
		{name: "AllMatch", matcher: matcher{Action: "model_created", App: "authentik.events.middleware", Model: "authentik_core.application", ClientIP: "192.0.2.10"},
			event: map[string]any{"action": "model_created", "app": "authentik.events.middleware", "client_ip": "192.0.2.10", "context": appModel}, want: true},
		{name: "OneOfSeveralMismatches", matcher: matcher{Action: "model_created", App: "authentik.events.middleware", Model: "authentik_core.user"},
			event: map[string]any{"action": "model_created", "app": "authentik.events.middleware", "context": appModel}, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			jane := b.user(t, "jane")
			r := b.alertRule(t, "matcher", binding{Policy: b.matcher(t, "matcher", tt.matcher)})
			b.reload(t)

			fields := map[string]any{"user": map[string]any{"pk": jane, "username": "jane"}}
			for k, v := range tt.event {
				fields[k] = v
			}
			ev := event(t, fields)
			b.handle(t, ev)
			require.Equal(t, tt.want, b.fired(t, r, ev.PK))
			// Event matchers are not JavaScript.
			require.Empty(t, b.evals.evaluated())
		})
	}
}

// As in authentik, each check an event matcher sets adds its message, in
// authentik's order, whether it matched or not; they reach the
// policy_execution event.
func TestEngineEventMatcherMessages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	all := b.matcher(t, "all", matcher{Action: "login", App: "authentik.events.signals", Model: "authentik_core.user", ClientIP: "192.0.2.10"})
	action := b.matcher(t, "action", matcher{Action: "logout"})
	b.db.MustExec(t, `UPDATE policies SET execution_logging = true`)
	b.alertRule(t, "r", binding{Policy: all}, binding{Policy: action, Order: 1})
	b.reload(t)
	b.handle(t, userEvent(t, "login", jane, nil))

	messages := map[string]any{}
	for _, ex := range b.createdEvents(t, "policy_execution") {
		messages[path(t, ex, "policy", "name").(string)] = path(t, ex, "result", "messages")
	}
	require.Equal(t, map[string]any{
		"all":    []any{"Action matched.", "Client IP matched.", "App matched.", "Model matched."},
		"action": []any{"Action matched."}, // it did not match
	}, messages)
}

// A rule or a transport deleted after the rule set was loaded, before the
// workers reload it, is skipped, as authentik skips a rule that is gone:
// the batch, with its other events, commits.
func TestEngineSkipsRulesAndTransportsDeletedSinceLoad(t *testing.T) {
	t.Parallel()
	for _, deleted := range []string{"notification_rules", "notification_transports"} {
		t.Run(deleted, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			jane := b.user(t, "jane")
			r := b.alertRule(t, "gone", binding{Policy: b.matcher(t, "logins", matcher{Action: "login"})})
			kept := b.alertRule(t, "kept", binding{Policy: b.matcher(t, "logouts", matcher{Action: "logout"})})
			b.reload(t)
			if deleted == "notification_rules" {
				b.db.MustExec(t, `DELETE FROM notification_rules WHERE id = $1`, r)
			} else {
				b.db.MustExec(t, `DELETE FROM notification_transports WHERE name = 'inbox-gone'`)
			}
			login, logout := userEvent(t, "login", jane, nil), userEvent(t, "logout", jane, nil)
			require.NoError(t, b.engine.HandleEvents(t.Context(), []events.Event{login, logout}))

			require.Equal(t, 2, b.count(t, `SELECT count(*) FROM events WHERE id IN ($1, $2)`, login.PK, logout.PK))
			require.True(t, b.fired(t, kept, logout.PK))
			require.Equal(t, 1, b.count(t, `SELECT count(*) FROM deliveries`), "the kept rule's delivery only")
		})
	}
}

// ---------------------------------------------------------------------------
// Fan-out: destination users, transports, send_once, body.

func TestEngineDestinationUsers(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name      string
		eventUser bool
		user      string // the event's user
		want      []string
	}{
		{name: "EventUserAndGroup", eventUser: true, user: "jane", want: []string{"alice", "bob", "jane"}},
		{name: "GroupOnly", eventUser: false, user: "jane", want: []string{"alice", "bob"}},
		{name: "EventUserWithoutRow", eventUser: true, user: "ghost", want: []string{"alice", "bob"}},
		{name: "NoEventUser", eventUser: true, user: "", want: []string{"alice", "bob"}},
		{name: "EventUserInGroupOnce", eventUser: true, user: "alice", want: []string{"alice", "bob"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			users := map[string]int64{"jane": b.user(t, "jane"), "ghost": 999999}
			alice, bob, carol := b.user(t, "alice"), b.user(t, "bob"), b.user(t, "carol")
			users["alice"] = alice
			ops := b.group(t, "ops", "", alice, bob)
			b.group(t, "ops-oncall", ops, carol) // a child group: carol is not notified
			inbox := b.transport(t, "inbox", "local", false)
			r := b.rule(t, rule{Name: "ops", EventUser: tt.eventUser, Group: ops, Transports: []string{inbox}})
			b.bind(t, r, binding{Policy: b.policy(t, "yes", "return true;")})
			b.reload(t)

			ev := userEvent(t, "login", users[tt.user], nil)
			b.handle(t, ev)
			require.Equal(t, tt.want, b.notified(t, r, ev.PK))
			want := make([]string, len(tt.want))
			for i, u := range tt.want {
				want[i] = u + "/sent"
			}
			require.Equal(t, want, b.deliveries(t, inbox))
		})
	}
}

func TestEngineSendOnce(t *testing.T) {
	t.Parallel()

	t.Run("EventUserFirst", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jane := b.user(t, "jane")
		alice, bob := b.user(t, "alice"), b.user(t, "bob")
		ops := b.group(t, "ops", "", alice, bob)
		once := b.transport(t, "once", "local", true)
		all := b.transport(t, "all", "webhook", false)
		r := b.rule(t, rule{Name: "ops", EventUser: true, Group: ops, Transports: []string{once, all}})
		b.bind(t, r, binding{Policy: b.policy(t, "yes", "return true;")})
		b.reload(t)

		ev := userEvent(t, "login", jane, nil)
		b.handle(t, ev)
		require.Equal(t, []string{"jane/sent"}, b.deliveries(t, once))
		require.Equal(t, []string{"alice/pending", "bob/pending", "jane/pending"}, b.deliveries(t, all))
	})

	t.Run("GroupOnly", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jane := b.user(t, "jane")
		alice, bob := b.user(t, "alice"), b.user(t, "bob")
		ops := b.group(t, "ops", "", alice, bob)
		once := b.transport(t, "once", "webhook", true)
		r := b.rule(t, rule{Name: "ops", Group: ops, Transports: []string{once}})
		b.bind(t, r, binding{Policy: b.policy(t, "yes", "return true;")})
		b.reload(t)

		ev := userEvent(t, "login", jane, nil)
		b.handle(t, ev)
		got := b.deliveries(t, once)
		require.Len(t, got, 1)
		require.Contains(t, []string{"alice/pending", "bob/pending"}, got[0])
	})
}

func TestEngineRuleWithoutTransports(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	r := b.rule(t, rule{Name: "silent", EventUser: true, Group: b.group(t, "ops", "", jane)})
	b.bind(t, r, binding{Policy: b.loggedPolicy(t, "side-effect", `ak_logger.info("ran"); return true;`)})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	b.handle(t, ev)

	// The policy ran (and its execution was logged) ...
	require.Equal(t, []string{"side-effect"}, b.evals.evaluated())
	executions := b.createdEvents(t, "policy_execution")
	require.Len(t, executions, 1)
	require.Equal(t, true, path(t, executions[0], "result", "passing"))
	// ... but nobody is notified.
	require.Zero(t, b.count(t, `SELECT count(*) FROM notifications`))
	require.Zero(t, b.count(t, `SELECT count(*) FROM deliveries`))
}

func TestEngineNotificationBody(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	r := b.alertRule(t, "all", binding{Policy: b.matcher(t, "any", matcher{})})
	b.reload(t)

	withMessage := userEvent(t, "configuration_error", jane, map[string]any{"message": "Something is misconfigured", "extra": 1})
	model := map[string]any{"model": map[string]any{"app": "authentik_core", "model_name": "application", "pk": "b7c1e5a0d3f04e5c9a7e2f6d8c4b1a90", "name": "Grafana"}}
	withoutMessage := userEvent(t, "model_created", jane, model)
	b.handle(t, withMessage, withoutMessage)

	var body string
	require.NoError(t, b.db.GetContext(t.Context(), &body, `SELECT body FROM notifications WHERE rule_id = $1 AND event_id = $2`, r, withMessage.PK))
	require.Equal(t, "Something is misconfigured", body)

	var severity string
	require.NoError(t, b.db.GetContext(t.Context(), &body, `SELECT body FROM notifications WHERE rule_id = $1 AND event_id = $2`, r, withoutMessage.PK))
	prefix := "model_created: "
	require.True(t, strings.HasPrefix(body, prefix), "body %q", body)
	wantJSON, err := json.Marshal(model)
	require.NoError(t, err)
	require.JSONEq(t, string(wantJSON), strings.TrimPrefix(body, prefix))

	require.NoError(t, b.db.GetContext(t.Context(), &severity, `SELECT severity FROM notifications WHERE event_id = $1`, withoutMessage.PK))
	require.Equal(t, "notice", severity)
}

func TestEngineNotificationSeverity(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	r := b.rule(t, rule{Name: "alerting", Severity: "alert", EventUser: true, Transports: []string{b.transport(t, "inbox", "local", false)}})
	b.bind(t, r, binding{Policy: b.matcher(t, "any", matcher{})})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	b.handle(t, ev)
	var severity string
	require.NoError(t, b.db.GetContext(t.Context(), &severity, `SELECT severity FROM notifications WHERE rule_id = $1`, r))
	require.Equal(t, "alert", severity)
}

func TestEngineDeliveryStatusByTransport(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	local := b.transport(t, "local", "local", false)
	webhook := b.transport(t, "webhook", "webhook", false)
	r := b.rule(t, rule{Name: "both", EventUser: true, Transports: []string{local, webhook}})
	b.bind(t, r, binding{Policy: b.matcher(t, "any", matcher{})})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	b.handle(t, ev)

	require.Equal(t, []string{"jane/sent"}, b.deliveries(t, local))
	require.Equal(t, []string{"jane/pending"}, b.deliveries(t, webhook))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM deliveries WHERE transport_id = $1 AND sent_at IS NOT NULL`, local))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM deliveries WHERE transport_id = $1 AND sent_at IS NULL`, webhook))
	// One notification for the user, shared by both deliveries.
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM notifications`))
}

// ---------------------------------------------------------------------------
// Idempotency and batches.

func TestEngineSameEventTwice(t *testing.T) {
	t.Parallel()

	for _, sameBatch := range []bool{false, true} {
		t.Run(fmt.Sprintf("SameBatch=%t", sameBatch), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			jane := b.user(t, "jane")
			webhook := b.transport(t, "webhook", "webhook", false)
			r := b.alertRule(t, "logins", binding{Policy: b.loggedPolicy(t, "yes", "return true;")})
			b.db.MustExec(t, `INSERT INTO notification_rule_transports (rule_id, transport_id) VALUES ($1, $2)`, r, webhook)
			b.reload(t)

			ev := userEvent(t, "login", jane, nil)
			if sameBatch {
				b.handle(t, ev, ev)
			} else {
				b.handle(t, ev)
				b.handle(t, ev)
			}

			require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE id = $1`, ev.PK))
			require.Equal(t, 1, b.count(t, `SELECT count(*) FROM notifications`))
			require.Equal(t, 2, b.count(t, `SELECT count(*) FROM deliveries`)) // one per transport
			require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE action = 'policy_execution'`))
			require.Equal(t, []string{"yes"}, b.evals.evaluated())
		})
	}
}

func TestEngineBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane, bob := b.user(t, "jane"), b.user(t, "bob")
	r := b.alertRule(t, "logins", binding{Policy: b.matcher(t, "login", matcher{Action: "login"})})
	b.reload(t)

	batch := []events.Event{
		userEvent(t, "login", jane, nil),
		userEvent(t, "logout", jane, nil),
		userEvent(t, "login", bob, nil),
		userEvent(t, "login", 0, nil), // anonymous: stored, nobody to notify
	}
	b.handle(t, batch...)

	for _, ev := range batch {
		require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE id = $1 AND action = $2`, ev.PK, ev.Action))
	}
	require.Equal(t, []string{"jane"}, b.notified(t, r, batch[0].PK))
	require.Empty(t, b.notified(t, r, batch[1].PK))
	require.Equal(t, []string{"bob"}, b.notified(t, r, batch[2].PK))
	require.Empty(t, b.notified(t, r, batch[3].PK))
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM notifications`))
}

// ---------------------------------------------------------------------------
// Loop guards (DESIGN.md §5).

func TestEngineLoopGuardDepth(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name  string
		depth any
		want  bool
	}{
		{name: "Depth3", depth: 3, want: true},
		{name: "Depth4", depth: 4, want: false},
		{name: "Depth10", depth: 10, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			jane := b.user(t, "jane")
			r := b.alertRule(t, "all", binding{Policy: b.policy(t, "yes", "return true;")})
			b.reload(t)

			ev := userEvent(t, "custom_thing", jane, map[string]any{
				"caused_by": map[string]any{"event": newPK(t), "rule": "other", "policy": "other", "depth": tt.depth},
			})
			b.handle(t, ev)

			require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE id = $1`, ev.PK), "the event is stored")
			require.Equal(t, tt.want, b.fired(t, r, ev.PK))
			if !tt.want {
				require.Empty(t, b.evals.evaluated(), "a guarded event runs no policy")
			}
		})
	}
}

func TestEngineLoopGuardPolicyUUID(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name   string
		action string
		uuid   func(bound, unbound string) string
		want   bool
	}{
		{name: "BoundPolicyDashless", action: "policy_exception", uuid: func(bound, _ string) string { return dashless(bound) }, want: false},
		{name: "BoundPolicyDashed", action: "policy_exception", uuid: func(bound, _ string) string { return bound }, want: false},
		{name: "BoundPolicyExecution", action: "policy_execution", uuid: func(bound, _ string) string { return dashless(bound) }, want: false},
		{name: "UnboundPolicy", action: "policy_exception", uuid: func(_, unbound string) string { return dashless(unbound) }, want: true},
		{name: "UnknownPolicy", action: "policy_exception", uuid: func(_, _ string) string { return "c0ffee00c0ffee00c0ffee00c0ffee00" }, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			jane := b.user(t, "jane")
			// bound is bound to a rule (a disabled binding of another rule
			// still counts, as in authentik); unbound is bound to nothing.
			bound := b.policy(t, "bound", "return false;")
			unbound := b.policy(t, "unbound", "return false;")
			other := b.alertRule(t, "other")
			b.bind(t, other, binding{Policy: bound, Disabled: true})
			r := b.alertRule(t, "exceptions", binding{Policy: b.matcher(t, "exceptions", matcher{})})
			b.reload(t)

			ev := userEvent(t, tt.action, jane, map[string]any{
				"message":     "Policy failed to execute",
				"policy_uuid": tt.uuid(bound, unbound),
			})
			b.handle(t, ev)

			require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE id = $1`, ev.PK), "the event is stored")
			require.Equal(t, tt.want, b.fired(t, r, ev.PK))
		})
	}
}

// ---------------------------------------------------------------------------
// Execution logging and JavaScript truthiness.

func TestEngineExecutionLogging(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		negate  bool
		passing bool
	}{
		{name: "Passing", negate: false, passing: true},
		{name: "Negated", negate: true, passing: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			jane := b.user(t, "jane")
			policy := b.loggedPolicy(t, "logged", `ak_logger.info("checking", {user: request.user.username});
ak_logger.warning("careful");
ak_message("a message");
return true;`)
			r := b.alertRule(t, "logged", binding{Policy: policy, Negate: tt.negate})
			b.reload(t)

			ev := userEvent(t, "login", jane, nil)
			b.handle(t, ev)
			require.Equal(t, tt.passing, b.fired(t, r, ev.PK))

			executions := b.createdEvents(t, "policy_execution")
			require.Len(t, executions, 1)
			c := executions[0]
			require.Equal(t, "Policy Execution", c["message"])
			require.Equal(t, dashless(policy), c["policy_uuid"])
			require.Equal(t, "logged", path(t, c, "policy", "name"))
			require.Equal(t, tt.passing, path(t, c, "result", "passing"))
			require.Equal(t, []any{"a message"}, path(t, c, "result", "messages"))
			logs, ok := c["logs"].([]any)
			require.True(t, ok, "context.logs: %v", c["logs"])
			require.Len(t, logs, 2)
			require.Equal(t, "info", path(t, logs[0].(map[string]any), "level"))
			require.Equal(t, "checking", path(t, logs[0].(map[string]any), "message"))
			require.Equal(t, "jane", path(t, logs[0].(map[string]any), "fields", "user"))
			require.Equal(t, "warning", path(t, logs[1].(map[string]any), "level"))
			require.Equal(t, "careful", path(t, logs[1].(map[string]any), "message"))
			require.Equal(t, ev.PK, path(t, c, "caused_by", "event"))
		})
	}

	t.Run("Off", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		jane := b.user(t, "jane")
		r := b.alertRule(t, "quiet", binding{Policy: b.policy(t, "quiet", `ak_logger.info("x"); return true;`)})
		b.reload(t)

		ev := userEvent(t, "login", jane, nil)
		b.handle(t, ev)
		require.True(t, b.fired(t, r, ev.PK))
		require.Zero(t, b.count(t, `SELECT count(*) FROM events WHERE action = 'policy_execution'`))
	})
}

func TestEngineJavaScriptTruthiness(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		expr string
		want bool
	}{
		{name: "True", expr: `return true;`, want: true},
		{name: "StringFalse", expr: `return "false";`, want: true},
		{name: "NonZero", expr: `return 2;`, want: true},
		{name: "Object", expr: `return {};`, want: true},
		{name: "False", expr: `return false;`, want: false},
		{name: "Zero", expr: `return 0;`, want: false},
		{name: "EmptyString", expr: `return "";`, want: false},
		{name: "Undefined", expr: `return undefined;`, want: false},
		{name: "NoReturn", expr: `const x = 1;`, want: false},
		{name: "Null", expr: `return null;`, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			jane := b.user(t, "jane")
			r := b.alertRule(t, "truthy", binding{Policy: b.policy(t, "truthy", tt.expr)})
			b.reload(t)

			ev := userEvent(t, "login", jane, nil)
			b.handle(t, ev)
			require.Equal(t, tt.want, b.fired(t, r, ev.PK))
			require.Zero(t, b.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception'`))
		})
	}
}

// TestEngineUnknownDeviceLogin runs the unknown-device example of DESIGN.md §7
// end to end through the engine.
func TestEngineUnknownDeviceLogin(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	r := b.alertRule(t, "unknown-device-login-alert", binding{Policy: b.policy(t, "unknown-device-login", `const event = request.context.event;
if (!event || event.action !== "login") return false;
return (event.context.auth_method_args || {}).known_device === false;`)})
	b.reload(t)

	unknown := userEvent(t, "login", jane, map[string]any{"auth_method": "password", "auth_method_args": map[string]any{"known_device": false}})
	known := userEvent(t, "login", jane, map[string]any{"auth_method": "password", "auth_method_args": map[string]any{"known_device": true}})
	noArgs := userEvent(t, "login", jane, map[string]any{"auth_method": "password"})
	b.handle(t, unknown, known, noArgs)

	require.Equal(t, []string{"jane"}, b.notified(t, r, unknown.PK))
	require.Empty(t, b.notified(t, r, known.PK))
	require.Empty(t, b.notified(t, r, noArgs.PK))
}

// ---------------------------------------------------------------------------
// Robustness: what Decode accepts can be stored, and no policy can crash the
// worker.

// TestEngineStoresEveryDecodedEvent: a payload that events.Decode accepts
// must be storable, or it fails every batch it is in and is retried until
// it is dead-lettered with a database error; one that can never be stored
// must be rejected by Decode with a *DecodeError (dead-lettered at once).
func TestEngineStoresEveryDecodedEvent(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		payload string // %s is the pk
	}{
		{name: "Plain", payload: `{"pk": "%s", "action": "login", "app": "authentik.events.signals"}`},
		{name: "IPv4MappedIPv6", payload: `{"pk": "%s", "action": "login", "client_ip": "::ffff:192.0.2.1"}`},
		{name: "NULInContextKeyAndValue", payload: `{"pk": "%s", "action": "login", "context": {"a\u0000": "b\u0000c"}}`},
		{name: "NULInAction", payload: `{"pk": "%s", "action": "login\u0000"}`},
		{name: "NULInApp", payload: `{"pk": "%s", "action": "login", "app": "authentik\u0000"}`},
		{name: "IPv6WithZone", payload: `{"pk": "%s", "action": "login", "client_ip": "fe80::1%%eth0"}`},
		{name: "CreatedOffsetBeyondPostgres", payload: `{"pk": "%s", "action": "login", "created": "2026-04-20T10:15:30+20:00"}`},
		{name: "NULInUnknownKey", payload: `{"pk": "%s", "action": "login", "expires": "2027\u0000"}`},
		{name: "InvalidUTF8InUnknownKey", payload: "{\"pk\": \"%s\", \"action\": \"login\", \"note\": \"\xff\"}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			b.reload(t)

			ev, err := events.Decode([]byte(fmt.Sprintf(tt.payload, newPK(t))))
			if err != nil {
				var derr *events.DecodeError
				require.ErrorAs(t, err, &derr)
				return
			}
			require.NoError(t, b.engine.HandleEvents(t.Context(), []events.Event{ev}),
				"Decode accepted the payload but the engine cannot store it")
			require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE id = $1`, ev.PK))
		})
	}
}

// inChildProcess runs body in a child process (this test binary re-run
// with only the current top-level test), so that a fatal error, such as a
// Go stack overflow, fails this test instead of killing the test binary.
// The parent makes the schema (and drops it even when the child crashes);
// the child builds its bundle on it.
func inChildProcess(t *testing.T, body func(t *testing.T, b *testBundle)) {
	t.Helper()
	const childEnv, urlEnv = "HERALD_TEST_CHILD", "HERALD_TEST_CHILD_DATABASE_URL"
	if os.Getenv(childEnv) == t.Name() {
		debug.SetMaxStack(64 << 20) // crash sooner than at the default 1 GB
		url := os.Getenv(urlEnv)
		db, err := sqlx.Open("postgres", url)
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		body(t, setupOn(t, &testinfra.DB{DB: db, URL: url}))
		return
	}
	db := testinfra.Postgres(t)
	testinfra.RunInChild(t, childEnv+"="+t.Name(), urlEnv+"="+db.URL)
}

// A policy with execution_logging returns a cyclic object (returning
// globalThis does the same). The engine must record the execution and go
// on, not take the worker down; a crash would repeat on every redelivery.
func TestEngineCyclicPolicyResultDoesNotCrash(t *testing.T) {
	t.Parallel()
	inChildProcess(t, func(t *testing.T, b *testBundle) {
		jane := b.user(t, "jane")
		r := b.alertRule(t, "cyclic", binding{Policy: b.loggedPolicy(t, "cyclic", "const o = {name: \"loop\"};\no.self = o;\nreturn o;")})
		b.reload(t)

		ev := userEvent(t, "login", jane, nil)
		b.handle(t, ev)
		require.True(t, b.fired(t, r, ev.PK), "an object is truthy")
		require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE action = 'policy_execution'`))
	})
}
