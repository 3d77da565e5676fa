package main

// End-to-end tests of the examples of DESIGN.md §7: each seeds its example
// file, runs the real worker against the test's own schema and stream,
// publishes the triggering event with `worker publish` and observes the
// effect. The unknown-device login alert is in worker_test.go.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
)

// publishEvent publishes one event (a JSON object) with `worker publish -f -`
// and returns its pk.
func (s *stack) publishEvent(t *testing.T, event map[string]any) string {
	t.Helper()
	b, err := json.Marshal(event)
	require.NoError(t, err)
	return strings.TrimSpace(s.cli(t, string(b), "publish", "-f", "-"))
}

// coreModelEvent is an event about a model of authentik_core, as authentik's
// model signals send it.
func coreModelEvent(action, modelName string, pk any, extra map[string]any) map[string]any {
	c := map[string]any{"model": map[string]any{"app": "authentik_core", "model_name": modelName, "pk": pk, "name": fmt.Sprint(pk)}}
	for k, v := range extra {
		c[k] = v
	}
	return map[string]any{
		"action":  action,
		"app":     "authentik.events.signals",
		"user":    map[string]any{"pk": 1, "username": "akadmin", "email": "admin@example.com"},
		"context": c,
	}
}

func (s *stack) jsonOf(t *testing.T, query string, args ...any) any {
	t.Helper()
	var raw []byte
	require.NoError(t, s.db.GetContext(t.Context(), &raw, query, args...), query)
	var v any
	require.NoError(t, json.Unmarshal(raw, &v))
	return v
}

func (s *stack) newUser(t *testing.T, username, name, email, attributes string, active bool) int64 {
	t.Helper()
	var id int64
	require.NoError(t, s.db.GetContext(t.Context(), &id, `INSERT INTO users (username, name, email, attributes, is_active)
VALUES ($1, $2, $3, $4, $5) RETURNING id`, username, name, email, attributes, active))
	return id
}

// exampleMail is a message as Mailpit's API returns it.
type exampleMail struct {
	ID      string `json:"ID"`
	Subject string `json:"Subject"`
	To      []struct {
		Address string `json:"Address"`
	} `json:"To"`
	Text string `json:"Text"`
}

func exampleMailGet(t *testing.T, u string, v any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "GET %s: %s", u, body)
	require.NoError(t, json.Unmarshal(body, v), "GET %s", u)
}

// exampleMailTo waits until Mailpit holds a message to address and returns all of
// them, in full.
func exampleMailTo(t *testing.T, api, address string) []exampleMail {
	t.Helper()
	u := api + "/api/v1/search?query=" + url.QueryEscape("to:"+address)
	var res struct {
		Messages []struct {
			ID string `json:"ID"`
		} `json:"messages"`
	}
	require.Eventually(t, func() bool {
		exampleMailGet(t, u, &res)
		return len(res.Messages) > 0
	}, 15*time.Second, 50*time.Millisecond, "no message to %s arrived in Mailpit", address)
	out := make([]exampleMail, len(res.Messages))
	for i, m := range res.Messages {
		exampleMailGet(t, api+"/api/v1/message/"+m.ID, &out[i])
	}
	return out
}

// ---------------------------------------------------------------------------
// send-welcome-email

func TestExampleSendWelcomeEmail(t *testing.T) {
	t.Parallel()
	smtpURL, api := testinfra.Mailpit(t)
	s := newStack(t)
	s.env["SMTP_URL"] = smtpURL
	s.cli(t, "", "seed", "../../schema/examples/send-welcome-email.sql")
	address := "welcome." + s.db.Schema + "@herald.test"
	jane := s.newUser(t, "jane", "Jane Doe", address, "{}", true)
	noEmail := s.newUser(t, "noemail", "No Email", "", "{}", true)
	s.start(t)

	created := s.publishEvent(t, coreModelEvent("model_created", "user", jane, nil))
	withoutEmail := s.publishEvent(t, coreModelEvent("model_created", "user", noEmail, nil))
	updated := s.publishEvent(t, coreModelEvent("model_updated", "user", jane, nil)) // not a creation: no email

	msgs := exampleMailTo(t, api, address)
	require.Len(t, msgs, 1)
	m := msgs[0]
	require.Equal(t, "Welcome to authentik", m.Subject)
	require.Len(t, m.To, 1)
	require.Equal(t, address, m.To[0].Address)
	body := strings.ReplaceAll(m.Text, "\r\n", "\n")
	require.True(t, strings.HasPrefix(body, "Hello Jane Doe,\n\nYour authentik account has been created."), "body %q", body)
	require.Contains(t, body, "https://authentik.company")

	s.settle(t)
	s.waitCount(t, 3, `SELECT count(*) FROM events WHERE id IN ($1, $2, $3)`, created, withoutEmail, updated)
	// One email only: the user without an address and the update queued none.
	s.waitCount(t, 1, `SELECT count(*) FROM outbox WHERE kind = 'email' AND status = 'sent'`)
	require.Equal(t, 1, s.count(t, `SELECT count(*) FROM outbox WHERE kind = 'email'`))
	require.Zero(t, s.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception'`))
	require.Zero(t, s.count(t, `SELECT count(*) FROM notifications`), "the rule has no transports and the policy returns false")

	// Redelivering the creation event sends nothing more.
	_, err := s.js.Publish(t.Context(), s.names.SubjectPrefix+".model_created",
		fmt.Appendf(nil, `{"pk": %q, "action": "model_created", "context": {"model": {"app": "authentik_core", "model_name": "user", "pk": %d}}}`, created, jane))
	require.NoError(t, err)
	s.settle(t)
	require.Equal(t, 1, s.count(t, `SELECT count(*) FROM outbox WHERE kind = 'email'`))
	time.Sleep(200 * time.Millisecond)
	require.Len(t, exampleMailTo(t, api, address), 1)
}

// ---------------------------------------------------------------------------
// deactivated-user-ssh-keys

func TestExampleDeactivatedUserSSHKeys(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/deactivated-user-ssh-keys.sql")
	keys := `{"sshPublicKey": ["ssh-ed25519 AAAAC3Nza jane@laptop", "ssh-rsa AAAAB3Nza jane@desktop"], "team": "ops"}`
	inactive := s.newUser(t, "jane", "Jane", "", keys, false)
	active := s.newUser(t, "bob", "Bob", "", `{"sshPublicKey": ["ssh-ed25519 BBBB bob@laptop"]}`, true)
	s.start(t)

	deactivated := s.publishEvent(t, coreModelEvent("model_updated", "user", inactive, nil))
	stillActive := s.publishEvent(t, coreModelEvent("model_updated", "user", active, nil))

	s.waitCount(t, 1, `SELECT count(*) FROM users WHERE id = $1 AND attributes ? 'inactiveSSHPublicKey'`, inactive)
	require.JSONEq(t, `{"sshPublicKey": [], "inactiveSSHPublicKey": ["ssh-ed25519 AAAAC3Nza jane@laptop", "ssh-rsa AAAAB3Nza jane@desktop"], "team": "ops"}`,
		toJSON(t, s.jsonOf(t, `SELECT attributes FROM users WHERE id = $1`, inactive)))

	s.settle(t)
	s.waitCount(t, 2, `SELECT count(*) FROM events WHERE id IN ($1, $2)`, deactivated, stillActive)
	require.JSONEq(t, `{"sshPublicKey": ["ssh-ed25519 BBBB bob@laptop"]}`,
		toJSON(t, s.jsonOf(t, `SELECT attributes FROM users WHERE id = $1`, active)), "an active user is untouched")
	require.Zero(t, s.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception'`))

	// A second update of the deactivated user finds no keys left to move.
	again := s.publishEvent(t, coreModelEvent("model_updated", "user", inactive, nil))
	s.waitCount(t, 1, `SELECT count(*) FROM events WHERE id = $1`, again)
	s.settle(t)
	require.JSONEq(t, `["ssh-ed25519 AAAAC3Nza jane@laptop", "ssh-rsa AAAAB3Nza jane@desktop"]`,
		toJSON(t, s.jsonOf(t, `SELECT attributes->'inactiveSSHPublicKey' FROM users WHERE id = $1`, inactive)))
}

func toJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// ---------------------------------------------------------------------------
// application-without-bindings

func TestExampleApplicationWithoutBindings(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/application-without-bindings.sql")
	alice := s.newUser(t, "alice", "Alice", "", "{}", true)
	bob := s.newUser(t, "bob", "Bob", "", "{}", true)
	s.newUser(t, "carol", "Carol", "", "{}", true) // not an admin
	s.db.MustExec(t, `INSERT INTO group_members (group_id, user_id)
		SELECT g.id, u.id FROM groups g, users u WHERE g.name = 'authentik Admins' AND u.username IN ('alice', 'bob')`)
	var unbound, bound string
	require.NoError(t, s.db.Get(&unbound, `INSERT INTO applications (slug, name) VALUES ('wiki', 'Wiki') RETURNING id`))
	require.NoError(t, s.db.Get(&bound, `INSERT INTO applications (slug, name) VALUES ('grafana', 'Grafana') RETURNING id`))
	s.db.MustExec(t, `INSERT INTO policy_bindings (target_application_id, group_id)
		SELECT $1::uuid, id FROM groups WHERE name = 'authentik Admins'`, bound)
	s.start(t)

	// authentik sends application pks dashless.
	alert := s.publishEvent(t, coreModelEvent("model_created", "application", strings.ReplaceAll(unbound, "-", ""), nil))
	quiet := s.publishEvent(t, coreModelEvent("model_created", "application", bound, nil))
	missing := s.publishEvent(t, coreModelEvent("model_created", "application", "00000000-0000-4000-8000-000000000000", nil))

	s.waitCount(t, 2, `SELECT count(*) FROM notifications WHERE event_id = $1`, alert)
	s.settle(t)
	s.waitCount(t, 3, `SELECT count(*) FROM events WHERE id IN ($1, $2, $3)`, alert, quiet, missing)
	var rows []struct {
		UserID   int64  `db:"user_id"`
		Severity string `db:"severity"`
		Rule     string `db:"rule"`
	}
	require.NoError(t, s.db.Select(&rows, `SELECT n.user_id, n.severity, r.name AS rule FROM notifications n
		JOIN notification_rules r ON r.id = n.rule_id WHERE n.event_id = $1 ORDER BY n.user_id`, alert))
	require.Len(t, rows, 2)
	require.Equal(t, []int64{alice, bob}, []int64{rows[0].UserID, rows[1].UserID}, "one notification per admin")
	for _, r := range rows {
		require.Equal(t, "alert", r.Severity)
		require.Equal(t, "application-without-bindings", r.Rule)
	}
	require.Equal(t, 2, s.count(t, `SELECT count(*) FROM deliveries d JOIN notifications n ON n.id = d.notification_id
		WHERE n.event_id = $1 AND d.status = 'sent'`, alert))
	require.Zero(t, s.count(t, `SELECT count(*) FROM notifications WHERE event_id IN ($1, $2)`, quiet, missing),
		"an application with a binding, or one that does not exist, alerts nobody")
	require.Zero(t, s.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception'`))
}

// ---------------------------------------------------------------------------
// group-user-history

var userAddedEntry = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2} - Added user: (\S+)$`)

// userAddedHistory returns the usernames in the group's UserAddedHistory, checking
// the format of every entry.
func (s *stack) userAddedHistory(t *testing.T, group string) []string {
	t.Helper()
	entries, _ := s.jsonOf(t, `SELECT COALESCE(attributes->'UserAddedHistory', '[]') FROM groups WHERE id = $1`, group).([]any)
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		str, _ := e.(string)
		m := userAddedEntry.FindStringSubmatch(str)
		require.NotNil(t, m, "history entry %q", e)
		names = append(names, m[1])
	}
	return names
}

func (s *stack) newGroup(t *testing.T, name string) string {
	t.Helper()
	var id string
	require.NoError(t, s.db.Get(&id, `INSERT INTO groups (name) VALUES ($1) RETURNING id`, name))
	return id
}

func TestExampleGroupUserHistory(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/group-user-history.sql")
	devs := s.newGroup(t, "devs")
	alice := s.newUser(t, "alice", "Alice", "", "{}", true)
	bob := s.newUser(t, "bob", "Bob", "", "{}", true)
	s.start(t)

	added := s.publishEvent(t, coreModelEvent("model_updated", "group", strings.ReplaceAll(devs, "-", ""),
		map[string]any{"diff": map[string]any{"users": map[string]any{"add": []any{alice, bob}}}}))
	renamed := s.publishEvent(t, coreModelEvent("model_updated", "group", devs,
		map[string]any{"diff": map[string]any{"name": map[string]any{"previous_value": "dev", "new_value": "devs"}}}))

	s.waitCount(t, 2, `SELECT COALESCE(jsonb_array_length(attributes->'UserAddedHistory'), 0) FROM groups WHERE id = $1`, devs)
	s.settle(t)
	s.waitCount(t, 2, `SELECT count(*) FROM events WHERE id IN ($1, $2)`, added, renamed)
	got := s.userAddedHistory(t, devs)
	slices.Sort(got)
	require.Equal(t, []string{"alice", "bob"}, got)
	require.Zero(t, s.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception'`))
}

// pkSpelling writes the UUID pk in one of the four forms authentik and
// publishers use (dashed or dashless, lower or upper case), chosen by i. The
// worker may route events by the object they are about; varying the
// spelling makes sure that events about the same row still end up in
// concurrent transactions, so that the tests below exercise the row locks
// and not only the routing.
func pkSpelling(pk string, i int) string {
	switch i % 4 {
	case 1:
		return strings.ReplaceAll(pk, "-", "")
	case 2:
		return strings.ToUpper(pk)
	case 3:
		return strings.ToUpper(strings.ReplaceAll(pk, "-", ""))
	}
	return pk
}

// Many events updating the same group at once, in concurrent batches, lose
// none of each other's writes (DESIGN.md §6).
func TestExampleGroupUserHistoryConcurrent(t *testing.T) {
	t.Parallel()
	const n = 200
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/group-user-history.sql")
	s.env["HERALD_CONCURRENCY"] = "4"
	s.env["HERALD_BATCH_SIZE"] = "20"
	devs := s.newGroup(t, "devs")
	s.db.MustExec(t, `INSERT INTO users (username) SELECT 'user' || i FROM generate_series(1, $1::int) i`, n)
	var ids []int64
	require.NoError(t, s.db.Select(&ids, `SELECT id FROM users ORDER BY id`))
	require.Len(t, ids, n)

	// All events are in the stream before the worker starts, so that it
	// takes full batches and runs them side by side.
	var lines strings.Builder
	for i, id := range ids {
		b, err := json.Marshal(coreModelEvent("model_updated", "group", pkSpelling(devs, i),
			map[string]any{"diff": map[string]any{"users": map[string]any{"add": []any{id}}}}))
		require.NoError(t, err)
		lines.Write(b)
		lines.WriteByte('\n')
	}
	pks := strings.Fields(s.cli(t, lines.String(), "publish", "-f", "-"))
	require.Len(t, pks, n)
	s.start(t)

	s.waitCount(t, n, `SELECT count(*) FROM events WHERE action = 'model_updated'`)
	s.settle(t)
	got := s.userAddedHistory(t, devs)
	require.Len(t, got, n, "every addition is recorded once")
	want := make([]string, n)
	for i := range n {
		want[i] = fmt.Sprintf("user%d", i+1)
	}
	require.ElementsMatch(t, want, got)
	require.Zero(t, s.count(t, `SELECT count(*) FROM dead_letters`))
	require.Zero(t, s.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception'`))
}

// ---------------------------------------------------------------------------
// Loop guard: a policy that creates an event for every event it sees.

func TestCreatedEventChainStopsAtMaxDepth(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ('echo',
		'ak_create_event("echo", {seen: request.context.event.action}); return false;')`)
	s.db.MustExec(t, `INSERT INTO notification_rules (name) VALUES ('echo')`)
	s.db.MustExec(t, `INSERT INTO policy_bindings (target_rule_id, policy_id)
		SELECT r.id, p.id FROM notification_rules r, policies p WHERE r.name = 'echo' AND p.name = 'echo'`)
	s.start(t)

	first := s.publishEvent(t, map[string]any{"action": "login"})
	// login (depth 0) → custom_echo at depths 1, 2, 3, each evaluated, and
	// 4, created by the evaluation of depth 3: stored but matching no rule.
	s.waitCount(t, 1, `SELECT count(*) FROM events WHERE action = 'custom_echo' AND processed
		AND (context->'caused_by'->>'depth')::int = 4`)
	s.settle(t)
	waitOutboxDrained(t, s)
	s.settle(t)

	type created struct {
		ID      string `db:"id"`
		Depth   int    `db:"depth"`
		CauseID string `db:"cause"`
	}
	var chain []created
	require.NoError(t, s.db.Select(&chain, `SELECT id, (context->'caused_by'->>'depth')::int AS depth,
		context->'caused_by'->>'event' AS cause FROM events WHERE action = 'custom_echo' ORDER BY depth`))
	require.Len(t, chain, 4, "depths 1 to 4, and no event of depth 5")
	cause := first
	for i, c := range chain {
		require.Equal(t, i+1, c.Depth)
		require.Equal(t, cause, c.CauseID, "depth %d is caused by the event before it", c.Depth)
		cause = c.ID
	}
	require.Zero(t, s.count(t, `SELECT count(*) FROM events WHERE context->'caused_by'->>'event' = $1`, chain[3].ID),
		"the event of depth 4 was not evaluated")
	require.Zero(t, s.count(t, `SELECT count(*) FROM events WHERE NOT processed`))

	// The worker is still processing: a fresh event starts a chain of its own.
	fresh := s.publishEvent(t, map[string]any{"action": "logout"})
	s.waitCount(t, 1, `SELECT count(*) FROM events WHERE action = 'custom_echo'
		AND context->'caused_by'->>'event' = $1 AND context->>'seen' = 'logout'`, fresh)
	s.waitCount(t, 8, `SELECT count(*) FROM events WHERE action = 'custom_echo' AND processed`)
}

// waitOutboxDrained waits until the outbox has nothing left to publish.
func waitOutboxDrained(t *testing.T, s *stack) {
	t.Helper()
	s.waitCount(t, 0, `SELECT count(*) FROM outbox WHERE status <> 'sent'`)
}

// Concurrent batches that update the same two groups in different orders
// lock the groups in different orders, and PostgreSQL breaks the deadlock
// by failing one of them. That failure is transient: the event must be
// retried, not recorded as a failed policy with its write lost.
func TestExampleGroupUserHistoryTwoGroupsConcurrent(t *testing.T) {
	t.Parallel()
	const users = 100
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/group-user-history.sql")
	s.env["HERALD_CONCURRENCY"] = "4"
	s.env["HERALD_BATCH_SIZE"] = "20"
	groups := []string{s.newGroup(t, "devs"), s.newGroup(t, "ops")}
	s.db.MustExec(t, `INSERT INTO users (username) SELECT 'user' || i FROM generate_series(1, $1::int) i`, users)
	var ids []int64
	require.NoError(t, s.db.Select(&ids, `SELECT id FROM users ORDER BY id`))

	// Every user is added to both groups; the order of the groups varies
	// from one pair of events to the next (a fixed pattern, not random).
	var lines strings.Builder
	for i, id := range ids {
		order := []string{groups[0], groups[1]}
		if i%3 == 1 {
			order = []string{groups[1], groups[0]}
		}
		for _, g := range order {
			b, err := json.Marshal(coreModelEvent("model_updated", "group", pkSpelling(g, i),
				map[string]any{"diff": map[string]any{"users": map[string]any{"add": []any{id}}}}))
			require.NoError(t, err)
			lines.Write(b)
			lines.WriteByte('\n')
		}
	}
	require.Len(t, strings.Fields(s.cli(t, lines.String(), "publish", "-f", "-")), 2*users)
	s.start(t)

	s.waitCount(t, 2*users, `SELECT count(*) FROM events WHERE action = 'model_updated'`)
	s.settle(t)
	var failures []string
	require.NoError(t, s.db.Select(&failures, `SELECT context->>'exception' FROM events WHERE action = 'policy_exception' LIMIT 3`))
	require.Empty(t, failures, "no policy may fail because of a concurrent batch")
	for _, g := range groups {
		require.Len(t, s.userAddedHistory(t, g), users, "group %s", g)
	}
	require.Zero(t, s.count(t, `SELECT count(*) FROM dead_letters`))
}

// ak_send_email with a template of the email_templates table: the worker
// renders it with the policy's context (and the event and user) and sends
// it through SMTP, and records email_sent as authentik's send_mail does,
// caused by the event whose policy sent it.
func TestSendEmailWithTemplateFromPolicy(t *testing.T) {
	t.Parallel()
	smtpURL, api := testinfra.Mailpit(t)
	s := newStack(t)
	s.env["SMTP_URL"] = smtpURL
	address := "template." + s.db.Schema + "@herald.test"
	s.db.MustExec(t, `INSERT INTO email_templates (name, subject, text, html) VALUES ('login-notice', 'unused',
		'Hi {{.user.username}}, you logged in from {{.event.client_ip}} ({{.where}}).',
		'<p>Hi {{.user.username}}, from <b>{{.where}}</b></p>')`)
	s.db.MustExec(t, `INSERT INTO users (id, username, email) VALUES (12, 'jane', $1)`, address)
	s.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ('notice', $1)`,
		`if (request.context.event.action !== "login") return false;
ak_send_email(request.user.email, "New login", {template: "login-notice", context: {where: "Amsterdam <NL>"}}); return false;`)
	s.db.MustExec(t, `INSERT INTO notification_rules (name) VALUES ('notice')`)
	s.db.MustExec(t, `INSERT INTO policy_bindings (target_rule_id, policy_id)
		SELECT r.id, p.id FROM notification_rules r, policies p WHERE r.name = 'notice' AND p.name = 'notice'`)
	s.start(t)

	pk := s.publishEvent(t, map[string]any{"action": "login", "client_ip": "198.51.100.23",
		"user": map[string]any{"pk": 12, "username": "jane", "email": address}})
	msgs := exampleMailTo(t, api, address)
	require.Len(t, msgs, 1)
	require.Equal(t, "New login", msgs[0].Subject)
	require.Equal(t, "Hi jane, you logged in from 198.51.100.23 (Amsterdam <NL>).", strings.TrimSpace(strings.ReplaceAll(msgs[0].Text, "\r\n", "\n")))
	s.waitCount(t, 1, `SELECT count(*) FROM outbox WHERE kind = 'email' AND status = 'sent'`)

	var sent struct {
		App     string `db:"app"`
		Context []byte `db:"context"`
	}
	require.NoError(t, s.db.Get(&sent, `SELECT app, context FROM events WHERE action = 'email_sent'`))
	require.Equal(t, "authentik.stages.email.tasks", sent.App)
	var c map[string]any
	require.NoError(t, json.Unmarshal(sent.Context, &c))
	require.Equal(t, "Email to "+address+" sent", c["message"])
	require.Equal(t, "New login", c["subject"])
	require.Equal(t, "<p>Hi jane, from <b>Amsterdam &lt;NL&gt;</b></p>", c["body"], "the HTML part, as authentik's get_email_body")
	require.Equal(t, "herald@localhost", c["from_email"])
	require.Equal(t, []any{address}, c["to_email"])
	causedBy, _ := c["caused_by"].(map[string]any)
	require.Equal(t, pk, causedBy["event"])
	require.Equal(t, float64(1), causedBy["depth"])
}
