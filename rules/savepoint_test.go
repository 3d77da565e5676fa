package rules_test

import (
	"context"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
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
	ptx := rules.NewPolicyTx(db.DB, tx)
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
	_, err = a.DB(policyCtx)
	require.NoError(t, err)
	require.NotEqual(t, sessionDefault, timeout(), "a policy's statements run under its remaining time")
	tx.MustExecContext(ctx, `INSERT INTO users (username) VALUES ('kept')`)
	require.NoError(t, a.Finish(ctx, false))
	require.True(t, ptx.ReleasePending())

	// Policy B releases A's savepoint with its own, writes, and fails.
	b := rules.NewPolicyScope(ptx)
	_, err = b.DB(policyCtx)
	require.NoError(t, err)
	require.False(t, ptx.ReleasePending())
	tx.MustExecContext(ctx, `INSERT INTO users (username) VALUES ('undone')`)
	require.NoError(t, b.Finish(ctx, true))
	require.Equal(t, sessionDefault, timeout(), "a failed policy's timeouts are gone")

	// Policy C succeeds; the engine's next statement settles it first.
	c := rules.NewPolicyScope(ptx)
	_, err = c.DB(policyCtx)
	require.NoError(t, err)
	require.NoError(t, c.Finish(ctx, false))
	require.NoError(t, ptx.Settle(ctx))
	require.Equal(t, sessionDefault, timeout(), "a released policy's timeouts are gone")

	// Policy E had a deadline; F, whose context has none, does not inherit
	// E's timeouts with the savepoint it takes over.
	e := rules.NewPolicyScope(ptx)
	_, err = e.DB(policyCtx)
	require.NoError(t, err)
	require.NoError(t, e.Finish(ctx, false))
	f := rules.NewPolicyScope(ptx)
	_, err = f.DB(ctx)
	require.NoError(t, err)
	require.Equal(t, sessionDefault, timeout(), "a released policy's timeouts are gone")
	require.NoError(t, f.Finish(ctx, false))
	require.NoError(t, ptx.Settle(ctx))

	var names []string
	require.NoError(t, tx.SelectContext(ctx, &names, `SELECT username FROM users ORDER BY username`))
	require.Equal(t, []string{"kept"}, names)
	// Nothing is left open: releasing once more fails.
	_, err = tx.ExecContext(ctx, rules.ReleaseSavepoint)
	require.Error(t, err)
}

// A policy query that runs again is prepared, once per connection, and
// gives the same rows; one that runs once is not prepared.
func TestRepeatedPolicyQueriesArePrepared(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	db.MustExec(t, `INSERT INTO users (username) VALUES ('ann'), ('bob'), ('cy')`)
	db.SetMaxOpenConns(2) // one for the batch, one to prepare on
	tx, err := db.BeginTxx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck // test
	ptx := rules.NewPolicyTx(db.DB, tx)
	users := rules.Models["User"]

	var got [][]map[string]any
	for _, name := range []string{"ann", "bob", "cy", "nobody"} {
		s := rules.NewPolicyScope(ptx)
		q, err := s.DB(ctx)
		require.NoError(t, err)
		rows, err := rules.Find(ctx, q, rules.Query{Model: users, Filters: map[string]any{"username": name}}, 1, true)
		require.NoError(t, err)
		got = append(got, rows)
		require.NoError(t, s.Finish(ctx, false))
	}
	require.Equal(t, 1, ptx.Prepared())
	for i, name := range []string{"ann", "bob", "cy"} {
		require.Len(t, got[i], 1)
		require.Equal(t, name, got[i][0]["username"])
	}
	require.Empty(t, got[3])

	s := rules.NewPolicyScope(ptx)
	q, err := s.DB(ctx)
	require.NoError(t, err)
	n, err := rules.Count(ctx, q, rules.Query{Model: users, Filters: map[string]any{"username__startswith": "b"}})
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
	require.Equal(t, 1, ptx.Prepared(), "a query run once is not prepared")
	require.NoError(t, tx.Commit())

	// Later batches run it prepared from the start, and the statement
	// outlives the transactions: both connections of the pool have it.
	tx2, err := db.BeginTxx(ctx, nil)
	require.NoError(t, err)
	defer tx2.Rollback() //nolint:errcheck // test
	tx3, err := db.BeginTxx(ctx, nil)
	require.NoError(t, err)
	defer tx3.Rollback() //nolint:errcheck // test
	for _, tx := range []*sqlx.Tx{tx2, tx3} {
		var prepared int
		require.NoError(t, tx.GetContext(ctx, &prepared, `SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE 'SELECT % FROM users WHERE username = %'`))
		require.Equal(t, 1, prepared)
	}
	next := ptx.Next(tx2)
	rows, err := rules.Find(ctx, next, rules.Query{Model: users, Filters: map[string]any{"username": "ann"}}, 1, true)
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Equal(t, 1, next.Prepared())
}
