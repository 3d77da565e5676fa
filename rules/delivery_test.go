package rules_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// transportFunc adapts a function to rules.Transporter.
type transportFunc func(ctx context.Context, d *rules.Delivery) (rules.DeliveryResult, error)

func (f transportFunc) Deliver(ctx context.Context, d *rules.Delivery) (rules.DeliveryResult, error) {
	return f(ctx, d)
}

// pendingWebhookDelivery inserts a due delivery to a webhook transport and
// returns its id.
func pendingWebhookDelivery(t *testing.T, db *testinfra.DB) string {
	t.Helper()
	var id string
	require.NoError(t, db.GetContext(t.Context(), &id, `WITH u AS (INSERT INTO users (username) VALUES ('jane') RETURNING id),
t AS (INSERT INTO notification_transports (name, mode, webhook_url) VALUES ('hook', 'webhook', 'http://127.0.0.1:9/') RETURNING id),
n AS (INSERT INTO notifications (user_id, body) SELECT id, 'hello' FROM u RETURNING id)
INSERT INTO deliveries (notification_id, transport_id) SELECT n.id, t.id FROM n, t RETURNING id`))
	return id
}

type deliveryRow struct {
	Status   string `db:"status"`
	Attempts int    `db:"attempts"`
}

func deliveryState(t *testing.T, db *testinfra.DB, id string) deliveryRow {
	t.Helper()
	var r deliveryRow
	require.NoError(t, db.GetContext(t.Context(), &r, `SELECT status, attempts FROM deliveries WHERE id = $1`, id))
	return r
}

// A worker whose lease ran out, and whose delivery another worker claimed
// since, gives nothing back when it stops: the newer claim stands.
func TestDeliveryReleaseKeepsANewerClaim(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	id := pendingWebhookDelivery(t, db)
	const lease = 200 * time.Millisecond
	logger := slog.New(slog.DiscardHandler)

	// The first worker's transport ignores its deadline and returns only
	// once the second worker holds the delivery and the first is stopping.
	firstIn, firstOut := make(chan struct{}), make(chan struct{})
	first := rules.NewDispatcher(db.DB, rules.DispatcherConfig{Lease: lease, Logger: logger,
		Transports: map[string]rules.Transporter{rules.ModeWebhook: transportFunc(func(ctx context.Context, _ *rules.Delivery) (rules.DeliveryResult, error) {
			close(firstIn)
			<-firstOut
			return rules.DeliveryResult{}, context.Canceled
		})}})
	secondIn, secondOut := make(chan struct{}), make(chan struct{})
	second := rules.NewDispatcher(db.DB, rules.DispatcherConfig{Lease: time.Minute, Logger: logger,
		Transports: map[string]rules.Transporter{rules.ModeWebhook: transportFunc(func(context.Context, *rules.Delivery) (rules.DeliveryResult, error) {
			close(secondIn)
			<-secondOut
			return rules.DeliveryResult{}, nil
		})}})

	firstCtx, stopFirst := context.WithCancel(t.Context())
	firstDone := make(chan struct{})
	go func() {
		defer close(firstDone)
		_, _ = first.DispatchOne(firstCtx)
	}()
	<-firstIn
	time.Sleep(lease + 50*time.Millisecond) // the first lease runs out
	secondDone := make(chan struct{})
	go func() {
		defer close(secondDone)
		ok, err := second.DispatchOne(t.Context())
		require.NoError(t, err)
		require.True(t, ok, "the second worker claims the delivery whose lease ran out")
	}()
	<-secondIn
	stopFirst()
	close(firstOut)
	<-firstDone
	require.Equal(t, deliveryRow{Status: "sending", Attempts: 2}, deliveryState(t, db, id), "the second claim stands")
	close(secondOut)
	<-secondDone
	require.Equal(t, deliveryRow{Status: "sent", Attempts: 2}, deliveryState(t, db, id))
}

// A delivery is carried out within the first half of its lease: the
// transport's context ends then, before another worker could claim it.
func TestDeliveryIsBoundedByHalfItsLease(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	id := pendingWebhookDelivery(t, db)
	const lease = time.Minute
	var (
		deadline    time.Time
		hasDeadline bool
	)
	d := rules.NewDispatcher(db.DB, rules.DispatcherConfig{Lease: lease, Logger: slog.New(slog.DiscardHandler),
		Transports: map[string]rules.Transporter{rules.ModeWebhook: transportFunc(func(ctx context.Context, _ *rules.Delivery) (rules.DeliveryResult, error) {
			deadline, hasDeadline = ctx.Deadline()
			return rules.DeliveryResult{}, context.DeadlineExceeded
		})}})
	ok, err := d.DispatchOne(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, hasDeadline, "the transport's context has no deadline")
	require.LessOrEqual(t, time.Until(deadline), lease/2, "later than half the lease after the claim")
	require.Equal(t, deliveryRow{Status: "failed", Attempts: 1}, deliveryState(t, db, id), "recorded as a failed attempt")
}

// An event user without an email address gives an empty value to the
// template, not Go's "<no value>".
func TestEmailTemplateDataWithoutEventUserEmail(t *testing.T) {
	t.Parallel()
	d := &rules.Delivery{Body: "login: {}", Event: &events.Event{Action: "login", User: map[string]any{"pk": 5, "username": "bob"}}}
	kv := rules.EmailTemplateData(d)["key_value"].(map[string]any)
	require.Equal(t, "", kv["event_user_email"])
	require.Equal(t, "bob", kv["event_user_username"])
}

// An event a delivery creates (email_sent) is stored with its sent status,
// and not at all when a newer claim took the delivery meanwhile.
func TestDeliveryEventIsStoredWithItsOutcome(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	logger := slog.New(slog.DiscardHandler)
	sent := rules.OutcomeEvent{Action: "email_sent", App: "authentik.stages.email.tasks", Context: map[string]any{"message": "sent"}}
	events := func() int {
		var n int
		require.NoError(t, db.Get(&n, `SELECT count(*) FROM events WHERE action = 'email_sent'`))
		return n
	}

	id := pendingWebhookDelivery(t, db)
	d := rules.NewDispatcher(db.DB, rules.DispatcherConfig{Logger: logger,
		Transports: map[string]rules.Transporter{rules.ModeWebhook: transportFunc(func(context.Context, *rules.Delivery) (rules.DeliveryResult, error) {
			return rules.DeliveryResult{Event: &sent}, nil
		})}})
	ok, err := d.DispatchOne(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, deliveryRow{Status: "sent", Attempts: 1}, deliveryState(t, db, id))
	require.Equal(t, 1, events())
	require.Equal(t, 1, countRows(t, db, `SELECT count(*) FROM outbox WHERE kind = 'event'`), "queued for publishing")

	// The lease ran out and another claim took the delivery while it was
	// sent: neither outcome nor event is recorded.
	db.MustExec(t, `DELETE FROM events`)
	db.MustExec(t, `UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = now() WHERE id = $1`, id)
	late := rules.NewDispatcher(db.DB, rules.DispatcherConfig{Logger: logger,
		Transports: map[string]rules.Transporter{rules.ModeWebhook: transportFunc(func(context.Context, *rules.Delivery) (rules.DeliveryResult, error) {
			db.MustExec(t, `UPDATE deliveries SET attempts = attempts + 1 WHERE id = $1`, id) // claimed again
			return rules.DeliveryResult{Event: &sent}, nil
		})}})
	ok, err = late.DispatchOne(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, deliveryRow{Status: "sending", Attempts: 2}, deliveryState(t, db, id))
	require.Zero(t, events())
}

func countRows(t *testing.T, db *testinfra.DB, query string) int {
	t.Helper()
	var n int
	require.NoError(t, db.Get(&n, query))
	return n
}

// lastError is a delivery's status and last_error.
func lastError(t *testing.T, db *testinfra.DB, id string) (status, lastErr string) {
	t.Helper()
	require.NoError(t, db.QueryRowContext(t.Context(), `SELECT status, last_error FROM deliveries WHERE id = $1`, id).Scan(&status, &lastErr))
	return status, lastErr
}

// attemptWebhook points the webhook transport at url and makes one attempt
// at delivery id with the real webhook transport; it returns the
// delivery's status and last_error.
func attemptWebhook(t *testing.T, db *testinfra.DB, id, url string, cfg rules.DispatcherConfig) (status, lastErr string) {
	t.Helper()
	db.MustExec(t, `UPDATE notification_transports SET webhook_url = $1`, url)
	cfg.Transports = map[string]rules.Transporter{rules.ModeWebhook: &rules.WebhookTransport{DB: db.DB}}
	ok, err := rules.NewDispatcher(db.DB, cfg).DispatchOne(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	return lastError(t, db, id)
}

// Any error text is recorded, so that the delivery fails (and ends dead)
// instead of staying claimed and being sent again after every lease: a
// webhook's answer in Latin-1 or with a NUL byte, a UTF-8 answer whose
// first KiB ends inside a character, a long error cut inside a character.
func TestDeliveryRecordsAnyErrorText(t *testing.T) {
	t.Parallel()
	answers := map[string]string{
		"latin-1":        "Anfrage ung\xfcltig",
		"nul":            "bad\x00request",
		"cut at 1 KiB":   strings.Repeat("a", 1023) + "é and more",
		"cut at 2000 B":  "x" + strings.Repeat("ü", 1500),
		"invalid, short": "\xff\xfe",
	}
	for name, answer := range answers {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			db := testinfra.Postgres(t)
			var posts atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				posts.Add(1)
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = io.WriteString(w, answer)
			}))
			t.Cleanup(srv.Close)
			id := pendingWebhookDelivery(t, db)
			status, lastErr := attemptWebhook(t, db, id, srv.URL+"/hook", rules.DispatcherConfig{MaxAttempts: 1, Logger: slog.New(slog.DiscardHandler)})
			require.Equal(t, rules.DeliveryDead, status)
			require.Contains(t, lastErr, "HTTP 500")
			require.True(t, utf8.ValidString(lastErr))
			require.LessOrEqual(t, len(lastErr), 2000+len("…"))
			require.Equal(t, int32(1), posts.Load())
		})
	}
	t.Run("long error", func(t *testing.T) {
		t.Parallel()
		db := testinfra.Postgres(t)
		id := pendingWebhookDelivery(t, db)
		d := rules.NewDispatcher(db.DB, rules.DispatcherConfig{Logger: slog.New(slog.DiscardHandler),
			Transports: map[string]rules.Transporter{rules.ModeWebhook: transportFunc(func(context.Context, *rules.Delivery) (rules.DeliveryResult, error) {
				return rules.DeliveryResult{}, errors.New("x" + strings.Repeat("ü", 1500))
			})}})
		ok, err := d.DispatchOne(t.Context())
		require.NoError(t, err)
		require.True(t, ok)
		status, lastErr := lastError(t, db, id)
		require.Equal(t, rules.DeliveryFailed, status)
		require.Equal(t, "x"+strings.Repeat("ü", 999)+"…", lastErr)
	})
}

// A webhook's user information and path are secrets (a Slack or Discord
// webhook's path is its token): errors, in last_error and in the logs,
// name the webhook by scheme and host only.
func TestWebhookErrorsKeepTheURLSecret(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	for name, base := range map[string]string{"answer": srv.URL, "no answer": closed.URL} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			db := testinfra.Postgres(t)
			id := pendingWebhookDelivery(t, db)
			host := strings.TrimPrefix(base, "http://")
			var logs strings.Builder
			status, lastErr := attemptWebhook(t, db, id, "http://hook:s3cr3t-pw@"+host+"/services/T0/B0/t0ken",
				rules.DispatcherConfig{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			require.Equal(t, rules.DeliveryFailed, status)
			require.Contains(t, lastErr, "http://"+host)
			for _, secret := range []string{"s3cr3t-pw", "t0ken"} {
				require.NotContains(t, lastErr, secret)
				require.NotContains(t, logs.String(), secret)
			}
		})
	}
}

// A transport that panics fails the attempt instead of stopping the worker.
func TestPanickingTransportFailsTheAttempt(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	id := pendingWebhookDelivery(t, db)
	d := rules.NewDispatcher(db.DB, rules.DispatcherConfig{Logger: slog.New(slog.DiscardHandler),
		Transports: map[string]rules.Transporter{rules.ModeWebhook: transportFunc(func(context.Context, *rules.Delivery) (rules.DeliveryResult, error) {
			var m map[string]int
			m["boom"]++
			return rules.DeliveryResult{}, nil
		})}})
	ok, err := d.DispatchOne(t.Context())
	require.NoError(t, err)
	require.True(t, ok)
	status, lastErr := lastError(t, db, id)
	require.Equal(t, rules.DeliveryFailed, status)
	require.Contains(t, lastErr, "transport panicked: assignment to entry in nil map")
}

// What a body mapping returns is posted as authentik posts it, through
// sanitize_item (no falsy list items, no NUL), and the mapping reads the
// event's summary and hyperlink as authentik's Event properties.
func TestWebhookMappingResultAsAuthentikPostsIt(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	posted := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		posted <- string(b)
	}))
	defer srv.Close()
	pendingWebhookDelivery(t, db)
	db.MustExec(t, `UPDATE notification_transports SET webhook_url = $1`, srv.URL)
	db.MustExec(t, `WITH e AS (INSERT INTO events (action, context) VALUES ('custom_x', '{"message": "hi", "hyperlink": "https://example.com/a"}') RETURNING id)
UPDATE notifications SET event_id = (SELECT id FROM e)`)
	d := mappedWebhookDispatcher(t, db, `const e = notification.event;
return {tags: ["a", "", null, 0, false, [], {}], s: "x\u0000y", summary: e.summary, link: e.hyperlink, label: e.hyperlink_label};`)
	_, err := d.DispatchOne(t.Context())
	require.NoError(t, err)
	require.JSONEq(t, `{"tags": ["a"], "s": "xy", "summary": "hi", "link": "https://example.com/a", "label": null}`, <-posted)
}

// authentik fills the 25 Slack fields in the context's own order, which
// neither a Go map nor jsonb keeps: the message comes first, so that many
// other keys cannot push it out.
func TestSlackFieldsStartWithTheMessage(t *testing.T) {
	t.Parallel()
	c := map[string]any{"message": "the important one"}
	for i := range 30 {
		c[fmt.Sprintf("a%02d", i)] = "x"
	}
	d := &rules.Delivery{Severity: "notice", Body: "b", User: rules.User{Username: "bob"},
		Event: &events.Event{Action: "custom", Context: c, User: map[string]any{"username": "jane"}}}
	fields := rules.SlackBody(d)["attachments"].([]any)[0].(map[string]any)["fields"].([]any)
	require.Len(t, fields, 25)
	titles := make([]string, 0, len(fields))
	for _, f := range fields {
		titles = append(titles, f.(map[string]any)["title"].(string))
	}
	require.Equal(t, []string{"Severity", "Dispatched for user", "Event user", "message", "a00", "a01"}, titles[:6])
}
