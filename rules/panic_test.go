package rules_test

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
)

// noPanic runs f and turns a panic out of it into an error.
func noPanic(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panicked: %v", r)
		}
	}()
	return f()
}

// A policy whose returned value throws while it is read (a getter) fails
// on its own: the batch goes on, with the other rules' notifications.
func TestThrowingResultFailsThePolicyNotTheBatch(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	other := b.alertRule(t, "other", binding{Policy: b.policy(t, "yes", "return true;")})
	b.alertRule(t, "getter", binding{Policy: b.policy(t, "getter", `return {get passing() { throw new Error("nope"); }};`)})
	b.reload(t)
	ev := userEvent(t, "login", jane, nil)
	require.NoError(t, noPanic(func() error { return b.engine.HandleEvents(t.Context(), []events.Event{ev}) }))
	require.True(t, b.fired(t, other, ev.PK))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception' AND context->>'exception' LIKE '%nope%'`))
}

// mappedWebhookDispatcher gives the webhook transport a body mapping with
// expression and returns a dispatcher that runs it in goja.
func mappedWebhookDispatcher(t *testing.T, db *testinfra.DB, expression string) *rules.Dispatcher {
	t.Helper()
	var mapping string
	require.NoError(t, db.GetContext(t.Context(), &mapping,
		`INSERT INTO webhook_mappings (name, expression) VALUES ('m', $1) RETURNING id`, expression))
	db.MustExec(t, `UPDATE notification_transports SET webhook_mapping_body_id = $1`, mapping)
	pool := jsrt.New(jsrt.Config{Logger: slog.New(slog.DiscardHandler)})
	return rules.NewDispatcher(db.DB, rules.DispatcherConfig{Logger: slog.New(slog.DiscardHandler),
		Transports: map[string]rules.Transporter{rules.ModeWebhook: &rules.WebhookTransport{DB: db.DB, Mappings: pool}}})
}

// A webhook mapping whose result throws while it is read fails the
// attempt, as any failing mapping does; it does not stop the dispatcher.
func TestThrowingMappingResultFailsTheAttempt(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	id := pendingWebhookDelivery(t, db)
	d := mappedWebhookDispatcher(t, db, `return {get text() { throw new Error("nope"); }};`)
	db.MustExec(t, `WITH e AS (INSERT INTO events (action) VALUES ('login') RETURNING id) UPDATE notifications SET event_id = (SELECT id FROM e)`)
	require.NoError(t, noPanic(func() error { _, err := d.DispatchOne(t.Context()); return err }))
	require.Equal(t, rules.DeliveryFailed, deliveryState(t, db, id).Status)
	var n int
	require.NoError(t, db.GetContext(t.Context(), &n, `SELECT count(*) FROM events WHERE action = 'property_mapping_exception'`))
	require.Equal(t, 1, n)
}

// A webhook mapping of a notification whose event was deleted
// (notifications.event_id is ON DELETE SET NULL) runs with an empty event.
func TestMappingOfANotificationWithoutEvent(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	id := pendingWebhookDelivery(t, db)
	d := mappedWebhookDispatcher(t, db, `return {text: notification.body};`)
	require.NoError(t, noPanic(func() error { _, err := d.DispatchOne(t.Context()); return err }))
	status, lastErr := lastError(t, db, id)
	require.Equal(t, rules.DeliveryFailed, status)
	require.Contains(t, lastErr, "127.0.0.1:9", "the mapping ran and the POST was tried")
}
