package rules_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// BenchmarkStoreEvents measures the batch writer's hot statement: storing
// a batch of 100 login events in one transaction. "decoded" events keep
// their input objects, which are stored as they came; "built" ones are
// encoded.
func BenchmarkStoreEvents(b *testing.B) {
	const batch = 100
	for _, kind := range []string{"decoded", "built"} {
		b.Run(kind, func(b *testing.B) {
			db := testinfra.Postgres(b)
			evs := make([]events.Event, batch)
			n := 0
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				for i := range evs {
					n++
					evs[i] = benchLogin(b, n, kind == "decoded")
				}
				b.StartTimer()
				storeBatch(b, db.DB, evs)
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

func benchLogin(b *testing.B, n int, decoded bool) events.Event {
	pk := fmt.Sprintf("00000000-0000-4000-8000-%012d", n)
	if decoded {
		ev, err := events.Decode(fmt.Appendf(nil, `{"pk": %q, "action": "login", "app": "authentik.events.signals",
"user": {"pk": 12, "username": "jane", "email": "jane@example.com"},
"context": {"auth_method": "password", "auth_method_args": {"known_device": false}}}`, pk))
		if err != nil {
			b.Fatal(err)
		}
		return ev
	}
	return events.Event{
		PK:      pk,
		Action:  "login",
		App:     "authentik.events.signals",
		User:    map[string]any{"pk": int64(12), "username": "jane", "email": "jane@example.com"},
		Context: map[string]any{"auth_method": "password", "auth_method_args": map[string]any{"known_device": false}},
		Created: time.Now(),
	}
}

func storeBatch(b *testing.B, db *sqlx.DB, evs []events.Event) {
	tx, err := db.BeginTxx(b.Context(), nil)
	if err != nil {
		b.Fatal(err)
	}
	fresh, err := rules.StoreEvents(b.Context(), tx, evs)
	if err != nil {
		b.Fatal(err)
	}
	if len(fresh) != len(evs) {
		b.Fatalf("stored %d of %d new events", len(fresh), len(evs))
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkWriteNotifications measures the batch writer's other statement:
// 50 notifications and their local deliveries for stored events.
func BenchmarkWriteNotifications(b *testing.B) {
	const batch = 50
	db := testinfra.Postgres(b)
	ctx := b.Context()
	var ruleID, transportID string
	if err := db.GetContext(ctx, &ruleID, `INSERT INTO notification_rules (name) VALUES ('bench') RETURNING id`); err != nil {
		b.Fatal(err)
	}
	if err := db.GetContext(ctx, &transportID, `INSERT INTO notification_transports (name) VALUES ('inbox') RETURNING id`); err != nil {
		b.Fatal(err)
	}
	var userID int64
	if err := db.GetContext(ctx, &userID, `INSERT INTO users (username) VALUES ('jane') RETURNING id`); err != nil {
		b.Fatal(err)
	}
	evs := make([]events.Event, batch)
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for i := range evs {
			n++
			evs[i] = benchLogin(b, n, true)
		}
		storeBatch(b, db.DB, evs)
		b.StartTimer()
		tx, err := db.BeginTxx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := rules.WriteNotifications(ctx, tx, evs, ruleID, transportID, userID); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "notifications/s")
}
