package rules_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

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
