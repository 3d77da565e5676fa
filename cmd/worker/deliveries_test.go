package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/mailer"
	"github.com/heraldhq/herald/rules"
)

// Integration tests of deliveries: the webhook, Slack and email transports,
// retries with backoff, the dead state, `worker deliveries`, and that
// nothing is sent twice.

// deliveryStack is a worker stack with short delivery backoffs and helpers
// to seed users, rules and transports.
type deliveryStack struct {
	*stack
}

func newDeliveryStack(t *testing.T) *deliveryStack {
	t.Helper()
	s := newStack(t)
	s.env["HERALD_DELIVERY_MIN_BACKOFF"] = "50ms"
	s.env["HERALD_DELIVERY_MAX_BACKOFF"] = "200ms"
	return &deliveryStack{stack: s}
}

// testUser is a seeded row of users.
type testUser struct {
	ID       int64
	Username string
	Email    string
}

func (d *deliveryStack) user(t *testing.T, id int64, username, email string) testUser {
	t.Helper()
	d.db.MustExec(t, `INSERT INTO users (id, username, name, email) VALUES ($1, $2, $3, $4)`,
		id, username, strings.ToUpper(username[:1])+username[1:], email)
	return testUser{ID: id, Username: username, Email: email}
}

// rule seeds an enabled rule (severity warning, notifying the event's user)
// bound to an event matcher on matchAction, or, when matchAction is empty,
// to an expression policy that always passes.
func (d *deliveryStack) rule(t *testing.T, name, matchAction string) {
	t.Helper()
	if matchAction != "" {
		d.db.MustExec(t, `INSERT INTO policies (name, kind, match_action) VALUES ($1, 'event_matcher', $2)`, name+"-policy", matchAction)
	} else {
		d.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ($1, 'return true;')`, name+"-policy")
	}
	d.db.MustExec(t, `INSERT INTO notification_rules (name, severity, destination_event_user) VALUES ($1, 'warning', true)`, name)
	d.db.MustExec(t, `INSERT INTO policy_bindings (target_rule_id, policy_id)
		SELECT r.id, p.id FROM notification_rules r, policies p WHERE r.name = $1 AND p.name = $2`, name, name+"-policy")
}

// destinationGroup makes a group of members the rule's destination group.
func (d *deliveryStack) destinationGroup(t *testing.T, rule, group string, members ...testUser) {
	t.Helper()
	d.db.MustExec(t, `INSERT INTO groups (name) VALUES ($1)`, group)
	for _, m := range members {
		d.db.MustExec(t, `INSERT INTO group_members (group_id, user_id) SELECT id, $2 FROM groups WHERE name = $1`, group, m.ID)
	}
	d.db.MustExec(t, `UPDATE notification_rules SET destination_group_id = (SELECT id FROM groups WHERE name = $2) WHERE name = $1`, rule, group)
}

// transport seeds a transport of mode (with webhook_url) used by rule and
// returns its id.
func (d *deliveryStack) transport(t *testing.T, rule, name, mode, webhookURL string) string {
	t.Helper()
	var id string
	require.NoError(t, d.db.GetContext(t.Context(), &id,
		`INSERT INTO notification_transports (name, mode, webhook_url) VALUES ($1, $2, $3) RETURNING id`, name, mode, webhookURL))
	d.db.MustExec(t, `INSERT INTO notification_rule_transports (rule_id, transport_id)
		SELECT id, $2 FROM notification_rules WHERE name = $1`, rule, id)
	return id
}

// mapping seeds a webhook mapping and returns its id.
func (d *deliveryStack) mapping(t *testing.T, name, expression string) string {
	t.Helper()
	var id string
	require.NoError(t, d.db.GetContext(t.Context(), &id,
		`INSERT INTO webhook_mappings (name, expression) VALUES ($1, $2) RETURNING id`, name, expression))
	return id
}

// bodyMapping seeds a webhook mapping and makes it the body mapping of the
// transport with id.
func (d *deliveryStack) bodyMapping(t *testing.T, transport, name, expression string) {
	t.Helper()
	d.db.MustExec(t, `UPDATE notification_transports SET webhook_mapping_body_id = $2 WHERE id = $1`, transport, d.mapping(t, name, expression))
}

// publish publishes an event with action by user (none when user is the
// zero value) and the context JSON, and returns its pk.
func (d *deliveryStack) publish(t *testing.T, action string, user testUser, context string) string {
	t.Helper()
	args := []string{"publish", "-action", action, "-context", context}
	if user.ID != 0 {
		args = append(args, "-user-pk", fmt.Sprint(user.ID), "-username", user.Username, "-email", user.Email)
	}
	return strings.TrimSpace(d.cli(t, "", args...))
}

// deliveryRow is a row of deliveries with the recipient's username.
type deliveryRow struct {
	ID        string     `db:"id"`
	Status    string     `db:"status"`
	Attempts  int        `db:"attempts"`
	LastError string     `db:"last_error"`
	SentAt    *time.Time `db:"sent_at"`
	Username  string     `db:"username"`
	Transport string     `db:"transport"`
}

const selectDeliveriesCount = `SELECT count(*)
FROM deliveries d
JOIN notifications n ON n.id = d.notification_id
JOIN notification_transports t ON t.id = d.transport_id
WHERE n.event_id::text = $1`

const selectDeliveries = `SELECT d.id, d.status, d.attempts, d.last_error, d.sent_at, u.username, t.name AS transport
FROM deliveries d
JOIN notifications n ON n.id = d.notification_id
JOIN users u ON u.id = n.user_id
JOIN notification_transports t ON t.id = d.transport_id
WHERE n.event_id = $1`

// deliveries returns the deliveries of an event, by transport name and
// username.
func (d *deliveryStack) deliveries(t *testing.T, eventPK string) []deliveryRow {
	t.Helper()
	var rows []deliveryRow
	require.NoError(t, d.db.SelectContext(t.Context(), &rows, selectDeliveries+` ORDER BY t.name, u.username`, eventPK))
	return rows
}

// waitDelivery waits until the event's one delivery through transport has
// status, and returns it; it fails with the last row seen.
func (d *deliveryStack) waitDelivery(t *testing.T, eventPK, transport, status string) deliveryRow {
	t.Helper()
	var rows []deliveryRow
	deadline := time.Now().Add(20 * time.Second)
	for {
		rows = rows[:0]
		require.NoError(t, d.db.SelectContext(t.Context(), &rows, selectDeliveries+` AND t.name = $2`, eventPK, transport))
		if len(rows) == 1 && rows[0].Status == status {
			return rows[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery of event %s through %q: want status %q, have %+v", eventPK, transport, status, rows)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// startAnotherWorker runs a second `worker run` on the same database,
// stream and consumer until the test ends.
func (d *deliveryStack) startAnotherWorker(t *testing.T) {
	t.Helper()
	cfg, err := loadConfig(d.getenv, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})).With(slog.String("worker", "second"))
	go func() { done <- run(ctx, cfg, logger) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done, "second worker")
	})
}

// done reports whether a delivery is neither waiting for nor in an attempt.
func done(r deliveryRow) bool { return r.Status != "pending" && r.Status != "sending" }

// quiet waits long enough for the dispatcher to have polled at least
// twice (it polls every second), so a check can see what did not happen.
func quiet() { time.Sleep(2500 * time.Millisecond) }

// webhookSink is an HTTP server that records every request and answers
// the n-th (from 1) with the status respond returns; respond may block to
// play a slow receiver (r's context ends when the client gives up).
type webhookSink struct {
	srv     *httptest.Server
	respond func(n int, r *http.Request) int
	mu      sync.Mutex
	reqs    []sinkRequest
}

type sinkRequest struct {
	Method string
	Header http.Header
	Body   []byte
}

func newWebhookSink(t *testing.T, respond func(n int, r *http.Request) int) *webhookSink {
	t.Helper()
	w := &webhookSink{respond: respond}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.mu.Lock()
		w.reqs = append(w.reqs, sinkRequest{Method: r.Method, Header: r.Header.Clone(), Body: body})
		n := len(w.reqs)
		w.mu.Unlock()
		status := http.StatusOK
		if w.respond != nil {
			status = w.respond(n, r)
		}
		rw.WriteHeader(status)
		fmt.Fprintf(rw, "answer %d", n)
	}))
	t.Cleanup(w.srv.Close)
	return w
}

func (w *webhookSink) URL() string { return w.srv.URL + "/hook" }

func (w *webhookSink) requests() []sinkRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]sinkRequest(nil), w.reqs...)
}

// wait waits until the sink has received at least n requests and returns
// all of them.
func (w *webhookSink) wait(t *testing.T, n int) []sinkRequest {
	t.Helper()
	require.Eventually(t, func() bool { return len(w.requests()) >= n }, 20*time.Second, 10*time.Millisecond,
		"want %d webhook requests", n)
	return w.requests()
}

// decode returns a request's JSON body.
func (r sinkRequest) decode(t *testing.T) map[string]any {
	t.Helper()
	var v map[string]any
	require.NoError(t, json.Unmarshal(r.Body, &v), "webhook body %s", r.Body)
	return v
}

func TestWebhookDeliveryDefaultBody(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	sink := newWebhookSink(t, nil)
	jane := d.user(t, 12, "jane", "jane@example.com")
	bob := d.user(t, 13, "bob", "bob@example.com")
	d.rule(t, "login-hook", "login")
	d.db.MustExec(t, `UPDATE notification_rules SET destination_event_user = false`)
	d.destinationGroup(t, "login-hook", "ops", bob)
	d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	d.start(t)

	withUser := d.publish(t, "login", jane, `{"message": "Jane logged in from 198.51.100.23"}`)
	del := d.waitDelivery(t, withUser, "hook", "sent")
	reqs := sink.wait(t, 1)
	require.Len(t, reqs, 1)
	req := reqs[0]
	require.Equal(t, http.MethodPost, req.Method)
	require.Equal(t, "application/json", req.Header.Get("Content-Type"))
	require.Equal(t, del.ID, req.Header.Get("Idempotency-Key"))
	require.JSONEq(t, `{
		"body": "Jane logged in from 198.51.100.23",
		"severity": "warning",
		"user_email": "bob@example.com",
		"user_username": "bob",
		"event_user_email": "jane@example.com",
		"event_user_username": "jane"
	}`, string(req.Body))
	require.Equal(t, 1, del.Attempts)
	require.NotNil(t, del.SentAt)
	require.Empty(t, del.LastError)
	require.Equal(t, "bob", del.Username)

	// Without an event user there are no event_user_* keys, and without
	// context.message the body is "<action>: <context as JSON>".
	anonymous := d.publish(t, "login", testUser{}, `{"auth_method": "password"}`)
	del = d.waitDelivery(t, anonymous, "hook", "sent")
	reqs = sink.wait(t, 2)
	require.Len(t, reqs, 2)
	require.Equal(t, del.ID, reqs[1].Header.Get("Idempotency-Key"))
	require.JSONEq(t, `{
		"body": "login: {\"auth_method\":\"password\"}",
		"severity": "warning",
		"user_email": "bob@example.com",
		"user_username": "bob"
	}`, string(reqs[1].Body))
}

func TestWebhookDeliveryMappedBodyAndHeaders(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	sink := newWebhookSink(t, nil)
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "login-hook", "login")
	hook := d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	body := d.mapping(t, "chat-body", `return {text: notification.body, who: user.username, severity: notification.severity};`)
	headers := d.mapping(t, "chat-headers", `return {"X-Token": "abc", "X-Event": request.context.notification.event.action};`)
	d.db.MustExec(t, `UPDATE notification_transports SET webhook_mapping_body_id = $2, webhook_mapping_headers_id = $3 WHERE id = $1`,
		hook, body, headers)
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	del := d.waitDelivery(t, pk, "hook", "sent")
	reqs := sink.wait(t, 1)
	require.Len(t, reqs, 1)
	require.JSONEq(t, `{"text": "hello", "who": "jane", "severity": "warning"}`, string(reqs[0].Body))
	require.Equal(t, "abc", reqs[0].Header.Get("X-Token"))
	require.Equal(t, "login", reqs[0].Header.Get("X-Event"))
	require.Equal(t, "application/json", reqs[0].Header.Get("Content-Type"))
	require.Equal(t, del.ID, reqs[0].Header.Get("Idempotency-Key"))
}

// A headers mapping may set Content-Type, a null header is left out, and a
// final 3xx answer is no failure, as with authentik's requests.
func TestWebhookDeliveryHeadersAndRedirectAnswer(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	sink := newWebhookSink(t, func(int, *http.Request) int { return http.StatusNotModified })
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "login-hook", "login")
	hook := d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	headers := d.mapping(t, "typed-headers", `return {"Content-Type": "application/vnd.api+json", "X-Absent": null, "X-Count": 2};`)
	d.db.MustExec(t, `UPDATE notification_transports SET webhook_mapping_headers_id = $2 WHERE id = $1`, hook, headers)
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	d.waitDelivery(t, pk, "hook", "sent")
	reqs := sink.wait(t, 1)
	require.Len(t, reqs, 1, "sent once")
	require.Equal(t, "application/vnd.api+json", reqs[0].Header.Get("Content-Type"))
	require.NotContains(t, reqs[0].Header, "X-Absent")
	require.Equal(t, "2", reqs[0].Header.Get("X-Count"))
}

func TestWebhookDeliveryRetriedUntilItSucceeds(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	sink := newWebhookSink(t, func(n int, _ *http.Request) int {
		if n <= 3 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "login-hook", "login")
	d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	del := d.waitDelivery(t, pk, "hook", "sent")
	quiet()
	reqs := sink.requests()
	require.Len(t, reqs, 4, "three failures, then one success, then nothing")
	for i, r := range reqs {
		require.Equal(t, del.ID, r.Header.Get("Idempotency-Key"), "attempt %d", i+1)
		require.Equal(t, string(reqs[0].Body), string(r.Body), "attempt %d", i+1)
	}
	del = d.deliveries(t, pk)[0]
	require.Equal(t, "sent", del.Status)
	require.Equal(t, 4, del.Attempts)
	require.Empty(t, del.LastError, "a sent delivery keeps no error")
	require.NotNil(t, del.SentAt)
}

func TestWebhookDeliveryDeadAndRetriedFromTheCLI(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	d.env["HERALD_DELIVERY_MAX_ATTEMPTS"] = "3"
	var status atomic.Int32
	status.Store(http.StatusInternalServerError)
	sink := newWebhookSink(t, func(int, *http.Request) int { return int(status.Load()) })
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "login-hook", "login")
	d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	d.transport(t, "login-hook", "inbox", "local", "")
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	dead := d.waitDelivery(t, pk, "hook", "dead")
	require.Equal(t, 3, dead.Attempts)
	require.Contains(t, dead.LastError, "HTTP 500")
	require.Nil(t, dead.SentAt)
	inbox := d.waitDelivery(t, pk, "inbox", "sent")
	quiet()
	require.Len(t, sink.requests(), 3, "a dead delivery is not tried again")

	// `worker deliveries` lists the dead delivery first, with its error.
	lines := strings.Split(strings.TrimSpace(d.cli(t, "", "deliveries")), "\n")
	require.Len(t, lines, 3, "a header and two deliveries:\n%s", strings.Join(lines, "\n"))
	require.Contains(t, lines[0], "STATUS")
	require.Contains(t, lines[1], dead.ID)
	require.Regexp(t, `\bdead\s+3\b`, lines[1])
	require.Contains(t, lines[1], "HTTP 500")
	require.Contains(t, lines[2], inbox.ID)
	require.Contains(t, lines[2], "sent")
	only := strings.TrimSpace(d.cli(t, "", "deliveries", "-status", "dead"))
	require.Len(t, strings.Split(only, "\n"), 2, "header and the dead delivery:\n%s", only)

	// A sent delivery is not sent again by `retry ID`.
	require.Contains(t, d.cli(t, "", "deliveries", "retry", inbox.ID), "0 deliveries back to pending")

	// IDs and --dead do not mix, and a flag after the IDs is no ID.
	for args, want := range map[string]string{"--dead " + dead.ID: "not both", dead.ID + " --dead": "flags go before them"} {
		err := dispatch(t.Context(), append([]string{"deliveries", "retry"}, strings.Fields(args)...), d.getenv, strings.NewReader(""), io.Discard, io.Discard)
		require.ErrorContains(t, err, want)
	}
	require.Equal(t, "dead", d.waitDelivery(t, pk, "hook", "dead").Status)

	status.Store(http.StatusOK)
	require.Contains(t, d.cli(t, "", "deliveries", "retry", "--dead"), "1 deliveries back to pending")
	sent := d.waitDelivery(t, pk, "hook", "sent")
	require.Equal(t, dead.ID, sent.ID)
	require.Equal(t, 1, sent.Attempts, "retry starts a fresh attempt count")
	require.NotNil(t, sent.SentAt)
	quiet()
	reqs := sink.requests()
	require.Len(t, reqs, 4)
	require.Equal(t, dead.ID, reqs[3].Header.Get("Idempotency-Key"))
}

func TestWebhookDeliveryWithoutURLIsDeadAtOnce(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "login-hook", "login")
	d.transport(t, "login-hook", "hook", "webhook", "")
	d.start(t)

	pk := d.publish(t, "login", jane, `{}`)
	del := d.waitDelivery(t, pk, "hook", "dead")
	require.Equal(t, 1, del.Attempts)
	require.Contains(t, del.LastError, "no webhook_url")
}

func TestWebhookDeliveryTimeoutIsRetried(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	d.env["HERALD_WEBHOOK_TIMEOUT"] = "200ms"
	release := make(chan struct{})
	var hung sync.Once
	sink := newWebhookSink(t, func(n int, _ *http.Request) int {
		if n == 1 {
			hung.Do(func() {
				select {
				case <-release:
				case <-time.After(5 * time.Second):
				}
			})
		}
		return http.StatusOK
	})
	t.Cleanup(func() { close(release) })
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "login-hook", "login")
	d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	d.start(t)

	pk := d.publish(t, "login", jane, `{}`)
	del := d.waitDelivery(t, pk, "hook", "sent")
	require.Equal(t, 2, del.Attempts, "the first POST timed out, the second one went through")
	reqs := sink.requests()
	require.Len(t, reqs, 2)
	require.Equal(t, reqs[0].Header.Get("Idempotency-Key"), reqs[1].Header.Get("Idempotency-Key"))
}

// Mappings read models and use the helpers that read, as authentik's
// property mappings do, in a read-only transaction: a save is refused.
func TestWebhookMappingReadsModels(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	d.env["HERALD_DELIVERY_MAX_ATTEMPTS"] = "1"
	sink := newWebhookSink(t, nil)
	jane := d.user(t, 12, "jane", "jane@example.com")
	bob := d.user(t, 13, "bob", "bob@example.com")
	d.rule(t, "login-hook", "login")
	d.destinationGroup(t, "login-hook", "admins", bob)
	hook := d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	d.bodyMapping(t, hook, "reader", `const bob = ak_user_by({username: "bob"});
const me = User.objects.filter({pk: user.pk}).first();
return {recipient: me.username, bob: bob.email, admin: ak_is_group_member(me, {name: "admins"}),
        admins: Group.objects.filter({name: "admins"}).count()};`)
	saver := d.transport(t, "login-hook", "saver", "webhook", sink.URL())
	d.bodyMapping(t, saver, "saver", `const me = User.objects.filter({pk: user.pk}).first(); me.name = "Changed"; me.save(); return {};`)
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	require.Eventually(t, func() bool {
		return d.count(t, selectDeliveriesCount+` AND t.name = 'hook' AND d.status = 'sent'`, pk) == 2
	}, 20*time.Second, 25*time.Millisecond, "both deliveries through hook are sent: %+v", d.deliveries(t, pk))
	bodies := map[string]string{}
	for _, r := range sink.wait(t, 2) {
		b := r.decode(t)
		bodies[b["recipient"].(string)] = string(r.Body)
	}
	require.JSONEq(t, `{"recipient": "jane", "bob": "bob@example.com", "admin": false, "admins": 1}`, bodies["jane"])
	require.JSONEq(t, `{"recipient": "bob", "bob": "bob@example.com", "admin": true, "admins": 1}`, bodies["bob"])

	var dead []deliveryRow
	require.Eventually(t, func() bool {
		dead = dead[:0]
		require.NoError(t, d.db.SelectContext(t.Context(), &dead, selectDeliveries+` AND t.name = 'saver' AND d.status = 'dead'`, pk))
		return len(dead) == 2
	}, 20*time.Second, 25*time.Millisecond)
	require.Contains(t, dead[0].LastError, "User.save: objects cannot be saved here")
	require.Equal(t, 0, d.count(t, `SELECT count(*) FROM users WHERE name = 'Changed'`))
	quiet()
	require.Len(t, sink.requests(), 2, "the saver posted nothing")
}

func TestWebhookDeliveryFailingMappingIsRetried(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	d.env["HERALD_DELIVERY_MAX_ATTEMPTS"] = "50"
	sink := newWebhookSink(t, nil)
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "login-hook", "login")
	hook := d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	d.bodyMapping(t, hook, "explode", `throw new Error("boom for " + user.username);`)
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	const exceptions = `SELECT count(*) FROM events WHERE action = 'property_mapping_exception'
		AND context->>'mapping' = 'explode' AND context->'caused_by'->>'event' = $1`
	require.Eventually(t, func() bool { return d.count(t, exceptions, pk) >= 2 }, 20*time.Second, 25*time.Millisecond,
		"a property_mapping_exception event on every attempt")
	var exc struct {
		Message   string `db:"message"`
		Exception string `db:"exception"`
		Username  string `db:"username"`
	}
	require.NoError(t, d.db.GetContext(t.Context(), &exc, `SELECT context->>'message' AS message,
		context->>'exception' AS exception, "user"->>'username' AS username
		FROM events WHERE action = 'property_mapping_exception' AND context->'caused_by'->>'event' = $1 LIMIT 1`, pk))
	require.Equal(t, "Failed to execute property mapping", exc.Message)
	require.Contains(t, exc.Exception, "boom for jane")
	require.Equal(t, "jane", exc.Username, "the event's user is the recipient")

	failed := d.waitDelivery(t, pk, "hook", "failed")
	require.GreaterOrEqual(t, failed.Attempts, 2)
	require.Contains(t, failed.LastError, "boom for jane")
	require.Empty(t, sink.requests(), "nothing is posted while the mapping throws")

	// Fixing the mapping lets the next attempt through.
	d.db.MustExec(t, `UPDATE webhook_mappings SET expression = 'return {fixed: notification.body};' WHERE name = 'explode'`)
	sent := d.waitDelivery(t, pk, "hook", "sent")
	reqs := sink.wait(t, 1)
	quiet()
	require.Len(t, sink.requests(), 1)
	require.JSONEq(t, `{"fixed": "hello"}`, string(reqs[0].Body))
	require.Equal(t, sent.Attempts-1, d.count(t, exceptions, pk), "one exception event per failed attempt")
}

// notificationRow is the notification of an event, as a mapping may have
// changed it.
type notificationRow struct {
	Body           string  `db:"body"`
	Severity       string  `db:"severity"`
	Hyperlink      *string `db:"hyperlink"`
	HyperlinkLabel *string `db:"hyperlink_label"`
}

func (d *deliveryStack) notification(t *testing.T, eventPK string) notificationRow {
	t.Helper()
	var n notificationRow
	require.NoError(t, d.db.GetContext(t.Context(), &n,
		`SELECT body, severity, hyperlink, hyperlink_label FROM notifications WHERE event_id = $1`, eventPK))
	return n
}

// A body mapping on a local transport changes the stored notification, as
// authentik's send_local does; what it returns is discarded. The rule's
// other transports send the notification as the rule made it.
func TestLocalDeliveryBodyMappingChangesTheNotification(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	d.env["HERALD_DELIVERY_MAX_ATTEMPTS"] = "50"
	jane := d.user(t, 15, "jane", "jane@example.com")
	d.rule(t, "login-inbox", "login")
	inbox := d.transport(t, "login-inbox", "inbox", "local", "")
	d.bodyMapping(t, inbox, "inbox-body", `notification.body = "Hi " + user.username + ", " + notification.body;
notification.severity = "alert";
notification.hyperlink = "https://id.example.com/events/" + notification.event.pk;
return {ignored: true};`)
	// The webhook fails its first attempt and those made before the
	// inbox's mapping stored its change, so that it sends after it.
	var pk atomic.Value
	pk.Store("")
	sink := newWebhookSink(t, func(n int, _ *http.Request) int {
		if n > 1 && d.count(t, selectDeliveriesCount+` AND t.name = 'inbox' AND d.status = 'sent'`, pk.Load()) == 1 {
			return http.StatusOK
		}
		return http.StatusServiceUnavailable
	})
	d.transport(t, "login-inbox", "hook", "webhook", sink.URL())
	d.start(t)

	pk.Store(d.publish(t, "login", jane, `{"message": "signed in", "hyperlink_label": "Open"}`))
	event := pk.Load().(string)
	sent := d.waitDelivery(t, event, "inbox", "sent")
	require.Equal(t, 1, sent.Attempts)
	n := d.notification(t, event)
	require.Equal(t, "Hi jane, signed in", n.Body)
	require.Equal(t, "alert", n.Severity)
	require.NotNil(t, n.Hyperlink)
	require.Equal(t, "https://id.example.com/events/"+event, *n.Hyperlink)
	require.NotNil(t, n.HyperlinkLabel)
	require.Equal(t, "Open", *n.HyperlinkLabel, "a field the mapping left alone is kept")

	hook := d.waitDelivery(t, event, "hook", "sent")
	require.GreaterOrEqual(t, hook.Attempts, 2)
	reqs := sink.requests()
	last := reqs[len(reqs)-1].decode(t)
	require.Equal(t, "signed in", last["body"], "the webhook sends the rule's body")
	require.Equal(t, "warning", last["severity"])
	quiet()
	require.Equal(t, "Hi jane, signed in", d.notification(t, event).Body, "the mapping's change is stored once")
}

// Two local transports with mappings both change the notification, one
// after the other; a mapping may change it through request.context too.
func TestLocalDeliveryTwoMappingsBothApply(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	jane := d.user(t, 17, "jane", "jane@example.com")
	d.rule(t, "login-inbox", "login")
	for name, expr := range map[string]string{
		"first":  `notification.body = "A: " + notification.body;`,
		"second": `request.context.notification.severity = "alert";`,
	} {
		d.bodyMapping(t, d.transport(t, "login-inbox", name, "local", ""), name+"-body", expr)
	}
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "signed in"}`)
	d.waitDelivery(t, pk, "first", "sent")
	d.waitDelivery(t, pk, "second", "sent")
	require.Equal(t, notificationRow{Body: "A: signed in", Severity: "alert"}, d.notification(t, pk))
	var unmapped string
	require.NoError(t, d.db.GetContext(t.Context(), &unmapped, `SELECT unmapped::text FROM notifications WHERE event_id = $1`, pk))
	require.JSONEq(t, `{"body": "signed in", "severity": "warning", "hyperlink": null, "hyperlink_label": null}`, unmapped)
}

// A local mapping that throws records property_mapping_exception and is
// retried, leaving the notification as the rule made it meanwhile; one
// that sets a severity that does not exist makes the delivery dead.
func TestLocalDeliveryFailingMapping(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	d.env["HERALD_DELIVERY_MAX_ATTEMPTS"] = "50"
	jane := d.user(t, 16, "jane", "jane@example.com")
	d.rule(t, "login-inbox", "login")
	inbox := d.transport(t, "login-inbox", "inbox", "local", "")
	d.bodyMapping(t, inbox, "inbox-body", `throw new Error("no inbox for " + user.username);`)
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "signed in"}`)
	failed := d.waitDelivery(t, pk, "inbox", "failed")
	require.Contains(t, failed.LastError, "no inbox for jane")
	require.GreaterOrEqual(t, d.count(t, `SELECT count(*) FROM events WHERE action = 'property_mapping_exception'
		AND context->>'mapping' = 'inbox-body' AND context->'caused_by'->>'event' = $1`, pk), 1)
	require.Equal(t, notificationRow{Body: "signed in", Severity: "warning"}, d.notification(t, pk))

	d.db.MustExec(t, `UPDATE webhook_mappings SET expression = 'notification.severity = "critical";' WHERE name = 'inbox-body'`)
	dead := d.waitDelivery(t, pk, "inbox", "dead")
	require.Contains(t, dead.LastError, `notification.severity to the string "critical"`)
	require.Equal(t, notificationRow{Body: "signed in", Severity: "warning"}, d.notification(t, pk))
}

func TestSlackDeliveryBody(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	sink := newWebhookSink(t, nil)
	jane := d.user(t, 12, "jane", "jane@example.com")
	bob := d.user(t, 13, "bob", "bob@example.com")
	d.rule(t, "slack", "") // always true
	d.db.MustExec(t, `UPDATE notification_rules SET destination_event_user = false`)
	d.destinationGroup(t, "slack", "ops", bob)
	d.transport(t, "slack", "slack", "webhook_slack", sink.URL())
	d.start(t)

	type field struct {
		Title string `json:"title"`
		Value string `json:"value"`
		Short *bool  `json:"short"`
	}
	type slackBody struct {
		Attachments []struct {
			Title  string  `json:"title"`
			Color  string  `json:"color"`
			Fields []field `json:"fields"`
		} `json:"attachments"`
	}
	post := func(pk string) slackBody {
		t.Helper()
		del := d.waitDelivery(t, pk, "slack", "sent")
		for _, r := range sink.requests() {
			if r.Header.Get("Idempotency-Key") == del.ID {
				require.Equal(t, "application/json", r.Header.Get("Content-Type"))
				var b slackBody
				require.NoError(t, json.Unmarshal(r.Body, &b), "%s", r.Body)
				require.Len(t, b.Attachments, 1, "%s", r.Body)
				return b
			}
		}
		t.Fatalf("no POST with Idempotency-Key %s", del.ID)
		return slackBody{}
	}
	yes := true
	header := []field{
		{Title: "Severity", Value: "warning", Short: &yes},
		{Title: "Dispatched for user", Value: "bob", Short: &yes},
		{Title: "Event user", Value: "jane", Short: &yes},
	}

	// Only top-level string context entries become fields.
	small := post(d.publish(t, "model_created", jane,
		`{"message": "made it", "ip": "198.51.100.23", "count": 3, "model": {"app": "authentik_core", "name": "x"}, "ok": true}`))
	a := small.Attachments[0]
	require.Equal(t, "model_created", a.Title)
	require.Equal(t, "#fd4b2d", a.Color)
	require.Equal(t, header, a.Fields[:3])
	require.ElementsMatch(t, []field{{Title: "message", Value: "made it"}, {Title: "ip", Value: "198.51.100.23"}}, a.Fields[3:])

	// At most 25 fields in all.
	big := map[string]any{"nested": map[string]any{"a": "b"}}
	for i := range 40 {
		big[fmt.Sprintf("entry%02d", i)] = fmt.Sprintf("value %d", i)
	}
	bigJSON, err := json.Marshal(big)
	require.NoError(t, err)
	large := post(d.publish(t, "custom_big", jane, string(bigJSON)))
	a = large.Attachments[0]
	require.Equal(t, "custom_big", a.Title)
	require.Len(t, a.Fields, 25)
	require.Equal(t, header, a.Fields[:3])
	seen := map[string]bool{}
	for _, f := range a.Fields[3:] {
		require.Equal(t, big[f.Title], f.Value, "field %q", f.Title)
		require.False(t, seen[f.Title], "field %q twice", f.Title)
		seen[f.Title] = true
	}
}

func TestSendOnceDeliversToTheEventUserOnly(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	sink := newWebhookSink(t, nil)
	jane := d.user(t, 12, "jane", "jane@example.com")
	members := []testUser{
		d.user(t, 2, "amy", "amy@example.com"),
		d.user(t, 3, "bob", "bob@example.com"),
		d.user(t, 4, "cat", "cat@example.com"),
	}
	d.rule(t, "once", "login")
	d.destinationGroup(t, "once", "ops", members...)
	hook := d.transport(t, "once", "hook-once", "webhook", sink.URL())
	inbox := d.transport(t, "once", "inbox-once", "local", "")
	d.db.MustExec(t, `UPDATE notification_transports SET send_once = true WHERE id IN ($1, $2)`, hook, inbox)
	d.transport(t, "once", "inbox-all", "local", "")
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	d.waitDelivery(t, pk, "hook-once", "sent")
	d.settle(t)
	quiet()
	var got []string
	for _, r := range d.deliveries(t, pk) {
		got = append(got, r.Transport+" → "+r.Username+" ("+r.Status+")")
	}
	require.Equal(t, []string{
		"hook-once → jane (sent)",
		"inbox-all → amy (sent)",
		"inbox-all → bob (sent)",
		"inbox-all → cat (sent)",
		"inbox-all → jane (sent)",
		"inbox-once → jane (sent)",
	}, got)
	reqs := sink.requests()
	require.Len(t, reqs, 1)
	require.Equal(t, "jane", reqs[0].decode(t)["user_username"])
}

func TestWebhookDeliveryNotRepeatedAfterRestart(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	sink := newWebhookSink(t, nil)
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "login-hook", "login")
	d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	first := d.waitDelivery(t, pk, "hook", "sent")
	d.settle(t)
	d.stop(t)
	d.start(t)
	d.settle(t)
	quiet()
	require.Len(t, sink.requests(), 1, "the restarted worker sends nothing again")
	again := d.deliveries(t, pk)
	require.Len(t, again, 1)
	require.Equal(t, first.ID, again[0].ID)
	require.Equal(t, 1, again[0].Attempts)
	require.Equal(t, first.SentAt.UTC(), again[0].SentAt.UTC())
}

// mailpitMail is a message as Mailpit's API returns it.
type mailpitMail struct {
	ID        string `json:"ID"`
	MessageID string `json:"MessageID"`
	Subject   string `json:"Subject"`
	Text      string `json:"Text"`
	To        []struct {
		Name    string `json:"Name"`
		Address string `json:"Address"`
	} `json:"To"`
}

func mailpitGet(t *testing.T, u string, v any) {
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

// mailpitTo returns every message Mailpit holds for address, in full.
func mailpitTo(t *testing.T, api, address string) []mailpitMail {
	t.Helper()
	var res struct {
		Messages []struct {
			ID string `json:"ID"`
		} `json:"messages"`
	}
	mailpitGet(t, api+"/api/v1/search?query="+url.QueryEscape("to:"+address), &res)
	out := make([]mailpitMail, len(res.Messages))
	for i, m := range res.Messages {
		mailpitGet(t, api+"/api/v1/message/"+m.ID, &out[i])
	}
	return out
}

// waitMailpit waits until Mailpit holds at least one message for address
// and returns them all.
func waitMailpit(t *testing.T, api, address string) []mailpitMail {
	t.Helper()
	var msgs []mailpitMail
	require.Eventually(t, func() bool {
		msgs = mailpitTo(t, api, address)
		return len(msgs) > 0
	}, 20*time.Second, 50*time.Millisecond, "no email to %s", address)
	return msgs
}

// messageID is the Message-ID the worker's mailer gives a delivery's email.
func messageID(t *testing.T, deliveryID string) string {
	t.Helper()
	m, err := mailer.New(mailer.Config{})
	require.NoError(t, err)
	return strings.Trim(m.MessageID("delivery:"+deliveryID), "<>")
}

func TestEmailDelivery(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	smtpURL, api := testinfra.Mailpit(t)
	d.env["SMTP_URL"] = smtpURL
	id := testinfra.Name(t)
	jane := d.user(t, 12, "jane", "jane."+id+"@herald.test")
	nomail := d.user(t, 13, "nomail", "")
	d.rule(t, "login-mail", "login")
	d.destinationGroup(t, "login-mail", "ops", nomail)
	mail := d.transport(t, "login-mail", "mail", "email", "")
	subjectPrefix := "[" + id + "] "
	d.db.MustExec(t, `UPDATE notification_transports SET email_subject_prefix = $2 WHERE id = $1`, mail, subjectPrefix)
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "Jane logged in from 198.51.100.23", "client": "firefox"}`)
	var rows []deliveryRow
	require.Eventually(t, func() bool {
		rows = d.deliveries(t, pk)
		return len(rows) == 2 && done(rows[0]) && done(rows[1])
	}, 20*time.Second, 25*time.Millisecond, "%+v", rows)
	require.Equal(t, "jane", rows[0].Username)
	require.Equal(t, "sent", rows[0].Status, "%+v", rows[0])
	require.Equal(t, "nomail", rows[1].Username)
	require.Equal(t, "skipped", rows[1].Status, "a user without email is skipped, not failed: %+v", rows[1])
	require.Equal(t, 1, rows[1].Attempts)
	require.Contains(t, rows[1].LastError, "no email")

	msgs := waitMailpit(t, api, jane.Email)
	require.Len(t, msgs, 1)
	msg := msgs[0]
	require.Equal(t, subjectPrefix+"login", msg.Subject)
	require.Len(t, msg.To, 1)
	require.Equal(t, jane.Email, msg.To[0].Address)
	require.Equal(t, "Jane", msg.To[0].Name)
	require.Contains(t, msg.Text, "Jane logged in from 198.51.100.23")
	require.Equal(t, messageID(t, rows[0].ID), msg.MessageID, "the Message-ID derives from the delivery")

	const sentEvents = `SELECT count(*) FROM events WHERE action = 'email_sent'
		AND context->'caused_by'->>'event' = $1 AND context->>'subject' = $2 AND context->'to_email' = $3::jsonb`
	toJSON, _ := json.Marshal([]string{jane.Email})
	d.waitCount(t, 1, sentEvents, pk, subjectPrefix+"login", string(toJSON))
	d.settle(t)
	quiet()
	require.Len(t, mailpitTo(t, api, jane.Email), 1)
	require.Equal(t, 1, d.count(t, `SELECT count(*) FROM events WHERE action = 'email_sent'`))
}

// A user's address with spaces around it (they decide nothing about
// skipping) is sent to without them, not failed as malformed for good.
func TestEmailTransportTrimsTheAddress(t *testing.T) {
	t.Parallel()
	smtpURL, api := testinfra.Mailpit(t)
	m, err := mailer.New(mailer.Config{SMTPURL: smtpURL, From: "herald@herald.test"})
	require.NoError(t, err)
	address := "spaced." + testinfra.Name(t) + "@herald.test"
	tr := &emailTransport{mail: m, from: "herald@herald.test"}
	res, err := tr.Deliver(t.Context(), &rules.Delivery{ID: "6f1c2f0e-0000-4000-8000-000000000001", Severity: "notice", Body: "hello",
		User: rules.User{ID: 1, Username: "spaced", Name: "Spaced", Email: " " + address + " \t"}})
	require.NoError(t, err)
	require.Equal(t, []any{address}, res.Event.Context["to_email"])
	msgs := waitMailpit(t, api, address)
	require.Len(t, msgs, 1)
	require.Equal(t, "Spaced", msgs[0].To[0].Name)
}

// closedAddr returns a local address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// A transport's template gives the subject, after the transport's prefix.
func TestEmailDeliverySubjectFromTheTemplate(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	smtpURL, api := testinfra.Mailpit(t)
	d.env["SMTP_URL"] = smtpURL
	id := testinfra.Name(t)
	jane := d.user(t, 12, "jane", "jane."+id+"@herald.test")
	d.rule(t, "login-mail", "login")
	mail := d.transport(t, "login-mail", "mail", "email", "")
	d.db.MustExec(t, `INSERT INTO email_templates (name, subject, text) VALUES ('alert', 'Alert for {{.title}}', '{{.body}}')`)
	d.db.MustExec(t, `UPDATE notification_transports SET email_subject_prefix = '[x] ', email_template = 'alert' WHERE id = $1`, mail)
	d.start(t)

	d.publish(t, "login", jane, `{"message": "hello"}`)
	msgs := waitMailpit(t, api, jane.Email)
	require.Len(t, msgs, 1)
	require.Equal(t, "[x] Alert for login", msgs[0].Subject)
}

func TestEmailDeliverySentOnceAfterSMTPOutage(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	smtpURL, api := testinfra.Mailpit(t)
	d.env["SMTP_URL"] = "smtp://" + closedAddr(t)
	// Long enough between attempts that stopping the worker never
	// interrupts one.
	d.env["HERALD_DELIVERY_MIN_BACKOFF"] = "3s"
	d.env["HERALD_DELIVERY_MAX_BACKOFF"] = "3s"
	id := testinfra.Name(t)
	jane := d.user(t, 12, "jane", "jane."+id+"@herald.test")
	d.rule(t, "login-mail", "login")
	d.transport(t, "login-mail", "mail", "email", "")
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	failed := d.waitDelivery(t, pk, "mail", "failed")
	require.Equal(t, 1, failed.Attempts)
	require.NotEmpty(t, failed.LastError)
	d.stop(t)

	d.env["SMTP_URL"] = smtpURL
	d.start(t)
	sent := d.waitDelivery(t, pk, "mail", "sent")
	require.Equal(t, 2, sent.Attempts)
	waitMailpit(t, api, jane.Email)
	quiet()
	msgs := mailpitTo(t, api, jane.Email)
	require.Len(t, msgs, 1, "sent exactly once")
	require.Equal(t, messageID(t, sent.ID), msgs[0].MessageID, "the same Message-ID whatever the attempt")
	require.Equal(t, 1, d.count(t, `SELECT count(*) FROM events WHERE action = 'email_sent' AND context->'caused_by'->>'event' = $1`, pk))
}

func TestWebhookDeliveryInterruptedByShutdownIsRetriedAfterRestart(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	started := make(chan struct{})
	sink := newWebhookSink(t, func(n int, r *http.Request) int {
		if n == 1 {
			// The first POST hangs until the client gives up.
			close(started)
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}
		return http.StatusOK
	})
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "login-hook", "login")
	d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	d.start(t)

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("the webhook was not called")
	}
	d.stop(t) // while the POST is in flight
	d.start(t)
	// The delivery was neither sent nor failed: the restarted worker tries
	// it again soon, not only once the interrupted attempt's lease (5m) ran
	// out.
	sent := d.waitDelivery(t, pk, "hook", "sent")
	reqs := sink.requests()
	require.Len(t, reqs, 2)
	require.Equal(t, sent.ID, reqs[1].Header.Get("Idempotency-Key"))
}

func TestDeliveriesRetryOfAnInFlightDeliveryDoesNotPostTwice(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	var inFlight, maxInFlight atomic.Int32
	sink := newWebhookSink(t, func(int, *http.Request) int {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := maxInFlight.Load()
			if n <= m || maxInFlight.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(3 * time.Second) // a slow receiver
		return http.StatusOK
	})
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "login-hook", "login")
	d.transport(t, "login-hook", "hook", "webhook", sink.URL())
	d.start(t)
	d.startAnotherWorker(t) // scaled out: two workers share the database

	pk := d.publish(t, "login", jane, `{"message": "hello"}`)
	require.Eventually(t, func() bool { return inFlight.Load() == 1 }, 20*time.Second, 10*time.Millisecond)
	// An operator retries the delivery while its first attempt is running.
	del := d.deliveries(t, pk)[0]
	d.cli(t, "", "deliveries", "retry", del.ID)
	d.waitDelivery(t, pk, "hook", "sent")
	quiet()
	require.Equal(t, int32(1), maxInFlight.Load(), "two POSTs of one delivery at the same time")
	require.Len(t, sink.requests(), 1)
}

func TestDeliveryNotHeldUpByASlowWebhook(t *testing.T) {
	t.Parallel()
	d := newDeliveryStack(t)
	var slowCalls atomic.Int32
	slow := newWebhookSink(t, func(_ int, r *http.Request) int {
		slowCalls.Add(1)
		select { // a receiver that takes long to answer, within the timeout
		case <-r.Context().Done():
		case <-time.After(8 * time.Second):
		}
		return http.StatusOK
	})
	fast := newWebhookSink(t, nil)
	jane := d.user(t, 12, "jane", "jane@example.com")
	d.rule(t, "slow-rule", "slow_thing")
	d.transport(t, "slow-rule", "slow", "webhook", slow.URL())
	d.rule(t, "fast-rule", "fast_thing")
	d.transport(t, "fast-rule", "fast", "webhook", fast.URL())
	d.start(t)

	d.publish(t, "slow_thing", jane, `{}`)
	require.Eventually(t, func() bool { return slowCalls.Load() == 1 }, 20*time.Second, 10*time.Millisecond)
	start := time.Now()
	pk := d.publish(t, "fast_thing", jane, `{}`)
	require.Eventually(t, func() bool {
		rows := d.deliveries(t, pk)
		return len(rows) == 1 && rows[0].Status == "sent"
	}, 20*time.Second, 10*time.Millisecond)
	took := time.Since(start)
	t.Logf("the fast delivery took %v", took)
	require.Less(t, took, 3*time.Second, "a delivery waited for another transport's slow receiver")
}
