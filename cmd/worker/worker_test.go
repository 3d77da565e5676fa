package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
)

// stack is a running worker on a test's own schema and stream.
type stack struct {
	db     *testinfra.DB
	js     jetstream.JetStream
	names  testinfra.Stream
	env    map[string]string
	cancel context.CancelFunc
	done   chan error
}

// newStack prepares the environment of a worker for t (its own schema,
// stream, subject prefix and consumer) without starting it.
func newStack(t *testing.T) *stack {
	t.Helper()
	db := testinfra.Postgres(t)
	_, js, names := testinfra.JetStream(t)
	return &stack{
		db: db, js: js, names: names,
		env: map[string]string{
			"DATABASE_URL":          db.URL,
			"NATS_URL":              testinfra.NATSURL(t),
			"HERALD_STREAM":         names.Name,
			"HERALD_SUBJECT_PREFIX": names.SubjectPrefix,
			"HERALD_CONSUMER":       names.Consumer,
			"HERALD_HTTP_ADDR":      "off",
			"HERALD_DATA_DIR":       t.TempDir(),
			"HERALD_LOG_LEVEL":      "debug",
		},
	}
}

func (s *stack) getenv(k string) string { return s.env[k] }

// cli runs a worker command and returns its standard output.
func (s *stack) cli(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	err := dispatch(t.Context(), args, s.getenv, strings.NewReader(stdin), &out, &errOut)
	require.NoError(t, err, "worker %s: %s", strings.Join(args, " "), errOut.String())
	return out.String()
}

// start runs `worker run` in the background until stop or the test's end.
func (s *stack) start(t *testing.T) {
	t.Helper()
	cfg, err := loadConfig(s.getenv, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	go func() { s.done <- run(ctx, cfg, logger) }()
	t.Cleanup(func() { s.stop(t) })
	s.waitConsuming(t)
}

// waitConsuming waits until the worker consumes: its pull requests wait on
// the consumer.
func (s *stack) waitConsuming(t *testing.T) {
	t.Helper()
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		info, err := s.consumerInfo(ctx)
		return err == nil && info.NumWaiting > 0
	}, 20*time.Second, 20*time.Millisecond, "worker did not start consuming")
}

// stop sends the worker the equivalent of SIGTERM and waits for a clean exit.
func (s *stack) stop(t *testing.T) {
	t.Helper()
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		require.NoError(t, err, "worker exited with an error")
	case <-time.After(30 * time.Second):
		t.Fatal("worker did not stop within 30s")
	}
}

func (s *stack) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, s.db.GetContext(context.Background(), &n, query, args...))
	return n
}

// waitCount waits until query returns want, and fails with the last value.
func (s *stack) waitCount(t *testing.T, want int, query string, args ...any) {
	t.Helper()
	var got int
	deadline := time.Now().Add(40 * time.Second)
	for time.Now().Before(deadline) {
		if got = s.count(t, query, args...); got == want {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s: got %d, want %d", query, got, want)
}

// settle waits until the worker's consumer has acknowledged everything in
// the stream, so that a count can be checked for what did not happen.
func (s *stack) settle(t *testing.T) {
	t.Helper()
	var last string
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		info, err := s.consumerInfo(ctx)
		cancel()
		if err == nil && info.NumPending == 0 && info.NumAckPending == 0 {
			return
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("pending=%d ack_pending=%d redelivered=%d", info.NumPending, info.NumAckPending, info.NumRedelivered)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("consumer did not catch up: %s", last)
}

func (s *stack) consumerInfo(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	c, err := s.js.Consumer(ctx, s.names.Name, s.names.Consumer)
	if err != nil {
		return nil, err
	}
	return c.Info(ctx)
}

const loginUnknownDevice = `{"auth_method": "password", "auth_method_args": {"known_device": false}}`

func TestUnknownDeviceLoginAlertFromSeedFile(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	out := s.cli(t, "", "seed", "../../schema/examples/unknown-device-login.sql")
	require.Contains(t, out, "seeded")
	s.db.MustExec(t, `INSERT INTO users (id, username, email) VALUES (12, 'jane', 'jane@example.com')`)
	s.start(t)

	unknown := strings.TrimSpace(s.cli(t, "", "publish", "-action", "login", "-user-pk", "12", "-username", "jane",
		"-email", "jane@example.com", "-client-ip", "198.51.100.23", "-context", loginUnknownDevice))
	known := strings.TrimSpace(s.cli(t, "", "publish", "-action", "login", "-user-pk", "12", "-username", "jane",
		"-context", `{"auth_method": "password", "auth_method_args": {"known_device": true}}`))

	s.waitCount(t, 2, `SELECT count(*) FROM events WHERE id IN ($1, $2)`, unknown, known)
	s.settle(t)
	var rows []struct {
		UserID   int64  `db:"user_id"`
		EventID  string `db:"event_id"`
		Severity string `db:"severity"`
		Body     string `db:"body"`
	}
	require.NoError(t, s.db.Select(&rows, `SELECT user_id, event_id, severity, body FROM notifications`))
	require.Len(t, rows, 1, "one notification, for the unknown device only")
	require.Equal(t, int64(12), rows[0].UserID)
	require.Equal(t, unknown, rows[0].EventID)
	require.Equal(t, "alert", rows[0].Severity)
	require.Equal(t, `login: {"auth_method":"password","auth_method_args":{"known_device":false}}`, rows[0].Body)
	require.Equal(t, 1, s.count(t, `SELECT count(*) FROM deliveries WHERE status = 'sent'`))
}

func TestSameEventTwiceIsProcessedOnce(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/unknown-device-login.sql")
	s.db.MustExec(t, `INSERT INTO users (id, username) VALUES (12, 'jane')`)
	s.start(t)

	pk := "0b470dce-99b5-4960-9eb1-a3af15ea6973"
	payload := fmt.Sprintf(`{"pk": %q, "action": "login", "user": {"pk": 12, "username": "jane"}, "context": %s}`, pk, loginUnknownDevice)
	// Through the CLI (Nats-Msg-Id set), then twice more without a message
	// id, as a publisher that retries after the duplicate window would.
	s.cli(t, payload, "publish", "-f", "-")
	for range 2 {
		_, err := s.js.Publish(t.Context(), events.Subject(s.names.SubjectPrefix, "login"), []byte(payload))
		require.NoError(t, err)
	}
	s.settle(t)
	require.Equal(t, 1, s.count(t, `SELECT count(*) FROM events WHERE id = $1`, pk))
	require.Equal(t, 1, s.count(t, `SELECT count(*) FROM notifications WHERE event_id = $1`, pk))
	require.Equal(t, 1, s.count(t, `SELECT count(*) FROM deliveries`))
}

func TestMalformedMessagesAreDeadLettered(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.start(t)

	bad := map[string]string{
		"not json":       `{"pk": "0b470dce-99b5-4960-9eb1-a3af15ea6973", "action": `,
		"missing pk":     `{"action": "login"}`,
		"missing action": `{"pk": "0b470dce-99b5-4960-9eb1-a3af15ea6974"}`,
		"bad client ip":  `{"pk": "0b470dce-99b5-4960-9eb1-a3af15ea6975", "action": "login", "client_ip": "nope"}`,
	}
	for _, payload := range bad {
		_, err := s.js.Publish(t.Context(), events.Subject(s.names.SubjectPrefix, "login"), []byte(payload))
		require.NoError(t, err)
	}
	good := strings.TrimSpace(s.cli(t, "", "publish", "-action", "login"))

	s.waitCount(t, len(bad), `SELECT count(*) FROM dead_letters`)
	s.waitCount(t, 1, `SELECT count(*) FROM events WHERE id = $1`, good)
	var dls []struct {
		Subject string `db:"subject"`
		Payload []byte `db:"payload"`
		Reason  string `db:"reason"`
	}
	require.NoError(t, s.db.Select(&dls, `SELECT subject, payload, reason FROM dead_letters`))
	byPayload := map[string]string{}
	for _, dl := range dls {
		require.Equal(t, s.names.SubjectPrefix+".login", dl.Subject)
		byPayload[string(dl.Payload)] = dl.Reason
	}
	require.Contains(t, byPayload[bad["not json"]], "invalid JSON")
	require.Contains(t, byPayload[bad["missing pk"]], `missing "pk"`)
	require.Contains(t, byPayload[bad["missing action"]], `missing "action"`)
	require.Contains(t, byPayload[bad["bad client ip"]], "is not an IP address")
	s.settle(t) // terminated, not redelivered
}

func TestStuckPolicyTimesOutAndOtherRulesStillFire(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/unknown-device-login.sql")
	s.db.MustExec(t, `INSERT INTO users (id, username) VALUES (12, 'jane')`)
	s.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ('spin', 'while (true) {}')`)
	s.db.MustExec(t, `INSERT INTO notification_rules (name, destination_event_user) VALUES ('a-stuck-rule', true)`)
	s.db.MustExec(t, `INSERT INTO notification_rule_transports (rule_id, transport_id)
		SELECT r.id, t.id FROM notification_rules r, notification_transports t WHERE r.name = 'a-stuck-rule' AND t.name = 'inbox'`)
	s.db.MustExec(t, `INSERT INTO policy_bindings (target_rule_id, policy_id, timeout_seconds, failure_result)
		SELECT r.id, p.id, 1, false FROM notification_rules r, policies p WHERE r.name = 'a-stuck-rule' AND p.name = 'spin'`)
	s.start(t)

	start := time.Now()
	pk := strings.TrimSpace(s.cli(t, "", "publish", "-action", "login", "-user-pk", "12", "-context", loginUnknownDevice))
	s.waitCount(t, 1, `SELECT count(*) FROM notifications WHERE event_id = $1`, pk)
	require.Less(t, time.Since(start), 10*time.Second)
	s.waitCount(t, 1, `SELECT count(*) FROM events WHERE action = 'policy_exception'
		AND context->'caused_by'->>'event' = $1 AND context->'error'->>'kind' = 'timeout'
		AND context->'policy'->>'name' = 'spin'`, pk)
	var rule string
	require.NoError(t, s.db.Get(&rule, `SELECT r.name FROM notifications n JOIN notification_rules r ON r.id = n.rule_id WHERE n.event_id = $1`, pk))
	require.Equal(t, "unknown-device-login-alert", rule)

	// The worker carries on with the next event.
	next := strings.TrimSpace(s.cli(t, "", "publish", "-action", "login", "-user-pk", "12", "-context", loginUnknownDevice))
	s.waitCount(t, 1, `SELECT count(*) FROM notifications WHERE event_id = $1`, next)
}

func TestCreatedEventsGoThroughTheStream(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ('broken', E'const a = 1;\nreturn a.b.c;')`)
	s.db.MustExec(t, `INSERT INTO notification_rules (name) VALUES ('broken-rule')`)
	s.db.MustExec(t, `INSERT INTO policy_bindings (target_rule_id, policy_id)
		SELECT r.id, p.id FROM notification_rules r, policies p WHERE r.name = 'broken-rule' AND p.name = 'broken'`)
	s.start(t)

	pk := strings.TrimSpace(s.cli(t, "", "publish", "-action", "model_created"))
	s.waitCount(t, 1, `SELECT count(*) FROM events WHERE action = 'policy_exception' AND context->'caused_by'->>'event' = $1`, pk)
	// Stored unprocessed by the transaction that created it, then published
	// through the outbox and consumed back: processed.
	s.waitCount(t, 1, `SELECT count(*) FROM events WHERE action = 'policy_exception' AND processed`)
	s.waitCount(t, 1, `SELECT count(*) FROM outbox WHERE kind = 'event' AND status = 'sent'`)
	var errCtx map[string]any
	var raw []byte
	require.NoError(t, s.db.Get(&raw, `SELECT context->'error' FROM events WHERE action = 'policy_exception'`))
	require.NoError(t, json.Unmarshal(raw, &errCtx))
	require.Equal(t, float64(2), errCtx["line"], "the error is on the expression's second line")
	require.Contains(t, errCtx["message"], "TypeError")
}

func TestRuleChangesApplyWithoutRestart(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.db.MustExec(t, `INSERT INTO users (id, username) VALUES (12, 'jane')`)
	s.start(t)

	first := strings.TrimSpace(s.cli(t, "", "publish", "-action", "login", "-user-pk", "12", "-context", loginUnknownDevice))
	s.waitCount(t, 1, `SELECT count(*) FROM events WHERE id = $1`, first)

	s.cli(t, "", "seed", "../../schema/examples/unknown-device-login.sql")
	changed := time.Now()
	// The rule applies to events published from now on, within a second.
	var second string
	require.Eventually(t, func() bool {
		second = strings.TrimSpace(s.cli(t, "", "publish", "-action", "login", "-user-pk", "12", "-context", loginUnknownDevice))
		time.Sleep(100 * time.Millisecond)
		return s.count(t, `SELECT count(*) FROM notifications WHERE event_id = $1`, second) == 1
	}, 10*time.Second, 50*time.Millisecond)
	t.Logf("rule change took effect after %v", time.Since(changed))
	require.Equal(t, 0, s.count(t, `SELECT count(*) FROM notifications WHERE event_id = $1`, first))

	s.db.MustExec(t, `UPDATE notification_rules SET enabled = false`)
	var third string
	require.Eventually(t, func() bool {
		third = strings.TrimSpace(s.cli(t, "", "publish", "-action", "login", "-user-pk", "12", "-context", loginUnknownDevice))
		s.waitCount(t, 1, `SELECT count(*) FROM events WHERE id = $1`, third)
		return s.count(t, `SELECT count(*) FROM notifications WHERE event_id = $1`, third) == 0
	}, 10*time.Second, 50*time.Millisecond)
}

func TestShutdownLosesNothing(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/unknown-device-login.sql")
	s.db.MustExec(t, `INSERT INTO users (id, username) VALUES (12, 'jane')`)

	var lines strings.Builder
	const n = 300
	for i := range n {
		fmt.Fprintf(&lines, `{"pk": "00000000-0000-4000-8000-%012d", "action": "login", "user": {"pk": 12}, "context": %s}`+"\n", i, loginUnknownDevice)
	}
	s.cli(t, lines.String(), "publish", "-f", "-")

	// Stop the worker while it is in the middle of the backlog, then start
	// it again: every event is processed exactly once.
	s.start(t)
	require.Eventually(t, func() bool { return s.count(t, `SELECT count(*) FROM events`) > 0 }, 15*time.Second, 5*time.Millisecond)
	s.stop(t)
	s.start(t)
	s.settle(t)
	s.waitCount(t, n, `SELECT count(*) FROM events`)
	require.Equal(t, n, s.count(t, `SELECT count(*) FROM notifications`))
	require.Equal(t, n, s.count(t, `SELECT count(DISTINCT event_id) FROM notifications`))
}

func TestEmbeddedNATSWhenNATSURLIsUnset(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/unknown-device-login.sql")
	s.db.MustExec(t, `INSERT INTO users (id, username) VALUES (12, 'jane')`)
	delete(s.env, "NATS_URL")
	s.env["HERALD_EMBEDDED_NATS_LISTEN"] = freeAddr(t)

	cfg, err := loadConfig(s.getenv, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()

	// `worker publish` without NATS_URL reaches the running worker's
	// embedded server.
	var pk string
	require.Eventually(t, func() bool {
		select {
		case err := <-done:
			t.Errorf("worker exited early: %v", err)
			done <- err
			return true
		default:
		}
		var out bytes.Buffer
		err := dispatch(t.Context(), []string{"publish", "-action", "login", "-user-pk", "12", "-context", loginUnknownDevice},
			s.getenv, strings.NewReader(""), &out, io.Discard)
		pk = strings.TrimSpace(out.String())
		return err == nil
	}, 20*time.Second, 100*time.Millisecond)
	require.False(t, t.Failed())
	s.waitCount(t, 1, `SELECT count(*) FROM notifications WHERE event_id = $1`, pk)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

func TestBrokenPolicyIsReportedOnceAsConfigurationError(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ('broken', E'const a = ;\nreturn a;')`)
	s.db.MustExec(t, `INSERT INTO policies (name, kind, match_action) VALUES ('on-config-error', 'event_matcher', 'configuration_error')`)
	s.db.MustExec(t, `INSERT INTO users (id, username) VALUES (1, 'admin')`)
	s.db.MustExec(t, `INSERT INTO groups (name) VALUES ('admins')`)
	s.db.MustExec(t, `INSERT INTO group_members SELECT id, 1 FROM groups WHERE name = 'admins'`)
	s.db.MustExec(t, `INSERT INTO notification_transports (name, mode) VALUES ('inbox', 'local')`)
	s.db.MustExec(t, `INSERT INTO notification_rules (name, severity, destination_group_id) SELECT 'config-errors', 'alert', id FROM groups WHERE name = 'admins'`)
	s.db.MustExec(t, `INSERT INTO notification_rule_transports SELECT r.id, t.id FROM notification_rules r, notification_transports t`)
	s.db.MustExec(t, `INSERT INTO policy_bindings (target_rule_id, policy_id) SELECT r.id, p.id FROM notification_rules r, policies p WHERE p.name IN ('on-config-error', 'broken')`)
	s.start(t)

	s.waitCount(t, 1, `SELECT count(*) FROM events WHERE action = 'configuration_error' AND context->'policy'->>'name' = 'broken'
		AND context->>'message' LIKE 'Policy broken does not compile%' AND (context->'error'->>'line')::int = 1`)
	// Published and consumed: the admins are notified.
	s.waitCount(t, 1, `SELECT count(*) FROM notifications n JOIN events e ON e.id = n.event_id WHERE e.action = 'configuration_error'`)
	// A reload (any configuration change) does not report it again.
	s.db.MustExec(t, `UPDATE notification_rules SET severity = 'warning'`)
	s.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ('fine', 'return true;')`)
	time.Sleep(1500 * time.Millisecond)
	s.settle(t)
	require.Equal(t, 1, s.count(t, `SELECT count(*) FROM events WHERE action = 'configuration_error'`))
}

// publish says so when the stream dropped an event as a duplicate of one
// it holds, and refuses one -pk for several events.
func TestPublishReportsDuplicates(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	const pk = "6a1f0d3c-2b4e-4f5a-9c8d-7e6f5a4b3c2d"
	require.Equal(t, pk, strings.TrimSpace(s.cli(t, "", "publish", "-action", "login", "-pk", pk)))

	var out, errOut bytes.Buffer
	err := dispatch(t.Context(), []string{"publish", "-action", "login", "-pk", pk}, s.getenv, strings.NewReader(""), &out, &errOut)
	require.ErrorIs(t, err, events.ErrDuplicate)
	require.Empty(t, out.String(), "the dropped event's pk is not printed as published")

	// The rest of a file is published after a duplicate.
	out.Reset()
	const other = "8c3f0d3c-2b4e-4f5a-9c8d-7e6f5a4b3c2d"
	lines := `{"pk": "` + pk + `", "action": "login"}` + "\n" + `{"pk": "` + other + `", "action": "login"}`
	err = dispatch(t.Context(), []string{"publish", "-f", "-"}, s.getenv, strings.NewReader(lines), &out, &errOut)
	require.ErrorIs(t, err, events.ErrDuplicate)
	require.Equal(t, other, strings.TrimSpace(out.String()))

	two := `{"action": "login"}` + "\n" + `{"action": "logout"}`
	err = dispatch(t.Context(), []string{"publish", "-f", "-", "-pk", "7b2f0d3c-2b4e-4f5a-9c8d-7e6f5a4b3c2d"}, s.getenv, strings.NewReader(two), &out, &errOut)
	require.ErrorContains(t, err, "-pk names one event")
}

// publish fills and validates every event of its input before it publishes
// the first: an input with an invalid event publishes nothing (the events
// before it would otherwise be out under pks made up for them, and be
// published again under new ones once the input is fixed).
func TestPublishValidatesEveryEventBeforePublishing(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.cli(t, "", "publish", "-action", "login") // creates the stream, with one message
	msgs := func() uint64 {
		stream, err := s.js.Stream(t.Context(), s.names.Name)
		require.NoError(t, err)
		info, err := stream.Info(t.Context())
		require.NoError(t, err)
		return info.State.Msgs
	}
	require.EqualValues(t, 1, msgs())

	for _, input := range []string{
		`{"action": "login"}` + "\n" + `{"action": "login"}` + "\n" + `{"action": "login", "client_ip": "nope"}`,
		`[{"action": "login"}, {"action": "login"}, "not an object"]`,
	} {
		var out, errOut bytes.Buffer
		err := dispatch(t.Context(), []string{"publish", "-f", "-"}, s.getenv, strings.NewReader(input), &out, &errOut)
		require.Error(t, err)
		require.EqualValues(t, 1, msgs(), "part of an invalid input was published")
		require.Empty(t, out.String(), "no pk is printed as published")
		require.Contains(t, err.Error(), "event 3 of 3", "the error names the event")
	}
}

// publish fills pk only when it is missing or null: a pk of another type is
// malformed (the worker would dead-letter the event), and is refused.
func TestPublishRefusesANonStringPK(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	for _, input := range []string{`{"pk": 5, "action": "login"}`, `{"pk": {"id": 1}, "action": "login"}`} {
		var out, errOut bytes.Buffer
		err := dispatch(t.Context(), []string{"publish", "-f", "-"}, s.getenv, strings.NewReader(input), &out, &errOut)
		require.ErrorContains(t, err, "want a UUID string", input)
		require.Empty(t, out.String(), input)
	}
	// A null or empty pk is a missing one.
	for _, input := range []string{`{"pk": null, "action": "login"}`, `{"pk": "", "action": "login"}`} {
		out := strings.TrimSpace(s.cli(t, input, "publish", "-f", "-"))
		_, err := events.CanonicalUUID(out)
		require.NoError(t, err, "a new pk is printed: %q", out)
	}
}

// worker check compiles every expression policy and webhook mapping.
func TestCheckCompilesPoliciesAndMappings(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.db.MustExec(t, `INSERT INTO policies (name, kind, expression) VALUES ('fine', 'expression', 'return true;')`)
	s.db.MustExec(t, `INSERT INTO webhook_mappings (name, expression) VALUES ('body', 'return {text: notification.body};')`)
	require.Contains(t, s.cli(t, "", "check"), "1 policies and 1 webhook mappings checked, 0 failed")

	s.db.MustExec(t, `INSERT INTO policies (name, kind, expression) VALUES ('broken', 'expression', 'return (;')`)
	s.db.MustExec(t, `INSERT INTO webhook_mappings (name, expression) VALUES ('broken-body', 'return {;')`)
	var out, errOut bytes.Buffer
	err := dispatch(t.Context(), []string{"check"}, s.getenv, strings.NewReader(""), &out, &errOut)
	require.ErrorContains(t, err, "2 expressions do not compile")
	require.Contains(t, out.String(), `"broken"`)
	require.Contains(t, out.String(), "webhook mapping broken-body")
}

// The operations endpoints: /readyz is ready once the worker consumes.
func TestOpsEndpoints(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	addr := freeAddr(t)
	s.env["HERALD_HTTP_ADDR"] = addr
	s.start(t)
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	require.Eventually(t, func() bool { code, _ := get("/readyz"); return code == http.StatusOK }, 10*time.Second, 50*time.Millisecond)
	code, body := get("/healthz")
	require.Equal(t, http.StatusOK, code, body)
	code, body = get("/metrics")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, "herald_events_processed_total")
	loaded := metricValue(t, body, "herald_rules_loaded_timestamp_seconds")
	require.InDelta(t, float64(time.Now().Unix()), loaded, 60, "when the rule set was loaded")
}

// metricValue is the value of the metric without labels name in a
// /metrics body.
func metricValue(t *testing.T, body, name string) float64 {
	t.Helper()
	for line := range strings.SplitSeq(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			require.NoError(t, err)
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

// The consumer's lag is on /metrics: messages not yet delivered
// (herald_consumer_pending) and those the worker holds but has not
// finished (herald_consumer_ack_pending).
func TestMetricsShowTheConsumerLag(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	addr := freeAddr(t)
	s.env["HERALD_HTTP_ADDR"] = addr
	s.env["HERALD_BATCH_SIZE"] = "1"
	s.env["HERALD_CONCURRENCY"] = "1"
	s.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ('slow', 'while (true) {}')`)
	s.db.MustExec(t, `INSERT INTO notification_rules (name) VALUES ('slow-rule')`)
	s.db.MustExec(t, `INSERT INTO policy_bindings (target_rule_id, policy_id, timeout_seconds)
		SELECT r.id, p.id, 2 FROM notification_rules r, policies p`)
	s.start(t)

	const n = 20
	s.cli(t, strings.Repeat(`{"action": "login"}`+"\n", n), "publish", "-f", "-")
	gauge := func(body, name string) float64 { return metricValue(t, body, name) }
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body := string(b)
		return gauge(body, "herald_consumer_ack_pending") >= n-2 && gauge(body, "herald_consumer_pending") >= 0
	}, 10*time.Second, 100*time.Millisecond, "the events the worker holds are not counted as lag")
}

// An HTTP address the worker cannot listen on (here: taken, as by a second
// worker on the same machine) stops the worker at start, the variable
// named, instead of leaving it running without /healthz, /readyz and
// /metrics.
func TestUnusableHTTPAddrStopsTheWorker(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	s := newStack(t)
	s.env["HERALD_HTTP_ADDR"] = l.Addr().String()
	cfg, err := loadConfig(s.getenv, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.NewTextHandler(t.Output(), nil))) }()
	select {
	case err := <-done:
		require.ErrorContains(t, err, "HERALD_HTTP_ADDR="+l.Addr().String())
	case <-time.After(20 * time.Second):
		cancel()
		<-done
		t.Fatalf("the worker runs on though it cannot listen on %s", l.Addr())
	}
}

// A MAIL_FROM that is not an email address is reported as MAIL_FROM, not as
// a problem of SMTP_URL.
func TestBadMailFromIsNamed(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.env["MAIL_FROM"] = "herald at example.com"
	s.env["SMTP_URL"] = "smtp://127.0.0.1:2525"
	cfg, err := loadConfig(s.getenv, nil, nil)
	require.NoError(t, err)
	err = run(t.Context(), cfg, slog.New(slog.DiscardHandler))
	require.ErrorContains(t, err, `MAIL_FROM="herald at example.com"`)
	require.NotContains(t, err.Error(), "SMTP_URL")
}

// The worker stops on SIGTERM even when the rule watcher's LISTEN
// connection cannot be made: here the role's connection limit is used up by
// the worker's pool (max_connections reached, or the database down, is the
// same). rules' TestRuleCacheWatchWithoutListenConnection shows that the
// rules are still reloaded.
func TestWorkerStopsWithoutListenConnection(t *testing.T) {
	t.Parallel()
	base := testinfra.PostgresURL(t)
	admin, err := sqlx.Connect("postgres", base)
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close() })
	role := "herald_lim_" + strings.ToLower(testinfra.Name(t))
	admin.MustExec(`CREATE ROLE ` + role + ` LOGIN CONNECTION LIMIT 1`)
	admin.MustExec(`CREATE DATABASE ` + role + ` OWNER ` + role)
	t.Cleanup(func() {
		_, _ = admin.Exec(`DROP DATABASE ` + role + ` WITH (FORCE)`)
		_, _ = admin.Exec(`DROP ROLE ` + role)
	})
	u, err := url.Parse(base)
	require.NoError(t, err)
	u.User = url.User(role)
	u.Path = "/" + role

	s := newStack(t)
	s.env["DATABASE_URL"] = u.String()
	cfg, err := loadConfig(s.getenv, nil, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, cfg, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError})))
	}()
	s.waitConsuming(t)
	cancel() // SIGTERM
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(cfg.ShutdownTimeout + 5*time.Second):
		t.Fatalf("worker did not stop within %v of SIGTERM", cfg.ShutdownTimeout+5*time.Second)
	}
}
