package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"testing"

	"github.com/jmoiron/sqlx"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

func TestEvalIsADryRun(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/unknown-device-login.sql")
	s.db.MustExec(t, `INSERT INTO users (id, username, email, attributes) VALUES (12, 'jane', 'jane@example.com', '{"n": 1}')`)
	s.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ('busy', $js$
ak_message("checked");
ak_logger.info("busy policy", {user: request.user.username});
ak_create_event("audit", {who: request.user.username});
ak_send_email("sec@example.com", "Login", {body: "jane logged in"});
request.user.attributes.n = 2;
request.user.save({update_fields: ["attributes"]});
return true;
$js$)`)
	s.db.MustExec(t, `INSERT INTO notification_rules (name) VALUES ('busy-rule')`)
	s.db.MustExec(t, `INSERT INTO policy_bindings (target_rule_id, policy_id)
		SELECT r.id, p.id FROM notification_rules r, policies p WHERE r.name = 'busy-rule' AND p.name = 'busy'`)

	out := s.cli(t, "", "eval", "-action", "login", "-user-pk", "12", "-username", "jane", "-context", loginUnknownDevice)
	require.Contains(t, out, `rule "unknown-device-login-alert" #0 policy unknown-device-login: passes`)
	require.Contains(t, out, "fires: busy-rule, unknown-device-login-alert")
	require.Contains(t, out, "would notify user 12 (alert, rule \"unknown-device-login-alert\") via inbox (local)")
	require.Contains(t, out, "would create event custom_audit")
	require.Contains(t, out, "would email sec@example.com")
	require.Contains(t, out, "would save User 12: attributes")
	require.Contains(t, out, "message: checked")

	// Nothing happened.
	for _, table := range []string{"events", "notifications", "deliveries", "outbox"} {
		require.Equal(t, 0, s.count(t, `SELECT count(*) FROM `+table), table)
	}
	require.Equal(t, 1, s.count(t, `SELECT (attributes->>'n')::int FROM users WHERE id = 12`))

	// One policy, as JSON.
	out = s.cli(t, "", "eval", "-json", "-policy", "unknown-device-login", "-action", "login", "-user-pk", "12",
		"-context", `{"auth_method_args": {"known_device": true}}`)
	var report rules.DryRunReport
	require.NoError(t, json.Unmarshal([]byte(out), &report))
	require.Len(t, report.Bindings, 1)
	require.False(t, report.Bindings[0].Passing)
	require.Empty(t, report.Fired)
}

// eval does not create the database it is pointed at when it is missing.
func TestEvalDoesNotCreateADatabase(t *testing.T) {
	t.Parallel()
	base, err := url.Parse(testinfra.PostgresURL(t))
	require.NoError(t, err)
	name := "herald_missing_" + strings.ToLower(testinfra.Name(t))
	missing := *base
	missing.Path = "/" + name
	env := map[string]string{"DATABASE_URL": missing.String(), "NATS_URL": testinfra.NATSURL(t), "HERALD_HTTP_ADDR": "off"}
	var out, errOut bytes.Buffer
	err = dispatch(t.Context(), []string{"eval", "-action", "login"}, func(k string) string { return env[k] }, strings.NewReader(""), &out, &errOut)
	require.Error(t, err)

	admin, err := sqlx.Connect("postgres", base.String())
	require.NoError(t, err)
	defer admin.Close()
	var n int
	require.NoError(t, admin.Get(&n, `SELECT count(*) FROM pg_database WHERE datname = $1`, name))
	require.Zero(t, n, "eval created the database")
}

// eval reports the effects the worker commits for the same event, and no
// others: those of a policy that fails are rolled back by the worker (its
// savepoint), so eval does not report them, whether the policy acted
// itself or through a policy it called; a called policy that fails inside
// a caller that succeeds shares the caller's savepoint, so its effects are
// kept, by eval as by the worker.
func TestEvalReportsTheEffectsTheWorkerCommits(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.db.MustExec(t, `INSERT INTO users (id, username, email) VALUES (12, 'jane', 'jane@example.com'),
		(21, 'u21', 'u21@example.com'), (22, 'u22', 'u22@example.com'), (23, 'u23', 'u23@example.com'), (24, 'u24', 'u24@example.com')`)
	// Each policy creates an event, queues an email and saves a user of
	// its own.
	acts := func(name string, user int) string {
		return fmt.Sprintf(`ak_create_event(%[1]q, {by: %[1]q});
ak_send_email(%[1]q + "@example.com", %[1]q, {body: "from " + %[1]q});
const u = User.objects.get({pk: %[2]d}); u.attributes = {saved_by: %[1]q}; u.save({update_fields: ["attributes"]});
`, name, user)
	}
	// The bound ones leave the events they create alone.
	const logins = "if (request.context.event.action !== \"login\") return false;\n"
	policies := []struct{ name, expression string }{
		{"keeps", logins + acts("keeps", 21) + `return true;`},
		{"fails_late", logins + acts("fails_late", 22) + `throw new Error("boom");`},
		{"calls_failing_callee", logins + `ak_call_policy("callee_fails_late"); return true;`},
		{"callee_fails_late", acts("callee_fails_late", 23) + `throw new Error("callee boom");`},
		{"calls_then_fails", logins + `ak_call_policy("callee_keeps"); throw new Error("caller boom");`},
		{"callee_keeps", acts("callee_keeps", 24) + `return true;`},
	}
	for _, p := range policies {
		s.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ($1, $2)`, p.name, p.expression)
	}
	s.db.MustExec(t, `INSERT INTO notification_rules (name) VALUES ('effects-rule')`)
	for i, name := range []string{"keeps", "fails_late", "calls_failing_callee", "calls_then_fails"} {
		s.db.MustExec(t, `INSERT INTO policy_bindings (target_rule_id, policy_id, "order")
			SELECT r.id, p.id, $2 FROM notification_rules r, policies p WHERE p.name = $1`, name, i)
	}
	// The same event, pk included, for eval and for the worker: the pks of
	// created events and the keys of emails derive from it.
	const pk = "5d0c6a43-3b4e-4f0a-9a51-6f3a2b1c9e70"
	event := `{"pk": "` + pk + `", "action": "login", "user": {"pk": 12, "username": "jane", "email": "jane@example.com"}}`

	var report rules.DryRunReport
	require.NoError(t, json.Unmarshal([]byte(s.cli(t, event, "eval", "-json", "-f", "-")), &report))
	var evalEvents, evalEmails, evalSaves []string
	for _, ev := range report.CreatedEvents {
		evalEvents = append(evalEvents, ev.Action+" "+ev.PK)
	}
	for _, m := range report.Emails {
		evalEmails = append(evalEmails, strings.Join(m.To, ",")+" "+m.Key)
	}
	evalSaves = append(evalSaves, report.Saves...)
	text := s.cli(t, event, "eval", "-f", "-")
	t.Logf("worker eval:\n%s", text)

	s.start(t)
	s.cli(t, event, "publish", "-f", "-")
	s.waitCount(t, 1, `SELECT count(*) FROM events WHERE id = $1`, pk)
	s.settle(t)
	// The worker's effects for the event (email_sent events come from
	// sending, which eval does not do).
	var workerEvents, workerEmails, workerSaves []string
	require.NoError(t, s.db.SelectContext(t.Context(), &workerEvents, `SELECT action || ' ' || id FROM events
		WHERE context->'caused_by'->>'event' = $1 AND action <> 'email_sent' ORDER BY action, id`, pk))
	require.NoError(t, s.db.SelectContext(t.Context(), &workerEmails, `SELECT (payload->'to'->>0) || ' ' || key FROM outbox
		WHERE kind = 'email' AND payload->'cause'->>'event' = $1 ORDER BY 1`, pk))
	require.NoError(t, s.db.SelectContext(t.Context(), &workerSaves, `SELECT 'User ' || id || ': attributes' FROM users
		WHERE attributes ? 'saved_by' ORDER BY id`))

	sort.Strings(evalEvents)
	sort.Strings(evalEmails)
	sort.Strings(evalSaves)
	require.Equal(t, workerEvents, evalEvents, "created events: the worker's (want) and eval's (got)")
	require.Equal(t, workerEmails, evalEmails, "emails: the worker's (want) and eval's (got)")
	require.Equal(t, workerSaves, evalSaves, "saves: the worker's (want) and eval's (got)")

	// What that is, so that the comparison is not of two empty lists.
	actions := map[string]int{}
	for _, ev := range report.CreatedEvents {
		actions[ev.Action]++
	}
	require.Equal(t, map[string]int{"custom_keeps": 1, "custom_callee_fails_late": 1, "policy_exception": 3}, actions)
	require.Equal(t, []string{"User 21: attributes", "User 23: attributes"}, evalSaves)
	require.Len(t, evalEmails, 2)
	require.Contains(t, text, "would create event custom_keeps")
	require.Contains(t, text, "would email keeps@example.com")
	require.Contains(t, text, "would save User 21: attributes")
	for _, gone := range []string{"would email fails_late@", "custom_fails_late", "callee_keeps", "User 22", "User 24"} {
		require.NotContains(t, text, gone)
	}
}
