package rules_test

import (
	"context"
	"log/slog"
	"net"
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

	// Watch reloads once when LISTEN is in place.
	select {
	case <-reloaded:
	case <-time.After(10 * time.Second):
		t.Fatal("no reload once LISTEN is in place")
	}

	other := testinfra.EmptyPostgres(t) // a session in another schema
	other.MustExec(t, `INSERT INTO `+db.Schema+`.policies (name, kind, match_action) VALUES ('from-elsewhere', 'event_matcher', 'login')`)
	select {
	case rs := <-reloaded:
		require.Contains(t, rs.Policies, "from-elsewhere")
	case <-time.After(5 * time.Second):
		t.Fatal("no reload after a change made from another schema")
	}
	cancel()
	require.NoError(t, <-watching)
}

// A change committed after the rule set was loaded but before Watch's
// LISTEN is in place was announced to no one; Watch reloads once LISTEN is
// in place, so the change does not wait for the fallback interval.
func TestRuleCacheWatchLoadsAChangeMadeBeforeListen(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cache, err := rules.NewRuleCache(ctx, db.DB, rules.RuleCacheConfig{DSN: db.URL, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)

	db.MustExec(t, `INSERT INTO policies (name, kind, match_action) VALUES ('early', 'event_matcher', 'login')`)
	watching := make(chan error, 1)
	go func() { watching <- cache.Watch(ctx, time.Hour) }()
	require.Eventually(t, func() bool { return cache.Current().Policies["early"] != nil }, 5*time.Second, 20*time.Millisecond,
		"a change committed before LISTEN was in place is not loaded")
	cancel()
	require.NoError(t, <-watching)
}

// When the LISTEN connection cannot be made (a connection limit reached,
// the database down; here a DSN nothing answers on), Watch still reloads
// every fallback interval and returns when its context ends.
func TestRuleCacheWatchWithoutListenConnection(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	down := "postgres://postgres@" + l.Addr().String() + "/postgres?sslmode=disable"
	require.NoError(t, l.Close())

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cache, err := rules.NewRuleCache(ctx, db.DB, rules.RuleCacheConfig{DSN: down, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	watching := make(chan error, 1)
	go func() { watching <- cache.Watch(ctx, 200*time.Millisecond) }()

	db.MustExec(t, `INSERT INTO policies (name, kind, match_action) VALUES ('later', 'event_matcher', 'login')`)
	require.Eventually(t, func() bool { return cache.Current().Policies["later"] != nil }, 5*time.Second, 20*time.Millisecond,
		"no fallback reload without a LISTEN connection")
	cancel()
	select {
	case err := <-watching:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after its context ended")
	}
}

// A reload that fails (here a table the rule set is read from is briefly
// renamed, and a change announces itself meanwhile) is tried again soon,
// not only at the next change or fallback interval.
func TestRuleCacheWatchRetriesAFailedReload(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	logs := &lockedBuffer{}
	cache, err := rules.NewRuleCache(ctx, db.DB, rules.RuleCacheConfig{DSN: db.URL, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	require.NoError(t, err)
	watching := make(chan error, 1)
	go func() { watching <- cache.Watch(ctx, time.Hour) }() // no fallback reload in this test
	db.MustExec(t, `INSERT INTO policies (name, kind, match_action) VALUES ('listening', 'event_matcher', 'login')`)
	require.Eventually(t, func() bool { return cache.Current().Policies["listening"] != nil }, 10*time.Second, 20*time.Millisecond)

	db.MustExec(t, `ALTER TABLE notification_rules RENAME TO notification_rules_away`)
	db.MustExec(t, `INSERT INTO policies (name, kind, match_action) VALUES ('while-away', 'event_matcher', 'login')`)
	require.Eventually(t, func() bool { return len(logs.lines("reload rules", "notification_rules")) > 0 }, 10*time.Second, 10*time.Millisecond,
		"the reload the change announced did not fail")
	db.MustExec(t, `ALTER TABLE notification_rules_away RENAME TO notification_rules`) // announces nothing
	require.Eventually(t, func() bool { return cache.Current().Policies["while-away"] != nil }, 10*time.Second, 20*time.Millisecond,
		"a failed reload is not tried again before the next change or the fallback interval")
	cancel()
	require.NoError(t, <-watching)
}
