package rules_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// A change made from a session whose search_path is another schema (the
// table named with its schema) still makes the workers of the table's
// schema reload at once.
func TestRuleCacheReloadsOnAChangeFromAnotherSchema(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	reloaded := make(chan *rules.RuleSet, 10)
	cache, err := rules.NewRuleCache(ctx, db.DB, rules.RuleCacheConfig{DSN: db.URL, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	cache.OnReload = func(rs *rules.RuleSet) { reloaded <- rs }
	watching := make(chan error, 1)
	// No fallback reload in this test.
	go func() { watching <- cache.Watch(ctx, time.Hour) }()

	other := testinfra.EmptyPostgres(t) // a session in another schema
	other.MustExec(t, `INSERT INTO `+db.Schema+`.policies (name, kind, match_action) VALUES ('from-elsewhere', 'event_matcher', 'login')`)
	// The change is made again until a reload follows: the first may come
	// before LISTEN is in place.
	for i := 0; ; i++ {
		select {
		case rs := <-reloaded:
			require.Contains(t, rs.Policies, "from-elsewhere")
		case <-time.After(500 * time.Millisecond):
			require.Less(t, i, 20, "no reload after a change made from another schema")
			other.MustExec(t, `UPDATE `+db.Schema+`.policies SET match_action = 'login' WHERE name = 'from-elsewhere'`)
			continue
		}
		break
	}
	cancel()
	require.NoError(t, <-watching)
}
