package rules_test

// Tests of the JavaScript policy API (DESIGN.md §6) against PostgreSQL,
// driven through the real engine and runtime: each policy runs for a stored
// event inside the event's transaction, and its effects are read back from
// the database. The bundle and its helpers are those of engine_test.go.

import (
	"encoding/json"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
)

// apiSetup is setup with the engine evaluating on the runtime pool itself,
// as the worker does, not through the recording wrapper (which hides the
// pool's optional interfaces, such as rules.Binder, from the engine).
func apiSetup(t *testing.T) *testBundle {
	t.Helper()
	b := setup(t)
	logger := testLogger(t)
	b.engine = rules.NewEngine(b.db.DB, b.cache, jsrt.New(jsrt.Config{Logger: logger}), rules.EngineConfig{Logger: logger})
	return b
}

// outcome is what one policy did for one event, as recorded in the events
// that the engine creates: policy_execution (execution_logging is on for
// probes) or policy_exception.
type outcome struct {
	Ran       bool // a policy_execution event exists: the policy returned
	Passing   bool
	Raw       any // result.raw_result, decoded from JSON
	Messages  []any
	Logs      []any
	Exception string // context.exception of the policy_exception event
}

// probes inserts one policy with execution_logging per entry of exprs
// (named by its key) and binds them all to one rule without transports, so
// each runs for every event, in the order of their names, and records what
// it returned or threw.
func (b *testBundle) probes(t *testing.T, exprs map[string]string) {
	t.Helper()
	r := b.rule(t, rule{Name: "probes"})
	order := 0
	for _, name := range slices.Sorted(maps.Keys(exprs)) {
		b.bind(t, r, binding{Policy: b.loggedPolicy(t, name, exprs[name]), Order: order})
		order++
	}
	b.reload(t)
}

// probe is probes with a single policy.
func (b *testBundle) probe(t *testing.T, name, expr string) {
	t.Helper()
	b.probes(t, map[string]string{name: expr})
}

// outcomes returns what each policy did for the event pk, by policy name.
func (b *testBundle) outcomes(t *testing.T, pk string) map[string]outcome {
	t.Helper()
	var rows []struct {
		Action  string `db:"action"`
		Context string `db:"context"`
	}
	require.NoError(t, b.db.SelectContext(t.Context(), &rows, `SELECT action, context::text AS context FROM events
WHERE action IN ('policy_execution', 'policy_exception') AND context->'caused_by'->>'event' = $1`, pk))
	out := map[string]outcome{}
	for _, r := range rows {
		var c map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.Context), &c))
		name, _ := path(t, c, "policy", "name").(string)
		o := out[name]
		if r.Action == "policy_execution" {
			o.Ran = true
			o.Passing = path(t, c, "result", "passing") == true
			o.Raw = path(t, c, "result", "raw_result")
			o.Messages, _ = path(t, c, "result", "messages").([]any)
			o.Logs, _ = c["logs"].([]any)
		} else {
			o.Exception, _ = c["exception"].(string)
		}
		out[name] = o
	}
	return out
}

// result returns the outcome of the policy name for event pk and requires
// that it returned without throwing.
func (b *testBundle) result(t *testing.T, pk, name string) outcome {
	t.Helper()
	o := b.outcomes(t, pk)[name]
	require.Empty(t, o.Exception, "policy %q threw", name)
	require.True(t, o.Ran, "policy %q has no policy_execution event for %s", name, pk)
	return o
}

// thrown returns the exception message of the policy name for event pk and
// requires that it threw.
func (b *testBundle) thrown(t *testing.T, pk, name string) string {
	t.Helper()
	o := b.outcomes(t, pk)[name]
	require.False(t, o.Ran, "policy %q returned (raw result %v) instead of throwing", name, o.Raw)
	require.NotEmpty(t, o.Exception, "policy %q has no policy_exception event for %s", name, pk)
	return o.Exception
}

// requireJSON compares got, as JSON, with the JSON text want.
func requireJSON(t *testing.T, want string, got any, msgAndArgs ...any) {
	t.Helper()
	b, err := json.Marshal(got)
	require.NoError(t, err)
	require.JSONEq(t, want, string(b), msgAndArgs...)
}

// login handles a login event of user (0: anonymous) and returns it.
func (b *testBundle) login(t *testing.T, user int64) events.Event {
	t.Helper()
	ev := userEvent(t, "login", user, nil)
	b.handle(t, ev)
	return ev
}

// jsonColumn reads one jsonb value, decoded.
func (b *testBundle) jsonColumn(t *testing.T, query string, args ...any) any {
	t.Helper()
	var raw string
	require.NoError(t, b.db.GetContext(t.Context(), &raw, query, args...), "query: %s", query)
	var v any
	require.NoError(t, json.Unmarshal([]byte(raw), &v))
	return v
}

// ---------------------------------------------------------------------------
// X.objects: filter, first, exists, count, all, get.

func TestAPIModelQueries(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	alice, bob, carol := b.user(t, "alice"), b.user(t, "bob"), b.user(t, "carol")
	b.db.MustExec(t, `UPDATE users SET is_active = false WHERE id = $1`, bob)
	b.db.MustExec(t, `UPDATE users SET name = 'Alice A.', attributes = '{"team": "blue", "tags": ["t1"]}' WHERE id = $1`, alice)
	ops := b.group(t, "ops", "", alice, bob)
	dev := b.group(t, "dev", "")
	b.group(t, "qa", "")
	grafana := b.insert(t, `INSERT INTO applications (slug, name) VALUES ('grafana', 'Grafana') RETURNING id`)
	b.insert(t, `INSERT INTO applications (slug, name) VALUES ('wiki', 'Wiki') RETURNING id`)
	b.insert(t, `INSERT INTO policy_bindings (target_application_id, group_id) VALUES ($1, $2) RETURNING id`, grafana, ops)
	for range 2 {
		b.handle(t, userEvent(t, "login", jane, nil)) // earlier events, before the probes exist
	}
	b.handle(t, userEvent(t, "logout", jane, nil))

	b.probes(t, map[string]string{
		"first": fmt.Sprintf(`const u = User.objects.filter({username: "alice"}).first();
return {pk: u.pk, id: u.id, username: u.username, name: u.name, email: u.email, is_active: u.is_active,
        team: u.attributes.team, tags: u.attributes.tags, is_same: u.pk === %d};`, alice),
		"first-none": `return User.objects.filter({username: "nobody"}).first() === null;`,
		"exists": `return {bob: User.objects.filter({username: "bob"}).exists(),
        nobody: User.objects.filter({username: "nobody"}).exists()};`,
		"count": `return {all: User.objects.filter({}).count(), active: User.objects.filter({is_active: true}).count(),
        chained: User.objects.filter({is_active: true}).filter({username__startswith: "a"}).count(),
        inactive: User.objects.filter({is_active: false}).count()};`,
		"all":       fmt.Sprintf(`return User.objects.filter({pk__in: [%d, %d, 999999]}).all().map(u => u.username);`, carol, alice),
		"pk":        fmt.Sprintf(`return User.objects.filter({pk: %d}).first().username;`, bob),
		"get":       `const u = User.objects.get({username: "carol"}); return u.username + "/" + u.email;`,
		"get-by-pk": fmt.Sprintf(`return User.objects.get({pk: %d}).username;`, alice),
		"get-none":  `return User.objects.get({username: "nobody"});`,
		"get-many":  `return User.objects.get({is_active: true});`,
		"group": fmt.Sprintf(`const g = Group.objects.filter({name: "ops"}).first();
return {pk: g.pk, name: g.name, parent: g.parent, attributes: g.attributes, same: g.pk === %q};`, ops),
		"group-pk":    fmt.Sprintf(`return Group.objects.filter({pk: %q}).first().name;`, strings.ReplaceAll(dev, "-", "")),
		"group-pk-in": fmt.Sprintf(`return Group.objects.filter({pk__in: [%q, %q]}).all().map(g => g.name).sort();`, ops, dev),
		"application": `const a = Application.objects.filter({slug: "grafana"}).first(); return a.name + "/" + a.slug;`,
		"detached-method": `const {filter} = User.objects;
const first = filter({username: "bob"}).first;
const qs = User.objects.filter({is_active: true}); qs.note = "kept"; delete qs.missing;
return {first: first().username, each: [{username: "bob"}, {username: "nobody"}].map(User.objects.filter).map(q => String(q.exists())),
        note: qs.note, props: Object.keys(qs).join(",")};`,
		"object-fields": `const [a, b] = User.objects.filter({is_active: true}).all();
a.extra_a = 1; b.extra_b = 2; delete b.name;
return [Object.keys(a).join(","), Object.keys(b).join(","), typeof a.save];`,
		"binding-target": `return {
  grafana: PolicyBinding.objects.filter({target: Application.objects.get({slug: "grafana"})}).exists(),
  wiki: PolicyBinding.objects.filter({target: Application.objects.get({slug: "wiki"})}).exists(),
  grafana_count: PolicyBinding.objects.filter({target: Application.objects.get({slug: "grafana"})}).count(),
};`,
		"event": `const ev = request.context.event;
return {logins: Event.objects.filter({action: "login"}).count(),
        logouts: Event.objects.filter({action: "logout"}).count(),
        self: Event.objects.filter({pk: ev.pk}).first().action,
        self_get: Event.objects.get({pk: ev.pk}).pk === ev.pk};`,
	})

	ev := b.login(t, jane)

	first := b.result(t, ev.PK, "first")
	requireJSON(t, fmt.Sprintf(`{"pk": %d, "id": %d, "username": "alice", "name": "Alice A.", "email": "alice@example.com",
		"is_active": true, "team": "blue", "tags": ["t1"], "is_same": true}`, alice, alice), first.Raw)
	require.True(t, b.result(t, ev.PK, "first-none").Passing)
	requireJSON(t, `{"bob": true, "nobody": false}`, b.result(t, ev.PK, "exists").Raw)
	requireJSON(t, `{"all": 4, "active": 3, "chained": 1, "inactive": 1}`, b.result(t, ev.PK, "count").Raw)
	requireJSON(t, `["alice", "carol"]`, b.result(t, ev.PK, "all").Raw, "ordered by pk, unknown pks ignored")
	require.Equal(t, "bob", b.result(t, ev.PK, "pk").Raw)
	require.Equal(t, "carol/carol@example.com", b.result(t, ev.PK, "get").Raw)
	require.Equal(t, "alice", b.result(t, ev.PK, "get-by-pk").Raw)
	require.Contains(t, b.thrown(t, ev.PK, "get-none"), "User matching query does not exist")
	require.Contains(t, b.thrown(t, ev.PK, "get-many"), "more than one User")
	requireJSON(t, fmt.Sprintf(`{"pk": %q, "name": "ops", "parent": null, "attributes": {}, "same": true}`, ops), b.result(t, ev.PK, "group").Raw)
	require.Equal(t, "dev", b.result(t, ev.PK, "group-pk").Raw, "a dashless UUID is accepted")
	requireJSON(t, `["dev", "ops"]`, b.result(t, ev.PK, "group-pk-in").Raw)
	require.Equal(t, "Grafana/grafana", b.result(t, ev.PK, "application").Raw)
	requireJSON(t, `{"first": "bob", "each": ["true", "false"], "note": "kept", "props": "filter,first,all,get,count,exists,note"}`,
		b.result(t, ev.PK, "detached-method").Raw, "query set methods work detached; query sets take properties")
	requireJSON(t, `["pk,id,uuid,username,name,email,is_active,is_superuser,attributes,last_login,created,updated,extra_a",
		"pk,id,uuid,username,email,is_active,is_superuser,attributes,last_login,created,updated,extra_b", "function"]`, b.result(t, ev.PK, "object-fields").Raw,
		"fields in column order; each object's own properties")
	requireJSON(t, `{"grafana": true, "wiki": false, "grafana_count": 1}`, b.result(t, ev.PK, "binding-target").Raw)
	// The event being evaluated is stored before the policies run.
	requireJSON(t, `{"logins": 3, "logouts": 1, "self": "login", "self_get": true}`, b.result(t, ev.PK, "event").Raw)
}

// A PolicyBinding's target matches bindings of a rule as well as of an
// application, and bindings of other targets do not count.
func TestAPIPolicyBindingTargetRule(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	other := b.rule(t, rule{Name: "other"})
	b.bind(t, other, binding{Policy: b.policy(t, "p1", "return false;"), Order: 1})
	b.bind(t, other, binding{Policy: b.policy(t, "p2", "return false;"), Order: 2})
	b.probe(t, "rule-bindings", fmt.Sprintf(`return {
  other: PolicyBinding.objects.filter({target: %q}).count(),
  other_obj: PolicyBinding.objects.filter({target: {pk: %q}}).count(),
  ordered: PolicyBinding.objects.filter({target: %q, order: 2}).count(),
  enabled: PolicyBinding.objects.filter({target: %q, enabled: true}).all().length,
};`, other, other, other, other))

	ev := b.login(t, jane)
	requireJSON(t, `{"other": 2, "other_obj": 2, "ordered": 1, "enabled": 2}`, b.result(t, ev.PK, "rule-bindings").Raw)
}

// A filter on a field that does not exist, a lookup on a JSON field, or a
// value of the wrong type throws an error that names the field.
func TestAPIModelFilterErrors(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.probes(t, map[string]string{
		"unknown-field":      `return User.objects.filter({nope: 1}).first();`,
		"unknown-in-count":   `return Group.objects.filter({colour: "red"}).count();`,
		"unknown-in-get":     `return Application.objects.get({title: "x"});`,
		"json-field":         `return User.objects.filter({attributes: {}}).exists();`,
		"bad-uuid":           `return Group.objects.filter({pk: "not-a-uuid"}).first();`,
		"bad-bigint":         `return User.objects.filter({pk: "twelve"}).first();`,
		"bad-bool":           `return User.objects.filter({is_active: "yes"}).count();`,
		"bad-in":             `return User.objects.filter({pk__in: 12}).all();`,
		"bad-in-item":        `return Group.objects.filter({pk__in: ["not-a-uuid"]}).all();`,
		"not-an-object":      `return User.objects.filter("username").first();`,
		"bad-binding-target": `return PolicyBinding.objects.filter({target: "nope"}).exists();`,
	})

	ev := b.login(t, jane)
	for name, want := range map[string][]string{
		"unknown-field":      {`unknown field "nope"`, "User"},
		"unknown-in-count":   {`unknown field "colour"`, "Group"},
		"unknown-in-get":     {`unknown field "title"`, "Application"},
		"json-field":         {`"attributes"`},
		"bad-uuid":           {"pk", "not-a-uuid"},
		"bad-bigint":         {"pk", "twelve"},
		"bad-bool":           {"is_active", "yes"},
		"bad-in":             {"pk__in"},
		"bad-in-item":        {"pk__in", "not-a-uuid"},
		"not-an-object":      {"filter"},
		"bad-binding-target": {"target", "nope"},
	} {
		msg := b.thrown(t, ev.PK, name)
		for _, w := range want {
			require.Contains(t, msg, w, "policy %s", name)
		}
	}
}

// A policy whose query fails, by validation or in PostgreSQL, fails alone:
// the event's transaction goes on and the other rules still notify.
func TestAPIFailedQueryDoesNotAbortTheEvent(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	// Rules run in name order: the failing ones come first.
	b.alertRule(t, "a-bad-value", binding{Policy: b.policy(t, "bad-value", `return Group.objects.filter({pk: "not-a-uuid"}).exists();`)})
	// Valid for the validation (an integer) but out of range for the
	// integer column: PostgreSQL itself rejects it.
	b.alertRule(t, "a-sql-error", binding{Policy: b.policy(t, "sql-error", `return PolicyBinding.objects.filter({order: 1000000000000}).exists();`)})
	good := b.alertRule(t, "b-good", binding{Policy: b.policy(t, "good", `return User.objects.filter({username: "jane"}).exists();`)})
	b.reload(t)

	ev := b.login(t, jane)
	require.Equal(t, []string{"jane"}, b.notified(t, good, ev.PK))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM notifications`))
	excs := map[string]string{}
	for _, c := range b.createdEvents(t, "policy_exception") {
		excs[path(t, c, "policy", "name").(string)] = c["exception"].(string)
	}
	require.Contains(t, excs["bad-value"], "not-a-uuid")
	require.Contains(t, excs, "sql-error")
}

// A policy may catch the error of a failed query and go on. A query that
// PostgreSQL rejected has aborted the transaction, though: the policy must
// still not take the whole event down with it (it would be retried and end
// as a dead letter), and the other rules must still notify.
func TestAPICaughtSQLErrorDoesNotPoisonTheEvent(t *testing.T) {
	t.Parallel()

	// Each statement makes PostgreSQL reject a write or a query; NUL
	// characters cannot be stored in text columns nor in jsonb.
	for name, statement := range map[string]string{
		"Query":            `PolicyBinding.objects.filter({order: 1000000000000}).exists();`,
		"Save":             `const u = User.objects.get({username: "jane"}); u.name = "a\u0000b"; u.save({update_fields: ["name"]});`,
		"Authenticator":    `ak_user_has_authenticator(request.user, "to\u0000tp");`,
		"CreateEventNUL":   `ak_create_event("a\u0000b");`,
		"SendEmailSubject": `ak_send_email("x@example.com", "a\u0000b", {body: "b"});`,
		"SendEmailTo":      `ak_send_email("x\u0000@example.com", "s", {body: "b"});`,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := apiSetup(t)
			jane := b.user(t, "jane")
			b.alertRule(t, "a-catches", binding{Policy: b.policy(t, "catches", `try {
  `+statement+`
} catch (e) {
  ak_logger.warning("failed", {error: String(e)});
}
return false;`)})
			good := b.alertRule(t, "b-good", binding{Policy: b.policy(t, "good", `return User.objects.filter({username: "jane"}).exists();`)})
			b.reload(t)

			ev := userEvent(t, "login", jane, nil)
			require.NoError(t, b.engine.HandleEvents(t.Context(), []events.Event{ev}),
				"a policy that caught a database error made the event fail")
			require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE id = $1`, ev.PK))
			require.Equal(t, []string{"jane"}, b.notified(t, good, ev.PK))
			require.Equal(t, 1, b.count(t, `SELECT count(*) FROM users WHERE name = ''`), "nothing of the failed write is left")
		})
	}
}

// ---------------------------------------------------------------------------
// obj.save({update_fields}).

func TestAPISave(t *testing.T) {
	t.Parallel()

	type saveCase struct {
		name string
		expr string // %d is alice's pk
		// want are SQL expressions over alice's users row and their values.
		want      map[string]string
		exception string // "" when the policy must not throw
	}
	cases := []saveCase{
		{name: "UpdateFieldsAttributes", expr: `const u = User.objects.get({pk: %d});
u.attributes.team = "red";
u.attributes.keys = [];
u.name = "not saved";
u.save({update_fields: ["attributes"]});
return true;`,
			want: map[string]string{"attributes::text": `{"keys": [], "team": "red"}`, "name": "Alice"}},
		{name: "AllWritableFields", expr: `const u = User.objects.get({pk: %d});
u.name = "Alice B.";
u.is_active = false;
u.save();
return true;`,
			want: map[string]string{"name": "Alice B.", "is_active::text": "false", "attributes::text": `{"team": "blue"}`}},
		{name: "SetsUpdated", expr: `const u = User.objects.get({pk: %d}); u.save({update_fields: ["name"]}); return true;`,
			want: map[string]string{"(updated > created)::text": "true"}},
		{name: "UnknownField", expr: `const u = User.objects.get({pk: %d});
u.name = "x";
u.save({update_fields: ["name", "nickname"]});
return true;`,
			exception: `unknown field "nickname"`, want: map[string]string{"name": "Alice"}},
		{name: "ReadOnlyField", expr: `const u = User.objects.get({pk: %d}); u.created = "2020-01-01T00:00:00Z"; u.save({update_fields: ["created"]}); return true;`,
			exception: `"created" cannot be written`},
		{name: "WrongType", expr: `const u = User.objects.get({pk: %d}); u.is_active = "no"; u.save({update_fields: ["is_active"]}); return true;`,
			exception: "is_active", want: map[string]string{"is_active::text": "true"}},
		{name: "AttributesNotAnObject", expr: `const u = User.objects.get({pk: %d}); u.attributes = [1]; u.save({update_fields: ["attributes"]}); return true;`,
			exception: "attributes", want: map[string]string{"attributes::text": `{"team": "blue"}`}},
		{name: "FunctionInAttributes", expr: `const u = User.objects.get({pk: %d}); u.attributes.cb = () => 1; u.save({update_fields: ["attributes"]}); return true;`,
			exception: "TypeError: User.save: attributes.cb is a function", want: map[string]string{"attributes::text": `{"team": "blue"}`}},
		{name: "BigIntInAttributes", expr: `const u = User.objects.get({pk: %d}); u.attributes.n = [1, 2n]; u.save({update_fields: ["attributes"]}); return true;`,
			exception: "TypeError: User.save: attributes.n[1] is a BigInt", want: map[string]string{"attributes::text": `{"team": "blue"}`}},
		{name: "CycleInAttributes", expr: `const u = User.objects.get({pk: %d}); u.attributes.self = u.attributes; u.save({update_fields: ["attributes"]}); return true;`,
			exception: "TypeError: User.save: attributes.self contains itself", want: map[string]string{"attributes::text": `{"team": "blue"}`}},
		{name: "SymbolName", expr: `const u = User.objects.get({pk: %d}); u.name = Symbol("x"); u.save({update_fields: ["name"]}); return true;`,
			exception: "TypeError: User.save: name is a Symbol", want: map[string]string{"name": "Alice"}},
		{name: "ThrowAfterSave", expr: `const u = User.objects.get({pk: %d});
u.attributes.team = "red";
u.name = "changed";
u.save();
throw new Error("after save");`,
			exception: "after save", want: map[string]string{"attributes::text": `{"team": "blue"}`, "name": "Alice"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := apiSetup(t)
			jane := b.user(t, "jane")
			alice := b.user(t, "alice")
			b.db.MustExec(t, `UPDATE users SET name = 'Alice', attributes = '{"team": "blue"}', created = now() - interval '1 day', updated = now() - interval '1 day' WHERE id = $1`, alice)
			b.probe(t, "saver", fmt.Sprintf(tc.expr, alice))

			ev := b.login(t, jane)
			if tc.exception == "" {
				require.True(t, b.result(t, ev.PK, "saver").Passing)
			} else {
				require.Contains(t, b.thrown(t, ev.PK, "saver"), tc.exception)
			}
			for expr, want := range tc.want {
				var got string
				require.NoError(t, b.db.GetContext(t.Context(), &got, `SELECT `+expr+` FROM users WHERE id = $1`, alice))
				if strings.HasPrefix(want, "{") {
					require.JSONEq(t, want, got, expr)
				} else {
					require.Equal(t, want, got, expr)
				}
			}
		})
	}
}

// Groups and applications save too, and a failed policy's writes are undone
// without undoing those of the policies around it.
func TestAPISaveGroupsApplicationsAndRollback(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	ops := b.group(t, "ops", "")
	parent := b.group(t, "staff", "")
	app := b.insert(t, `INSERT INTO applications (slug, name) VALUES ('grafana', 'Grafana') RETURNING id`)
	rl := b.rule(t, rule{Name: "savers"})
	b.bind(t, rl, binding{Order: 1, Policy: b.policy(t, "a-group", fmt.Sprintf(`const g = Group.objects.get({pk: %q});
g.attributes.seen = (g.attributes.seen || 0) + 1;
g.parent = %q;
g.save({update_fields: ["attributes", "parent"]});
return false;`, ops, parent))})
	b.bind(t, rl, binding{Order: 2, Policy: b.policy(t, "b-throws", fmt.Sprintf(`const g = Group.objects.get({pk: %q});
g.attributes.lost = true;
g.save({update_fields: ["attributes"]});
const a = Application.objects.get({slug: "grafana"});
a.name = "lost";
a.save({update_fields: ["name"]});
throw new Error("undo my writes");`, ops))})
	b.bind(t, rl, binding{Order: 3, Policy: b.policy(t, "c-application", `const a = Application.objects.get({slug: "grafana"});
a.attributes.owner = "ops";
a.save({update_fields: ["attributes"]});
return false;`)})
	b.reload(t)

	b.login(t, jane)
	requireJSON(t, `{"seen": 1}`, b.jsonColumn(t, `SELECT attributes::text FROM groups WHERE id = $1`, ops))
	var gotParent string
	require.NoError(t, b.db.GetContext(t.Context(), &gotParent, `SELECT parent_id FROM groups WHERE id = $1`, ops))
	require.Equal(t, parent, gotParent)
	requireJSON(t, `{"owner": "ops"}`, b.jsonColumn(t, `SELECT attributes::text FROM applications WHERE id = $1`, app))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM applications WHERE id = $1 AND name = 'Grafana'`, app))
	require.Len(t, b.createdEvents(t, "policy_exception"), 1)

	// A second event sees the first one's committed writes.
	b.login(t, jane)
	requireJSON(t, `{"seen": 2}`, b.jsonColumn(t, `SELECT attributes::text FROM groups WHERE id = $1`, ops))
}

// Saving the same object twice in one policy (e.g. inside a loop) keeps
// both changes; it is not a conflict with another transaction.
func TestAPISaveSameObjectTwice(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	ops := b.group(t, "ops", "")
	alice := b.user(t, "alice")
	b.probe(t, "twice", fmt.Sprintf(`const g = Group.objects.get({pk: %q});
g.attributes.a = 1;
g.save({update_fields: ["attributes"]});
g.attributes.b = 2;
g.save({update_fields: ["attributes"]});
const u = User.objects.filter({pk__in: [%d]}).all()[0];
u.attributes.x = 1;
u.save({update_fields: ["attributes"]});
u.name = "Alice";
u.save({update_fields: ["name"]});
return true;`, ops, alice))

	ev := userEvent(t, "login", jane, nil)
	require.NoError(t, b.engine.HandleEvents(t.Context(), []events.Event{ev}))
	require.True(t, b.result(t, ev.PK, "twice").Passing)
	requireJSON(t, `{"a": 1, "b": 2}`, b.jsonColumn(t, `SELECT attributes::text FROM groups WHERE id = $1`, ops))
	requireJSON(t, `{"x": 1}`, b.jsonColumn(t, `SELECT attributes::text FROM users WHERE id = $1`, alice))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM users WHERE id = $1 AND name = 'Alice'`, alice))
}

// ---------------------------------------------------------------------------
// ak_user_by, ak_is_group_member, ak_user_has_authenticator.

func TestAPIAkUserBy(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	alice := b.user(t, "alice")
	b.probes(t, map[string]string{
		"by-username": `const u = ak_user_by({username: "alice"}); return {pk: u.pk, email: u.email, attrs: u.attributes};`,
		"by-pk":       fmt.Sprintf(`return ak_user_by({pk: %d}).username;`, alice),
		"by-lookup":   `return ak_user_by({email__icontains: "ALICE@"}).username;`,
		"none":        `return ak_user_by({username: "nobody"}) === null;`,
		// authentik returns None for a field that does not exist.
		"unknown-field": `return ak_user_by({nope: "x"}) === null;`,
		"lookups": `return [ak_user_by({username__exact: "alice"}), ak_user_by({email__endswith: "ce@example.com"}),
  ak_user_by({username__istartswith: "ALI"}), ak_user_by({username__iendswith: "ICE"})].map((u) => u && u.username);`,
		"unsupported-lookup": `return ak_user_by({username__regex: "^a"});`,
		"bad-value":          `return ak_user_by({is_superuser: "maybe"});`,
		"z-save":             `const u = ak_user_by({username: "alice"}); u.attributes.via = "ak_user_by"; u.save({update_fields: ["attributes"]}); return true;`,
	})

	ev := b.login(t, jane)
	requireJSON(t, fmt.Sprintf(`{"pk": %d, "email": "alice@example.com", "attrs": {}}`, alice), b.result(t, ev.PK, "by-username").Raw)
	require.Equal(t, "alice", b.result(t, ev.PK, "by-pk").Raw)
	require.Equal(t, "alice", b.result(t, ev.PK, "by-lookup").Raw)
	require.True(t, b.result(t, ev.PK, "none").Passing)
	require.True(t, b.result(t, ev.PK, "unknown-field").Passing)
	requireJSON(t, `["alice", "alice", "alice", "alice"]`, b.result(t, ev.PK, "lookups").Raw)
	require.Contains(t, b.thrown(t, ev.PK, "unsupported-lookup"), "the lookup __regex is not supported")
	require.NotEmpty(t, b.thrown(t, ev.PK, "bad-value"), "only an unknown field gives null, as authentik's FieldError")
	require.True(t, b.result(t, ev.PK, "z-save").Passing)
	requireJSON(t, `{"via": "ak_user_by"}`, b.jsonColumn(t, `SELECT attributes::text FROM users WHERE id = $1`, alice))
}

// all() throws when more objects match than it returns, instead of
// cutting the list short.
func TestAPIAllThrowsPastItsCap(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.db.MustExec(t, `INSERT INTO users (username) SELECT 'bulk' || i FROM generate_series(1, 10000) i`)
	b.probes(t, map[string]string{
		"too-many": `return User.objects.all().length;`,
		"narrowed": `return [User.objects.filter({username__startswith: "bulk"}).count(), User.objects.filter({username__startswith: "bulk1"}).all().length];`,
	})
	ev := b.login(t, jane)
	require.Contains(t, b.thrown(t, ev.PK, "too-many"), "more than 10000 objects match")
	requireJSON(t, `[10000, 1112]`, b.result(t, ev.PK, "narrowed").Raw)
}

func TestAPIAkIsGroupMember(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane, bob := b.user(t, "jane"), b.user(t, "bob")
	carol := b.user(t, "carol")
	// company > staff > ops; jane is in ops, carol in staff only.
	company := b.group(t, "company", "")
	staff := b.group(t, "staff", company, carol)
	b.group(t, "ops", staff, jane)
	unrelated := b.group(t, "unrelated", "", bob)
	b.probe(t, "membership", fmt.Sprintf(`const me = request.user;
const evUser = request.context.event.user;
const carol = User.objects.get({pk: %d});
return {
  direct: ak_is_group_member(me, {name: "ops"}),
  parent: ak_is_group_member(me, {name: "staff"}),
  grandparent: ak_is_group_member(me, {name: "company"}),
  unrelated: ak_is_group_member(me, {name: "unrelated"}),
  missing: ak_is_group_member(me, {name: "nope"}),
  lookup: ak_is_group_member(me, {name__startswith: "comp"}),
  by_pk: ak_is_group_member(me, {pk: %q}),
  event_user_dict: ak_is_group_member(evUser, {name: "company"}),
  any_group: ak_is_group_member(me),
  child_not_counted: ak_is_group_member(carol, {name: "ops"}),
  carol_staff: ak_is_group_member(carol, {name: "staff"}),
  no_groups: ak_is_group_member(ak_user_by({username: "nobody"}), {name: "ops"}),
  pk_in_other: ak_is_group_member(me, {pk__in: [%q]}),
  pk_in_mine: ak_is_group_member(me, {pk__in: [%q, %q]}),
};`, carol, company, unrelated, unrelated, staff))
	b.probe2(t, "anonymous", `return ak_is_group_member(request.user, {name: "ops"});`)
	b.probe2(t, "bad-filter", `return ak_is_group_member(request.user, {colour: "red"});`)

	ev := b.login(t, jane)
	requireJSON(t, `{"direct": true, "parent": true, "grandparent": true, "unrelated": false, "missing": false,
		"lookup": true, "by_pk": true, "event_user_dict": true, "any_group": true,
		"child_not_counted": false, "carol_staff": true, "no_groups": false,
		"pk_in_other": false, "pk_in_mine": true}`, b.result(t, ev.PK, "membership").Raw)
	require.Contains(t, b.thrown(t, ev.PK, "bad-filter"), `unknown field "colour"`)

	anon := b.login(t, 0)
	o := b.result(t, anon.PK, "anonymous")
	require.False(t, o.Passing)
	require.Equal(t, false, o.Raw)
}

// probe2 adds one more probe policy on a rule of its own (probes makes one
// rule per call, named "probes"; this one is named after the policy).
func (b *testBundle) probe2(t *testing.T, name, expr string) {
	t.Helper()
	r := b.rule(t, rule{Name: "probe-" + name})
	b.bind(t, r, binding{Policy: b.loggedPolicy(t, name, expr)})
	b.reload(t)
}

func TestAPIAkUserHasAuthenticator(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	bob, carol := b.user(t, "bob"), b.user(t, "carol")
	b.db.MustExec(t, `INSERT INTO authenticator_devices (user_id, kind, name, confirmed) VALUES
		($1, 'totp', 'phone', true), ($1, 'webauthn', 'key (unconfirmed)', false),
		($2, 'static', 'codes (unconfirmed)', false)`, jane, bob)
	b.probe(t, "authenticators", fmt.Sprintf(`const me = request.user;
const bob = User.objects.get({pk: %d});
const carol = User.objects.get({pk: %d});
return {
  any: ak_user_has_authenticator(me),
  totp: ak_user_has_authenticator(me, "totp"),
  web_unconfirmed: ak_user_has_authenticator(me, "webauthn"),
  duo: ak_user_has_authenticator(me, "duo"),
  event_user_dict: ak_user_has_authenticator(request.context.event.user, "totp"),
  bob_unconfirmed_only: ak_user_has_authenticator(bob),
  bob_static: ak_user_has_authenticator(bob, "static"),
  carol_none: ak_user_has_authenticator(carol),
};`, bob, carol))

	ev := b.login(t, jane)
	requireJSON(t, `{"any": true, "totp": true, "web_unconfirmed": false, "duo": false, "event_user_dict": true,
		"bob_unconfirmed_only": false, "bob_static": false, "carol_none": false}`, b.result(t, ev.PK, "authenticators").Raw)

	// The anonymous user has no authenticators.
	anon := b.login(t, 0)
	raw := b.result(t, anon.PK, "authenticators").Raw.(map[string]any)
	require.Equal(t, false, raw["any"])
	require.Equal(t, false, raw["event_user_dict"])
}

// A user object without a pk (an anonymous event's user is {}) is nobody:
// not a member of any group and without authenticators. Passing one must
// not crash the worker (it did: a nil pointer in jsrt.userPK).
func TestAPIUserWithoutPK(t *testing.T) {
	t.Parallel()
	inChildProcess(t, func(t *testing.T, b *testBundle) {
		jane := b.user(t, "jane")
		b.group(t, "ops", "", jane)
		b.probe(t, "no-pk", `return {
  member: ak_is_group_member({}, {name: "ops"}),
  member_event_user: ak_is_group_member(request.context.event.user, {name: "ops"}),
  devices: ak_user_has_authenticator({}),
  devices_kind: ak_user_has_authenticator(request.context.event.user, "totp"),
};`)

		ev := b.login(t, 0)
		requireJSON(t, `{"member": false, "member_event_user": false, "devices": false, "devices_kind": false}`,
			b.result(t, ev.PK, "no-pk").Raw)
	})
}

// ---------------------------------------------------------------------------
// ak_call_policy.

func TestAPIAkCallPolicy(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	// Callees bound to no rule.
	b.policy(t, "callee", `ak_message("from callee");
return {foo: request.context.foo, n: request.context.n, action: request.context.event.action,
        user: request.user.username, same_context: context === request.context};`)
	b.policy(t, "callee-fails", `ak_message("about to fail"); return false;`)
	b.policy(t, "callee-throws", `throw new Error("callee boom");`)
	b.policy(t, "callee-mutates", `request.context.foo = "changed by callee"; request.context.added = 1; return true;`)
	b.policy(t, "callee-sees", `return {mine: request.context.mine, foo: request.context.foo};`)
	b.matcher(t, "callee-matcher", matcher{Action: "login"})
	b.probes(t, map[string]string{
		"caller": `const r = ak_call_policy("callee", {foo: "bar", n: 2});
return {passing: r.passing, messages: r.messages, raw_result: r.raw_result};`,
		"caller-no-kwargs": `const r = ak_call_policy("callee"); return {passing: r.passing, foo: r.raw_result.foo == null ? "none" : r.raw_result.foo};`,
		"caller-context": `request.context.mine = "kept";
ak_call_policy("callee", {foo: "bar"});
ak_call_policy("callee-mutates", {foo: "bar"});
return {foo: request.context.foo === undefined, added: request.context.added === undefined,
        mine: request.context.mine, event: request.context.event.action, context_foo: context.foo === undefined};`,
		"caller-fails":   `const r = ak_call_policy("callee-fails"); return {passing: r.passing, messages: r.messages, raw_result: r.raw_result};`,
		"caller-throws":  `const r = ak_call_policy("callee-throws"); return {passing: r.passing, messages: r.messages};`,
		"caller-matcher": `return ak_call_policy("callee-matcher").passing;`,
		"caller-unknown": `return ak_call_policy("x");`,
		// Last by name: the probes share the request.
		"caller-with-live-context": `request.context.mine = "kept"; request.context.foo = "mine"; return ak_call_policy("callee-sees", {foo: "kwarg"}).raw_result;`,
	})

	ev := b.login(t, jane)
	requireJSON(t, `{"passing": true, "messages": ["from callee"],
		"raw_result": {"foo": "bar", "n": 2, "action": "login", "user": "jane", "same_context": true}}`, b.result(t, ev.PK, "caller").Raw)
	requireJSON(t, `{"passing": true, "foo": "none"}`, b.result(t, ev.PK, "caller-no-kwargs").Raw)
	requireJSON(t, `{"foo": true, "added": true, "mine": "kept", "event": "login", "context_foo": true}`,
		b.result(t, ev.PK, "caller-context").Raw, "the caller's request.context is not changed by the call")
	requireJSON(t, `{"passing": false, "messages": ["about to fail"], "raw_result": false}`, b.result(t, ev.PK, "caller-fails").Raw)
	require.True(t, b.result(t, ev.PK, "caller-matcher").Passing)
	require.Contains(t, b.thrown(t, ev.PK, "caller-unknown"), "Policy 'x' not found.")
	requireJSON(t, `{"mine": "kept", "foo": "kwarg"}`, b.result(t, ev.PK, "caller-with-live-context").Raw,
		"the callee sees what the caller added to request.context, with the kwargs over it")

	// A callee that throws: a false result carrying the error, and a
	// policy_exception event about the callee.
	throws := b.result(t, ev.PK, "caller-throws")
	raw, ok := throws.Raw.(map[string]any)
	require.True(t, ok, "raw result %v", throws.Raw)
	require.Equal(t, false, raw["passing"])
	require.Len(t, raw["messages"], 1)
	require.Contains(t, raw["messages"].([]any)[0], "callee boom")
	require.Contains(t, b.outcomes(t, ev.PK)["callee-throws"].Exception, "callee boom")
}

// A called policy with execution_logging records its own policy_execution
// event, as authentik's PolicyProcess does for the call's binding.
func TestAPIAkCallPolicyExecutionLogging(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.loggedPolicy(t, "logged-callee", `ak_message("callee ran"); return {foo: request.context.foo};`)
	b.policy(t, "quiet-callee", `return true;`)
	b.probes(t, map[string]string{
		"caller": `ak_call_policy("quiet-callee"); return ak_call_policy("logged-callee", {foo: "bar"}).passing;`,
		// It used the database before the call, so the call runs inside
		// its savepoint, which its failure rolls back.
		"caller-then-throws": `User.objects.filter({username: "jane"}).count(); ak_call_policy("logged-callee", {foo: "baz"}); throw new Error("after the call");`,
	})

	ev := b.login(t, jane)
	require.True(t, b.result(t, ev.PK, "caller").Passing)
	require.Contains(t, b.thrown(t, ev.PK, "caller-then-throws"), "after the call")
	require.NotContains(t, b.outcomes(t, ev.PK), "quiet-callee", "a callee without execution_logging records nothing")
	var results []string
	require.NoError(t, b.db.SelectContext(t.Context(), &results, `SELECT context->'result'::text FROM events
WHERE action = 'policy_execution' AND context->'policy'->>'name' = 'logged-callee' ORDER BY context->'result'->'raw_result'->>'foo'`))
	require.Len(t, results, 2, "the callee's event is kept when its caller fails afterwards, as authentik saves it at once")
	require.JSONEq(t, `{"passing": true, "messages": ["callee ran"], "raw_result": {"foo": "bar"}}`, results[0])
	require.JSONEq(t, `{"passing": true, "messages": ["callee ran"], "raw_result": {"foo": "baz"}}`, results[1])
}

// A conflict in a called policy's save makes the event run again, as one in
// a bound policy does, even when the caller catches the exception: the
// write is never lost.
func TestAPIAkCallPolicyConflictRunsTheEventAgain(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	// The save claims an updated value the row never had: it conflicts.
	b.loggedPolicy(t, "conflicting-callee", `const u = User.objects.filter({username: "jane"}).all()[0];
u.updated = "2000-01-01T00:00:00Z"; u.name = "changed"; u.save(); return true;`)
	b.probe(t, "caller", `try { ak_call_policy("conflicting-callee"); } catch (e) {} return true;`)

	ev := userEvent(t, "login", jane, nil)
	err := b.engine.HandleEvents(t.Context(), []events.Event{ev})
	require.ErrorIs(t, err, rules.ErrConflict)
	require.Equal(t, 0, b.count(t, `SELECT count(*) FROM events WHERE id = $1`, ev.PK), "nothing of the event is committed")
	require.Equal(t, 0, b.count(t, `SELECT count(*) FROM users WHERE name = 'changed'`))
}

// A policy that calls itself is stopped at a fixed depth instead of
// overflowing the Go stack.
func TestAPIAkCallPolicyRecursion(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.policy(t, "recurse", `const n = (request.context.n || 0) + 1;
return ak_call_policy("recurse", {n: n}).passing || n;`)
	b.probe(t, "recursion", `const r = ak_call_policy("recurse"); return {passing: r.passing, messages: r.messages};`)

	ev := b.login(t, jane)
	o := b.result(t, ev.PK, "recursion")
	require.Equal(t, true, path(t, o.Raw.(map[string]any), "passing"), "the innermost call fails, the outer ones return n")
	require.NotEmpty(t, b.outcomes(t, ev.PK)["recurse"].Exception, "the call that was too deep is recorded")
}

// ---------------------------------------------------------------------------
// ak_create_event and ak_send_email: written in the event's transaction and
// queued in the outbox.

// Model objects and addresses in ak_create_event's kwargs and in a
// policy's result are stored as authentik's sanitize_item gives them.
func TestAPIAkCreateEventShortForms(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	ops := b.group(t, "ops", "", jane)
	b.probe(t, "short", `const g = Group.objects.get({name: "ops"});
ak_create_event("refs", {me: request.user, again: User.objects.filter({username: "jane"}).first(), group: g,
  ip: ak_client_ip, net: ip_network("10.0.0.0/8"), list: [g], event: request.context.event});
return {me: request.user, group: g};`)

	ev := b.login(t, jane)
	created := b.createdEvents(t, "custom_refs")
	require.Len(t, created, 1)
	delete(created[0], "caused_by")
	require.Equal(t, map[string]any{"app": "authentik_events", "model_name": "event", "pk": strings.ReplaceAll(ev.PK, "-", ""),
		"name": "Event action=login"}, created[0]["event"])
	delete(created[0], "event")
	me := map[string]any{"username": "jane", "pk": float64(jane), "email": "jane@example.com"}
	group := map[string]any{"app": "authentik_core", "model_name": "group", "pk": strings.ReplaceAll(ops, "-", ""), "name": "ops"}
	ip := ev.ClientIP
	if ip == "" {
		ip = "255.255.255.255" // ak_client_ip without one, as authentik
	}
	require.Equal(t, map[string]any{"me": me, "again": me, "group": group, "ip": ip, "net": "10.0.0.0/8",
		"list": []any{group}}, created[0])
	require.Equal(t, map[string]any{"me": me, "group": group}, b.result(t, ev.PK, "short").Raw)

	anon := b.login(t, 0)
	require.Equal(t, map[string]any{"username": "AnonymousUser", "pk": nil, "email": "", "is_anonymous": true},
		b.result(t, anon.PK, "short").Raw.(map[string]any)["me"], "get_user's form of the anonymous user")
}

// A called policy's raw_result is the value it returned, a model object
// with all its fields, as in authentik.
func TestAPIAkCallPolicyRawResultIsTheValue(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.db.MustExec(t, `UPDATE users SET name = 'Jane J.' WHERE id = $1`, jane)
	b.policy(t, "finder", `return User.objects.get({username: "jane"});`)
	b.policy(t, "nothing", `return;`)
	b.probe(t, "caller", `const r = ak_call_policy("finder");
return {name: r.raw_result.name, active: r.raw_result.is_active, passing: r.passing, none: ak_call_policy("nothing").raw_result};`)
	ev := b.login(t, jane)
	requireJSON(t, `{"name": "Jane J.", "active": true, "passing": true, "none": null}`, b.result(t, ev.PK, "caller").Raw)
}

func TestAPIAkCreateEvent(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	rl := b.rule(t, rule{Name: "creator"})
	policy := b.policy(t, "creator", `ak_create_event("thing", {foo: "bar", n: 2, nested: {list: [1, "a"]}, user_name: request.user.username});
ak_create_event("bare");
return false;`)
	b.bind(t, rl, binding{Policy: policy})
	b.reload(t)

	ev := b.login(t, jane)

	var created []struct {
		ID        string `db:"id"`
		App       string `db:"app"`
		User      string `db:"user"`
		Context   string `db:"context"`
		Processed bool   `db:"processed"`
		Outbox    string `db:"outbox"`
		Status    string `db:"status"`
	}
	require.NoError(t, b.db.SelectContext(t.Context(), &created, `SELECT e.id, e.app, e."user"::text AS "user", e.context::text AS context,
       e.processed, o.payload::text AS outbox, o.status
FROM events e JOIN outbox o ON o.key = 'event:' || e.id AND o.kind = 'event'
WHERE e.action = 'custom_thing'`))
	require.Len(t, created, 1, "one custom_thing event, queued in the outbox")
	c := created[0]
	require.Equal(t, "creator", c.App, "app is the policy's name, as in authentik")
	require.JSONEq(t, `{}`, c.User)
	require.False(t, c.Processed, "stored unprocessed until it is consumed back from the stream")
	require.Equal(t, "pending", c.Status)
	require.JSONEq(t, fmt.Sprintf(`{"foo": "bar", "n": 2, "nested": {"list": [1, "a"]}, "user_name": "jane",
		"caused_by": {"event": %q, "rule": "creator", "policy": "creator", "depth": 1}}`, ev.PK), c.Context,
		"only the kwargs and caused_by")

	// The outbox payload is the event in its wire form.
	pub, err := events.Decode([]byte(c.Outbox))
	require.NoError(t, err)
	require.Equal(t, c.ID, pub.PK)
	require.Equal(t, "custom_thing", pub.Action)
	require.Equal(t, "bar", pub.Context["foo"])

	bare := b.createdEvents(t, "custom_bare")
	require.Len(t, bare, 1)
	require.Equal(t, []string{"caused_by"}, keys(bare[0]), "no kwargs: only caused_by")
	require.Equal(t, 2, b.count(t, `SELECT count(*) FROM outbox WHERE kind = 'event'`))

	// Consumed back: depth 1 is evaluated, and its own events are depth 2.
	b.handle(t, pub)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE id = $1 AND processed`, pub.PK))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE action = 'custom_thing'
		AND context->'caused_by'->>'event' = $1 AND (context->'caused_by'->>'depth')::int = 2`, pub.PK))
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestAPIAkSendEmail(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.db.MustExec(t, `INSERT INTO email_templates (name, subject, text) VALUES ('welcome', 'Welcome', 'Hello {{ .user.username }}')`)
	b.probes(t, map[string]string{
		"body":               `return ak_send_email("one@example.com", "Plain", {body: "Hello\nthere"});`,
		"list":               `return ak_send_email(["a@example.com", "Bee <b@example.com>"], "List", {body: "x", cc: "c@example.com", bcc: ["d@example.com"]});`,
		"builtin-template":   `return ak_send_email("t@example.com", "Builtin", {template: "event_notification", context: {extra: "value"}});`,
		"row-template":       `return ak_send_email("w@example.com", "Row", {template: "welcome"});`,
		"empty-cc":           `return ak_send_email("e@example.com", "No cc", {body: "x", cc: "", bcc: []});`,
		"both":               `return ak_send_email("x@example.com", "Both", {body: "b", template: "event_notification"});`,
		"neither":            `return ak_send_email("x@example.com", "Neither", {});`,
		"empty-body":         `return ak_send_email("x@example.com", "Empty", {body: ""});`,
		"no-options":         `return ak_send_email("x@example.com", "No options");`,
		"unknown-template":   `return ak_send_email("x@example.com", "Unknown", {template: "no-such-template"});`,
		"empty-list":         `return ak_send_email([], "Empty", {body: "b"});`,
		"empty-address":      `return ak_send_email("", "Empty", {body: "b"});`,
		"no-address":         `return ak_send_email(null, "None", {body: "b"});`,
		"queued-then-throws": `ak_send_email("lost@example.com", "Lost", {body: "b"}); throw new Error("after sending");`,
	})

	ev := b.login(t, jane)
	for _, name := range []string{"body", "list", "builtin-template", "row-template", "empty-cc"} {
		o := b.result(t, ev.PK, name)
		require.True(t, o.Passing, "%s returns true once queued", name)
	}
	for name, want := range map[string]string{
		"both":               "exclusive",
		"neither":            "body or a template",
		"empty-body":         "body or a template", // as Python's truthiness
		"no-options":         "body or a template",
		"unknown-template":   "no-such-template",
		"empty-list":         "empty",
		"empty-address":      "empty",
		"no-address":         "address",
		"queued-then-throws": "after sending",
	} {
		require.Contains(t, b.thrown(t, ev.PK, name), want, name)
	}

	var rows []struct {
		Key     string `db:"key"`
		Payload string `db:"payload"`
		Status  string `db:"status"`
	}
	require.NoError(t, b.db.SelectContext(t.Context(), &rows, `SELECT key, payload::text AS payload, status FROM outbox WHERE kind = 'email'`))
	bySubject := map[string]map[string]any{}
	for _, r := range rows {
		var p map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.Payload), &p))
		require.Equal(t, "pending", r.Status)
		require.True(t, strings.HasPrefix(r.Key, "email:"), r.Key)
		require.Equal(t, r.Key, p["key"])
		bySubject[p["subject"].(string)] = p
	}
	require.Len(t, bySubject, 5, "only the five valid emails are queued: %v", keysOf(bySubject))
	require.Nil(t, bySubject["No cc"]["cc"], "an empty cc is none, as Python's `if cc:`")
	require.Nil(t, bySubject["No cc"]["bcc"])

	requireJSON(t, `["one@example.com"]`, bySubject["Plain"]["to"])
	require.Equal(t, "Hello\nthere", bySubject["Plain"]["body"])
	require.Nil(t, bySubject["Plain"]["template"])

	requireJSON(t, `["a@example.com", "Bee <b@example.com>"]`, bySubject["List"]["to"])
	requireJSON(t, `["c@example.com"]`, bySubject["List"]["cc"])
	requireJSON(t, `["d@example.com"]`, bySubject["List"]["bcc"])

	builtin := bySubject["Builtin"]
	require.Equal(t, "event_notification", builtin["template"])
	require.Nil(t, builtin["body"])
	require.Equal(t, "value", path(t, builtin, "context", "extra"))
	require.Equal(t, ev.PK, path(t, builtin, "context", "event", "pk"), "the template sees the event")
	require.Equal(t, "jane", path(t, builtin, "context", "user", "username"))
	require.Equal(t, "welcome", bySubject["Row"]["template"])
}

func keysOf[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// ---------------------------------------------------------------------------
// IP helpers, regex_replace and execution logging.

func TestAPIIPHelpers(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.probes(t, map[string]string{
		"ip": `const a = ip_address("10.0.0.1");
return {private: a.is_private, version: a.version, text: String(a), loopback: ip_address("127.0.0.1").is_loopback,
        public: ip_address("8.8.8.8").is_private, v6: ip_address("2001:db8::1").version};`,
		"network": `const n = ip_network("10.0.0.0/8");
return {in: n.contains(ip_address("10.1.2.3")), out: n.contains(ip_address("11.0.0.1")), text: String(n),
        string_arg: n.contains("10.9.9.9"), single: ip_network("192.0.2.7").contains(ip_address("192.0.2.7"))};`,
		"ip-fields": `const n = ip_network("10.0.0.0/8"); const a = ip_address("100.64.0.1");
return {props: Object.keys(a).join(","), net: Object.keys(n).join(","), json: JSON.stringify({a: ip_address("::1"), n: n}),
        prefixlen: n.prefixlen, address: n.network_address.compressed, global: a.is_global, link_local: ip_address("169.254.1.1").is_link_local};`,
		"host-bits":  `return ip_network("10.0.0.1/8");`,
		"bad-ip":     `return ip_address("10.0.0.256");`,
		"client-ip":  `return {text: String(ak_client_ip), private: ak_client_ip.is_private, in_doc_net: ip_network("192.0.2.0/24").contains(ak_client_ip)};`,
		"regex-name": `return regex_replace("jane.doe@example.com", "(?P<local>[^@]+)@(?P<domain>.+)", "\\g<domain>/\\g<local>/\\1");`,
		// Each value as Python's ipaddress gives it.
		"as-python": `return {mapped_version: ip_address("::ffff:10.0.0.1").version, mapped_in_v4: ip_network("10.0.0.0/8").contains("::ffff:10.0.0.1"),
        all_private: ip_network("0.0.0.0/0").is_private, wide_private: ip_network("10.0.0.0/7").is_private,
        net_private: ip_network("10.0.0.0/8").is_private, net_loopback: ip_network("127.0.0.0/8").is_loopback,
        multicast_global: ip_address("224.0.0.1").is_global, shared_net_global: ip_network("100.64.0.0/10").is_global,
        broadcast: String(ip_network("10.0.0.0/8").broadcast_address), unspecified: ip_network("::/128").is_unspecified};`,
		"python-forms": `return {netmask: String(ip_network("10.0.0.0/255.0.0.0")), hostmask: String(ip_network("10.0.0.0/0.255.255.255")),
        leading_zero: String(ip_network("10.0.0.0/08")), from_int: String(ip_address(3232235777)), v6_from_int: String(ip_address(2 ** 32)),
        zone_text: String(ip_address("fe80::1%eth0")), zone_private: ip_address("fe80::1%eth0").is_private,
        zone_in: ip_network("fe80::/10").contains("fe80::1%eth0")};`,
		"bad-mask": `return ip_network("10.0.0.0/255.0.255.0");`,
		"detached": `const checks = {internal: ip_network("10.0.0.0/8").contains}; return checks.internal("10.1.2.3");`,
	})

	withIP := event(t, map[string]any{"action": "login", "client_ip": "192.0.2.10", "user": map[string]any{"pk": jane, "username": "jane"}})
	withoutIP := userEvent(t, "login", jane, nil)
	b.handle(t, withIP, withoutIP)

	requireJSON(t, `{"private": true, "version": 4, "text": "10.0.0.1", "loopback": true, "public": false, "v6": 6}`, b.result(t, withIP.PK, "ip").Raw)
	requireJSON(t, `{"in": true, "out": false, "text": "10.0.0.0/8", "string_arg": true, "single": true}`, b.result(t, withIP.PK, "network").Raw)
	requireJSON(t, `{"props": "version,is_private,is_global,is_loopback,is_multicast,is_link_local,is_unspecified,compressed",
		"net": "version,prefixlen,network_address,broadcast_address,is_private,is_global,is_loopback,is_multicast,is_link_local,is_unspecified,with_prefixlen", "json": "{\"a\":\"::1\",\"n\":\"10.0.0.0/8\"}",
		"prefixlen": 8, "address": "10.0.0.0", "global": false, "link_local": true}`, b.result(t, withIP.PK, "ip-fields").Raw)
	require.Contains(t, b.thrown(t, withIP.PK, "host-bits"), "host bits set")
	require.Contains(t, b.thrown(t, withIP.PK, "bad-ip"), "10.0.0.256")
	requireJSON(t, `{"text": "192.0.2.10", "private": true, "in_doc_net": true}`, b.result(t, withIP.PK, "client-ip").Raw)
	requireJSON(t, `{"text": "255.255.255.255", "private": true, "in_doc_net": false}`, b.result(t, withoutIP.PK, "client-ip").Raw)
	require.Equal(t, "example.com/jane.doe/jane.doe", b.result(t, withIP.PK, "regex-name").Raw)
	requireJSON(t, `{"mapped_version": 6, "mapped_in_v4": false, "all_private": false, "wide_private": false, "net_private": true,
		"net_loopback": true, "multicast_global": true, "shared_net_global": false, "broadcast": "10.255.255.255", "unspecified": true}`,
		b.result(t, withIP.PK, "as-python").Raw)
	requireJSON(t, `{"netmask": "10.0.0.0/8", "hostmask": "10.0.0.0/8", "leading_zero": "10.0.0.0/8", "from_int": "192.168.1.1",
		"v6_from_int": "::1:0:0", "zone_text": "fe80::1%eth0", "zone_private": true, "zone_in": true}`, b.result(t, withIP.PK, "python-forms").Raw)
	require.Contains(t, b.thrown(t, withIP.PK, "bad-mask"), "does not appear to be an IPv4 or IPv6 network")
	require.Contains(t, b.thrown(t, withIP.PK, "detached"), "TypeError: contains: called on something that is not an ip_network")
}

func TestAPIExecutionLoggingRecordsLogs(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.probe(t, "logger", `ak_logger.debug("starting");
ak_logger.info("user", {username: request.user.username, n: 3});
ak_logger.error("bad", {nested: {ok: true}});
ak_message("done");
return "raw";`)

	ev := b.login(t, jane)
	o := b.result(t, ev.PK, "logger")
	require.True(t, o.Passing)
	require.Equal(t, "raw", o.Raw)
	requireJSON(t, `["done"]`, o.Messages)
	requireJSON(t, `[
		{"level": "debug", "message": "starting", "fields": null},
		{"level": "info", "message": "user", "fields": {"username": "jane", "n": 3}},
		{"level": "error", "message": "bad", "fields": {"nested": {"ok": true}}}]`, o.Logs)
}

// The date in group-user-history's entries has second precision, as in
// the example (Python's isoformat(timespec="seconds") without the offset).
var historyEntry = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2} - Added user: (\S+)$`)

// TestAPIGroupUserHistory runs the group-user-history example of DESIGN.md
// §7 through the engine: pk__in, all() and a save of a group.
func TestAPIGroupUserHistory(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	alice, bob := b.user(t, "alice"), b.user(t, "bob")
	devs := b.group(t, "devs", "")
	b.db.MustExec(t, `UPDATE groups SET attributes = '{"UserAddedHistory": ["old entry"]}' WHERE id = $1`, devs)
	rl := b.rule(t, rule{Name: "group-user-history"})
	b.bind(t, rl, binding{Policy: b.policy(t, "group-user-history", groupHistoryPolicy(t))})
	b.reload(t)

	model := map[string]any{"app": "authentik_core", "model_name": "group", "pk": strings.ReplaceAll(devs, "-", ""), "name": "devs"}
	b.handle(t, userEvent(t, "model_updated", jane, map[string]any{"model": model, "diff": map[string]any{"users": map[string]any{"add": []any{alice, bob}}}}))
	b.handle(t, userEvent(t, "model_updated", jane, map[string]any{"model": model, "diff": map[string]any{"name": map[string]any{"previous_value": "d", "new_value": "devs"}}}))

	history, ok := path(t, b.jsonColumn(t, `SELECT attributes::text FROM groups WHERE id = $1`, devs).(map[string]any), "UserAddedHistory").([]any)
	require.True(t, ok)
	require.Len(t, history, 3)
	require.Equal(t, "old entry", history[0])
	var added []string
	for _, h := range history[1:] {
		m := historyEntry.FindStringSubmatch(h.(string))
		require.NotNil(t, m, "entry %q", h)
		added = append(added, m[1])
	}
	require.ElementsMatch(t, []string{"alice", "bob"}, added)
	require.Zero(t, b.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception'`))
}

// A policy waiting for a row lock that another transaction holds is still
// bound by its timeout: it fails as timed out, and the event goes on.
func TestAPIPolicyBlockedOnRowLockTimesOut(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	b.db.SetMaxOpenConns(6)
	jane := b.user(t, "jane")
	alice := b.user(t, "alice")
	slow := b.policy(t, "waits-for-lock", fmt.Sprintf(`const u = User.objects.get({pk: %d});
u.attributes.touched = true;
u.save({update_fields: ["attributes"]});
return true;`, alice))
	b.alertRule(t, "a-waits", binding{Policy: slow, Timeout: 1})
	good := b.alertRule(t, "b-good", binding{Policy: b.policy(t, "good", `return true;`)})
	b.reload(t)

	// Another transaction holds alice's row for longer than the timeout.
	holder, err := b.db.BeginTxx(t.Context(), nil)
	require.NoError(t, err)
	defer holder.Rollback() //nolint:errcheck
	_, err = holder.ExecContext(t.Context(), `SELECT 1 FROM users WHERE id = $1 FOR UPDATE`, alice)
	require.NoError(t, err)
	go func() {
		time.Sleep(8 * time.Second)
		_ = holder.Rollback()
	}()

	ev := userEvent(t, "login", jane, nil)
	start := time.Now()
	require.NoError(t, b.engine.HandleEvents(t.Context(), []events.Event{ev}))
	require.Less(t, time.Since(start), 5*time.Second, "the 1s timeout did not stop the wait for the lock")
	require.Equal(t, []string{"jane"}, b.notified(t, good, ev.PK))
	excs := b.createdEvents(t, "policy_exception")
	require.Len(t, excs, 1)
	require.Equal(t, "waits-for-lock", path(t, excs[0], "policy", "name"))
	require.Equal(t, "timeout", path(t, excs[0], "error", "kind"), "error: %v", excs[0]["error"])
	require.Zero(t, b.count(t, `SELECT count(*) FROM users WHERE attributes ? 'touched'`))
}

// Lookups on events and times, and escaping of LIKE patterns.
func TestAPIModelLookups(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.user(t, "per%cent")
	b.user(t, "under_score")
	b.db.MustExec(t, `UPDATE users SET last_login = now() - interval '1 hour' WHERE username = 'jane'`)
	b.handle(t, event(t, map[string]any{"action": "login", "client_ip": "192.0.2.10", "user": map[string]any{"pk": jane}}))
	b.handle(t, event(t, map[string]any{"action": "login", "client_ip": "2001:db8::1"}))
	b.probe(t, "lookups", `return {
  ip: Event.objects.filter({client_ip: "192.0.2.10"}).count(),
  ip6: Event.objects.filter({client_ip: "2001:db8::1"}).count(),
  ip_in: Event.objects.filter({client_ip__in: ["192.0.2.10", "2001:db8::1"]}).count(),
  no_ip: Event.objects.filter({client_ip__isnull: true}).count(),
  recent: Event.objects.filter({created__gte: new Date(Date.now() - 3600e3).toISOString(), action: "login"}).count(),
  future: Event.objects.filter({created__gt: new Date(Date.now() + 3600e3).toISOString()}).count(),
  logged_in: User.objects.filter({last_login__isnull: false}).all().map(u => u.username),
  percent: User.objects.filter({username__contains: "%"}).count(),
  underscore: User.objects.filter({username__contains: "_"}).count(),
  iexact: User.objects.filter({username__iexact: "JANE"}).count(),
  starts: User.objects.filter({username__startswith: "per%"}).count(),
};`)

	ev := b.login(t, 0) // anonymous, no client_ip
	requireJSON(t, `{"ip": 1, "ip6": 1, "ip_in": 2, "no_ip": 1, "recent": 3, "future": 0, "logged_in": ["jane"],
		"percent": 1, "underscore": 1, "iexact": 1, "starts": 1}`, b.result(t, ev.PK, "lookups").Raw)
}

// A policy that calls a policy that never returns is stopped by the
// caller's timeout.
func TestAPIAkCallPolicyTimeout(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.policy(t, "spin", `while (true) {}`)
	caller := b.policy(t, "calls-spin", `const r = ak_call_policy("spin"); return r.passing;`)
	b.alertRule(t, "a-caller", binding{Policy: caller, Timeout: 1, FailureResult: true})
	good := b.alertRule(t, "b-good", binding{Policy: b.policy(t, "good", `return true;`)})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	start := time.Now()
	b.handle(t, ev)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Equal(t, []string{"jane"}, b.notified(t, good, ev.PK))
	excs := map[string]map[string]any{}
	for _, c := range b.createdEvents(t, "policy_exception") {
		excs[path(t, c, "policy", "name").(string)] = c
	}
	require.Contains(t, excs, "calls-spin")
	require.Equal(t, "timeout", path(t, excs["calls-spin"], "error", "kind"), "error: %v", excs["calls-spin"]["error"])
	require.True(t, b.fired(t, b.rules(t)["a-caller"], ev.PK), "failure_result true")

	// The runtime is usable afterwards.
	next := b.login(t, jane)
	require.Equal(t, []string{"jane"}, b.notified(t, good, next.PK))
}

// rules returns the ids of the rules by name.
func (b *testBundle) rules(t *testing.T) map[string]string {
	t.Helper()
	var rows []struct {
		ID   string `db:"id"`
		Name string `db:"name"`
	}
	require.NoError(t, b.db.SelectContext(t.Context(), &rows, `SELECT id, name FROM notification_rules`))
	out := map[string]string{}
	for _, r := range rows {
		out[r.Name] = r.ID
	}
	return out
}

// request.user is a model object (DESIGN.md §6): it can be saved like one
// that User.objects returns.
func TestAPIRequestUserIsAModelObject(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.probe(t, "request-user", `const u = request.user;
u.attributes.last_event = request.context.event.action;
u.save({update_fields: ["attributes"]});
return u.username;`)

	ev := b.login(t, jane)
	require.Equal(t, "jane", b.result(t, ev.PK, "request-user").Raw)
	requireJSON(t, `{"last_event": "login"}`, b.jsonColumn(t, `SELECT attributes::text FROM users WHERE id = $1`, jane))
}

// A policy that throws after ak_create_event leaves neither the event nor
// its outbox row behind.
func TestAPIAkCreateEventRolledBackWhenThePolicyFails(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	rl := b.rule(t, rule{Name: "creator"})
	b.bind(t, rl, binding{Order: 1, Policy: b.policy(t, "a-throws", `ak_create_event("lost", {n: 1}); throw new Error("no");`)})
	b.bind(t, rl, binding{Order: 2, Policy: b.policy(t, "b-creates", `ak_create_event("kept", {n: 2}); return false;`)})
	b.reload(t)

	b.login(t, jane)
	require.Empty(t, b.createdEvents(t, "custom_lost"))
	require.Len(t, b.createdEvents(t, "custom_kept"), 1)
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM outbox o JOIN events e ON o.key = 'event:' || e.id WHERE e.action = 'custom_kept'`))
	require.Zero(t, b.count(t, `SELECT count(*) FROM outbox WHERE payload->>'action' = 'custom_lost'`))
}

// The loop guard counts from the outside event: an event that claims a
// negative depth does not buy a longer chain of created events.
func TestAPICreatedEventDepthStartsAtOne(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	rl := b.rule(t, rule{Name: "echo"})
	b.bind(t, rl, binding{Policy: b.policy(t, "echo", `ak_create_event("echo"); return false;`)})
	b.reload(t)

	b.handle(t, userEvent(t, "login", jane, map[string]any{"caused_by": map[string]any{"event": newPK(t), "depth": -10}}))
	created := b.createdEvents(t, "custom_echo")
	require.Len(t, created, 1)
	depth, _ := path(t, created[0], "caused_by", "depth").(float64)
	require.GreaterOrEqual(t, depth, float64(1), "caused_by: %v", created[0]["caused_by"])
}

// Each rule evaluates its policies with a request of its own, as authentik
// does (one task per rule, each loading the event and user afresh): what one
// rule's policy changes in request, context or the event is not seen by
// another rule's policy.
func TestAPIRulesDoNotShareRequestObjects(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.alertRule(t, "a-mutates", binding{Policy: b.policy(t, "mutates", `request.context.event.context.flag = true;
request.context.extra = 1;
request.user.attributes.leak = 1;
request.user.username = "changed";
return false;`)})
	clean := b.alertRule(t, "b-checks", binding{Policy: b.policy(t, "checks", `return request.context.event.context.flag === undefined
  && request.context.extra === undefined && request.user.attributes.leak === undefined
  && request.user.username === "jane";`)})
	b.reload(t)

	ev := b.login(t, jane)
	require.True(t, b.fired(t, clean, ev.PK), "the second rule saw the first rule's changes")
}

// Two policies of one event that each read, change and save request.user
// both keep their change; the second is not a conflict with the first, nor
// does it overwrite it.
func TestAPIRequestUserSavedByTwoPolicies(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	increment := `const u = request.user;
u.attributes.n = (u.attributes.n || 0) + 1;
u.attributes[%q] = true;
u.save({update_fields: ["attributes"]});
return false;`
	rl := b.rule(t, rule{Name: "counter"})
	b.bind(t, rl, binding{Order: 1, Policy: b.policy(t, "first", fmt.Sprintf(increment, "first"))})
	b.bind(t, rl, binding{Order: 2, Policy: b.policy(t, "second", fmt.Sprintf(increment, "second"))})
	other := b.rule(t, rule{Name: "other-rule"})
	b.bind(t, other, binding{Policy: b.policy(t, "third", fmt.Sprintf(increment, "third"))})
	b.reload(t)

	ev := userEvent(t, "login", jane, nil)
	require.NoError(t, b.engine.HandleEvents(t.Context(), []events.Event{ev}))
	require.Zero(t, b.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception'`))
	requireJSON(t, `{"n": 3, "first": true, "second": true, "third": true}`,
		b.jsonColumn(t, `SELECT attributes::text FROM users WHERE id = $1`, jane))
}

// A user saved by a policy is seen as saved by the batch's later events,
// whether the save was of their own request.user or of a row the policy
// read: the batch neither reads an old copy nor runs again.
func TestAPIUserSavedByAnEarlierEventOfTheBatch(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane, bob := b.user(t, "jane"), b.user(t, "bob")
	rl := b.rule(t, rule{Name: "counter"})
	b.bind(t, rl, binding{Policy: b.policy(t, "count", `const u = request.user;
if (u.username === "jane") {
  const other = User.objects.filter({username: "bob"}).first();
  other.attributes.by_jane = (other.attributes.by_jane || 0) + 1;
  other.save({update_fields: ["attributes"]});
} else {
  u.attributes.saw_by_jane = u.attributes.by_jane || 0;
}
u.attributes.n = (u.attributes.n || 0) + 1;
u.save({update_fields: ["attributes"]});
return false;`)})
	b.reload(t)

	batch := []events.Event{userEvent(t, "login", jane, nil), userEvent(t, "login", jane, nil), userEvent(t, "login", bob, nil)}
	require.NoError(t, b.engine.HandleEvents(t.Context(), batch))
	require.Zero(t, b.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception'`))
	require.Zero(t, b.engine.Stats().BatchesRedone.Load(), "the batch ran again")
	requireJSON(t, `{"n": 2}`, b.jsonColumn(t, `SELECT attributes::text FROM users WHERE id = $1`, jane))
	requireJSON(t, `{"n": 1, "by_jane": 2, "saw_by_jane": 2}`, b.jsonColumn(t, `SELECT attributes::text FROM users WHERE id = $1`, bob))
}

// The policies of one rule share the request, also after one of them
// called another policy.
func TestAPIRequestSharedInARuleAfterACall(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.policy(t, "helper", `return true;`)
	rl := b.alertRule(t, "shares",
		binding{Order: 1, Policy: b.policy(t, "sets", `request.context.shared = 1; ak_call_policy("helper", {x: 1}); return false;`)},
		binding{Order: 2, Policy: b.policy(t, "reads", `return request.context.shared === 1 && request.context.x === undefined;`)})
	b.reload(t)

	ev := b.login(t, jane)
	require.True(t, b.fired(t, rl, ev.PK), "the second policy did not see what the first added")
}

// A filter value JSON cannot hold (a BigInt, a function, a Symbol) throws a
// TypeError that names it. It used to be dropped from the filter (or a
// Symbol taken as its description), so that the filter matched more than
// asked: count() counted everyone, ak_is_group_member held for any group.
func TestAPIFilterValueNotJSONThrows(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.user(t, "alice")
	b.user(t, "bob")
	b.group(t, "staff", "", jane)
	b.group(t, "admins", "")
	b.probes(t, map[string]string{
		"bigint":        `return User.objects.filter({username: 10n}).count();`,
		"function":      `return User.objects.filter({username: () => "bob"}).count();`,
		"symbol":        `const u = User.objects.filter({pk: Symbol("x")}).first(); return u && u.username;`,
		"member":        `return ak_is_group_member(request.user, {name: 1n});`,
		"member-fn":     `return ak_is_group_member(request.user, {name: 1n, pk: () => "admins"});`,
		"userby":        `const u = ak_user_by({username: Symbol("bob")}); return u && u.username;`,
		"admins-string": `return ak_is_group_member(request.user, {name: "admins"});`,
		"staff-string":  `return ak_is_group_member(request.user, {name: "staff"});`,
	})
	ev := b.login(t, jane)
	for name, want := range map[string]string{
		"bigint":    "TypeError: User.objects.filter: username is a BigInt",
		"function":  "TypeError: User.objects.filter: username is a function",
		"symbol":    "TypeError: User.objects.filter: pk is a Symbol",
		"member":    "TypeError: ak_is_group_member: name is a BigInt",
		"member-fn": "TypeError: ak_is_group_member: ",
		"userby":    "TypeError: ak_user_by: username is a Symbol",
	} {
		require.Contains(t, b.thrown(t, ev.PK, name), want, name)
	}
	require.Equal(t, false, b.result(t, ev.PK, "admins-string").Raw)
	require.Equal(t, true, b.result(t, ev.PK, "staff-string").Raw)
}

// Times in __in lookups reach PostgreSQL as RFC 3339 text with their
// fraction, which it reads exactly; as in Django, created__in takes the
// value that created gives.
func TestAPITimeInLookup(t *testing.T) {
	t.Parallel()
	b := apiSetup(t)
	jane := b.user(t, "jane")
	b.db.MustExec(t, `UPDATE users SET created = '2026-04-20 10:15:30.123456+00', last_login = '2026-04-20 10:15:30+00' WHERE id = $1`, jane)
	b.probes(t, map[string]string{
		"created-in": fmt.Sprintf(`const u = User.objects.get({pk: %d}); return User.objects.filter({created__in: [u.created]}).count();`, jane),
		"created-eq": fmt.Sprintf(`const u = User.objects.get({pk: %d}); return User.objects.filter({created: u.created}).count();`, jane),
		"in-text":    `return User.objects.filter({created__in: ["2026-04-20T12:15:30.123456+02:00", "2026-01-01T00:00:00Z"]}).count();`,
		"in-second":  `return User.objects.filter({last_login__in: ["2026-04-20T10:15:30Z"]}).count();`,
		"in-other":   `return User.objects.filter({created__in: ["2026-04-20T10:15:30.123457Z"]}).count();`,
	})
	ev := b.login(t, jane)
	for name, want := range map[string]float64{"created-in": 1, "created-eq": 1, "in-text": 1, "in-second": 1, "in-other": 0} {
		require.Equal(t, want, b.result(t, ev.PK, name).Raw, name)
	}
}
