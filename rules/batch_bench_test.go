package rules_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// BenchmarkStoreEvents measures the batch writer's hot statement: storing
// a batch of 100 login events in one transaction.
func BenchmarkStoreEvents(b *testing.B) {
	db := testinfra.Postgres(b)
	const batch = 100
	evs := make([]events.Event, batch)
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		for i := range evs {
			n++
			evs[i] = events.Event{
				PK:      fmt.Sprintf("00000000-0000-4000-8000-%012d", n),
				Action:  "login",
				App:     "authentik.events.signals",
				User:    map[string]any{"pk": int64(12), "username": "jane", "email": "jane@example.com"},
				Context: map[string]any{"auth_method": "password", "auth_method_args": map[string]any{"known_device": false}},
				Created: time.Now(),
			}
		}
		tx, err := db.BeginTxx(b.Context(), nil)
		if err != nil {
			b.Fatal(err)
		}
		fresh, err := rules.StoreEvents(b.Context(), tx, evs)
		if err != nil {
			b.Fatal(err)
		}
		if len(fresh) != batch {
			b.Fatalf("stored %d of %d new events", len(fresh), batch)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "events/s")
}
