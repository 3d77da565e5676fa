package rules_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// The savepoint of a policy that succeeded is released with the next
// policy's SAVEPOINT or before the engine's next statement; either way the
// timeouts a policy set never outlive it, and a failed policy's writes are
// undone while an earlier policy's stay.
func TestPolicySavepointsReleasedLazily(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	tx, err := db.BeginTxx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck // test
	ptx := rules.NewPolicyTx(tx)
	var sessionDefault string
	require.NoError(t, tx.GetContext(ctx, &sessionDefault, `SHOW statement_timeout`))

	policyCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	timeout := func() string {
		var v string
		require.NoError(t, tx.GetContext(ctx, &v, `SHOW statement_timeout`))
		return v
	}

	// Policy A writes and succeeds: its savepoint stays open for now.
	a := rules.NewPolicyScope(ptx)
	atx, err := a.DB(policyCtx)
	require.NoError(t, err)
	require.NotEqual(t, sessionDefault, timeout(), "a policy's statements run under its remaining time")
	atx.MustExecContext(ctx, `INSERT INTO users (username) VALUES ('kept')`)
	require.NoError(t, a.Finish(ctx, false))
	require.True(t, ptx.ReleasePending())

	// Policy B releases A's savepoint with its own, writes, and fails.
	b := rules.NewPolicyScope(ptx)
	btx, err := b.DB(policyCtx)
	require.NoError(t, err)
	require.False(t, ptx.ReleasePending())
	btx.MustExecContext(ctx, `INSERT INTO users (username) VALUES ('undone')`)
	require.NoError(t, b.Finish(ctx, true))
	require.Equal(t, sessionDefault, timeout(), "a failed policy's timeouts are gone")

	// Policy C succeeds; the engine's next statement settles it first.
	c := rules.NewPolicyScope(ptx)
	_, err = c.DB(policyCtx)
	require.NoError(t, err)
	require.NoError(t, c.Finish(ctx, false))
	require.NoError(t, ptx.Settle(ctx))
	require.Equal(t, sessionDefault, timeout(), "a released policy's timeouts are gone")

	var names []string
	require.NoError(t, tx.SelectContext(ctx, &names, `SELECT username FROM users ORDER BY username`))
	require.Equal(t, []string{"kept"}, names)
	// Nothing is left open: releasing once more fails.
	_, err = tx.ExecContext(ctx, rules.ReleaseSavepoint)
	require.Error(t, err)
}
