package rules_test

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// mappingFunc adapts a function to rules.MappingEvaluator.
type mappingFunc func(ctx context.Context, m rules.MappingRequest) (rules.MappingResult, error)

func (f mappingFunc) EvaluateMapping(ctx context.Context, m rules.MappingRequest) (rules.MappingResult, error) {
	return f(ctx, m)
}

// localDeliveries inserts a notification and, for each mapping name, a
// local transport with that body mapping and a delivery through it, claimed
// once (sending, attempt 1). It returns the notification id and the
// deliveries by mapping name.
func localDeliveries(t *testing.T, db *testinfra.DB, mappings ...string) (string, map[string]*rules.Delivery) {
	t.Helper()
	var user int64
	var notification string
	require.NoError(t, db.GetContext(t.Context(), &user, `INSERT INTO users (username) VALUES ('jane') RETURNING id`))
	require.NoError(t, db.GetContext(t.Context(), &notification,
		`INSERT INTO notifications (user_id, body, severity) VALUES ($1, 'hello', 'notice') RETURNING id`, user))
	out := map[string]*rules.Delivery{}
	for _, name := range mappings {
		var mapping, transport, delivery string
		require.NoError(t, db.GetContext(t.Context(), &mapping, `INSERT INTO webhook_mappings (name, expression) VALUES ($1, '') RETURNING id`, name))
		require.NoError(t, db.GetContext(t.Context(), &transport,
			`INSERT INTO notification_transports (name, mode, webhook_mapping_body_id) VALUES ($1, 'local', $2) RETURNING id`, name, mapping))
		require.NoError(t, db.GetContext(t.Context(), &delivery, `INSERT INTO deliveries (notification_id, transport_id, status, attempts)
VALUES ($1, $2, 'sending', 1) RETURNING id`, notification, transport))
		out[name] = &rules.Delivery{ID: delivery, Attempts: 1, NotificationID: notification,
			Transport: rules.Transport{ID: transport, Name: name, Mode: rules.ModeLocal, WebhookMappingBodyID: &mapping},
			User:      rules.User{ID: user, Username: "jane"}}
	}
	return notification, out
}

// Two local mappings of one notification run one after the other, each on
// the notification as the other left it, so that neither change is lost.
func TestLocalTransportMappingsOfANotificationTakeTurns(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	notification, ds := localDeliveries(t, db, "slow", "fast")
	slowIn, slowOut := make(chan struct{}), make(chan struct{})
	fastSaw := make(chan string, 1)
	local := &rules.LocalTransport{DB: db.DB, Mappings: mappingFunc(func(_ context.Context, m rules.MappingRequest) (rules.MappingResult, error) {
		n := maps.Clone(m.Notification)
		if m.Name == "slow" {
			close(slowIn)
			<-slowOut
			n["body"] = "A: " + n["body"].(string)
		} else {
			fastSaw <- n["body"].(string)
			n["severity"] = "alert"
		}
		return rules.MappingResult{Value: "discarded", Notification: n}, nil
	})}

	errs := make(chan error, 2)
	go func() { _, err := local.Deliver(t.Context(), ds["slow"]); errs <- err }()
	<-slowIn
	go func() { _, err := local.Deliver(t.Context(), ds["fast"]); errs <- err }()
	select {
	case body := <-fastSaw:
		t.Fatalf("the second mapping ran while the first held the notification (it saw %q)", body)
	case <-time.After(300 * time.Millisecond):
	}
	close(slowOut)
	require.NoError(t, <-errs)
	require.Equal(t, "A: hello", <-fastSaw, "the second mapping sees the first one's change")
	require.NoError(t, <-errs)

	var row struct {
		Body     string `db:"body"`
		Severity string `db:"severity"`
		Unmapped string `db:"unmapped"`
	}
	require.NoError(t, db.GetContext(t.Context(), &row, `SELECT body, severity, unmapped::text AS unmapped FROM notifications WHERE id = $1`, notification))
	require.Equal(t, "A: hello", row.Body)
	require.Equal(t, "alert", row.Severity)
	require.JSONEq(t, `{"body": "hello", "severity": "notice", "hyperlink": null, "hyperlink_label": null}`, row.Unmapped,
		"the rule's values, for its other transports")
	for _, d := range ds {
		require.Equal(t, deliveryRow{Status: "sent", Attempts: 1}, deliveryState(t, db, d.ID))
	}
}

// A local delivery whose lease ran out, and which a newer claim took, stores
// nothing.
func TestLocalTransportStoresNothingAfterItsLeaseRanOut(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	notification, ds := localDeliveries(t, db, "late")
	db.MustExec(t, `UPDATE deliveries SET attempts = 2 WHERE id = $1`, ds["late"].ID) // claimed again
	local := &rules.LocalTransport{DB: db.DB, Mappings: mappingFunc(func(_ context.Context, m rules.MappingRequest) (rules.MappingResult, error) {
		n := maps.Clone(m.Notification)
		n["body"] = "changed"
		return rules.MappingResult{Notification: n}, nil
	})}
	_, err := local.Deliver(t.Context(), ds["late"])
	require.ErrorIs(t, err, rules.ErrLeaseLost)
	var body string
	require.NoError(t, db.GetContext(t.Context(), &body, `SELECT body FROM notifications WHERE id = $1`, notification))
	require.Equal(t, "hello", body)
	require.Equal(t, deliveryRow{Status: "sending", Attempts: 2}, deliveryState(t, db, ds["late"].ID))
}

// boundMappings is a MappingEvaluator whose runtimes must be bound first,
// and whose Bind waits until free is closed.
type boundMappings struct {
	mappingFunc
	waiting, free chan struct{}
}

func (b boundMappings) Bind(ctx context.Context) (context.Context, func()) {
	close(b.waiting)
	<-b.free
	return ctx, func() {}
}

// A local delivery waits for a runtime before it locks the notification, so
// that a busy runtime pool holds up no one else's use of it.
func TestLocalTransportLocksTheNotificationOnlyOnceItHasARuntime(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	notification, ds := localDeliveries(t, db, "waits")
	mappings := boundMappings{
		mappingFunc: func(_ context.Context, m rules.MappingRequest) (rules.MappingResult, error) {
			return rules.MappingResult{Notification: m.Notification}, nil
		},
		waiting: make(chan struct{}), free: make(chan struct{}),
	}
	local := &rules.LocalTransport{DB: db.DB, Mappings: mappings}
	errs := make(chan error, 1)
	go func() { _, err := local.Deliver(t.Context(), ds["waits"]); errs <- err }()
	select {
	case <-mappings.waiting:
	case <-time.After(5 * time.Second):
		t.Fatal("the delivery did not ask for a runtime")
	}
	tx, err := db.BeginTxx(t.Context(), nil)
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck // the test's own transaction
	_, err = tx.ExecContext(t.Context(), `SET LOCAL lock_timeout = '200ms'`)
	require.NoError(t, err)
	_, err = tx.ExecContext(t.Context(), `UPDATE notifications SET seen = true WHERE id = $1`, notification)
	require.NoError(t, err, "the notification is not locked while the delivery waits for a runtime")
	require.NoError(t, tx.Rollback())
	close(mappings.free)
	require.NoError(t, <-errs)
	require.Equal(t, deliveryRow{Status: "sent", Attempts: 1}, deliveryState(t, db, ds["waits"].ID))
}
