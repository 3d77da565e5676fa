package rules_test

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
	"github.com/heraldhq/herald/schema"
)

// groupHistoryPolicy is DESIGN.md's group-user-history example (§7), as
// the example seed file ships it: two model queries and a save per event.
func groupHistoryPolicy(tb testing.TB) string {
	tb.Helper()
	expression, err := schema.ExampleExpression("group-user-history")
	if err != nil {
		tb.Fatal(err)
	}
	return expression
}

// BenchmarkModelPolicy measures the engine on a policy that reads and saves
// models: batches of 50 group membership events, each running the
// group-history policy, against groups whose history already holds 100
// entries.
func BenchmarkModelPolicy(b *testing.B) {
	const (
		batch  = 50
		groups = 50
		users  = 100
	)
	db := testinfra.Postgres(b)
	ctx := b.Context()
	setup := []string{
		fmt.Sprintf(`INSERT INTO users (id, username) SELECT i, 'user' || i FROM generate_series(1, %d) i`, users),
		fmt.Sprintf(`INSERT INTO groups (id, name, attributes)
SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'group' || i,
       jsonb_build_object('UserAddedHistory', (SELECT jsonb_agg('2026-01-01T00:00:00 - Added user: user' || j) FROM generate_series(1, 100) j))
FROM generate_series(0, %d) i`, groups-1),
		`INSERT INTO notification_transports (name, mode) VALUES ('inbox', 'local')`,
		`INSERT INTO policies (name, kind, expression) VALUES ('group-history', 'expression', $1)`,
		`INSERT INTO notification_rules (name, destination_event_user) VALUES ('history', true)`,
		`INSERT INTO notification_rule_transports (rule_id, transport_id) SELECT r.id, t.id FROM notification_rules r, notification_transports t`,
		`INSERT INTO policy_bindings (target_rule_id, policy_id, "order") SELECT r.id, p.id, 0 FROM notification_rules r, policies p`,
	}
	for _, q := range setup {
		var args []any
		if q == setup[3] {
			args = append(args, groupHistoryPolicy(b))
		}
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
	logger := slog.New(slog.DiscardHandler)
	pool := jsrt.New(jsrt.Config{Size: 1, Logger: logger})
	cache, err := rules.NewRuleCache(ctx, db.DB, rules.RuleCacheConfig{ActionGuard: pool.ActionGuard, Logger: logger})
	if err != nil {
		b.Fatal(err)
	}
	engine := rules.NewEngine(db.DB, cache, pool, rules.EngineConfig{Logger: logger})

	evs := make([]events.Event, batch)
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		for i := range evs {
			n++
			ev, err := events.Decode(fmt.Appendf(nil, `{"pk": "00000000-0000-4000-9000-%012d", "action": "model_updated",
"app": "authentik.events.middleware", "user": {"pk": %d, "username": "user%[2]d"},
"context": {"model": {"app": "authentik_core", "model_name": "group", "pk": "00000000-0000-4000-8000-%012[3]d", "name": "group"},
"diff": {"users": {"add": [%[2]d]}}}}`, n, n%users+1, n%groups))
			if err != nil {
				b.Fatal(err)
			}
			evs[i] = ev
		}
		b.StartTimer()
		if err := engine.HandleEvents(ctx, evs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "events/s")
	if redone := engine.Stats().BatchesRedone.Load(); redone > 0 {
		b.Fatalf("%d batches ran again", redone)
	}
}
