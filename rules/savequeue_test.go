package rules_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// In an optimistic batch a save is queued until a statement could see it:
// a model query limited by pk to other rows runs first, any other query
// sends the save before it, and a queued save that fails fails the batch
// when it settles.
func TestOptimisticSavesAreQueuedUntilAStatementCouldSeeThem(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	var g1, g2 string
	require.NoError(t, db.Get(&g1, `INSERT INTO groups (name) VALUES ('one') RETURNING id`))
	require.NoError(t, db.Get(&g2, `INSERT INTO groups (name) VALUES ('two') RETURNING id`))
	tx, err := db.BeginTxx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck // test
	ptx := rules.NewOptimisticPolicyTx(db.DB, tx)
	groups := rules.Models["Group"]
	stored := func(id string) (attrs string) {
		t.Helper()
		require.NoError(t, tx.GetContext(ctx, &attrs, `SELECT attributes::text FROM groups WHERE id = $1`, id))
		return attrs
	}
	find := func(filters map[string]any) []map[string]any {
		t.Helper()
		rows, err := rules.Find(ctx, ptx, rules.Query{Model: groups, Filters: filters}, 0, true)
		require.NoError(t, err)
		return rows
	}

	one := find(map[string]any{"pk": g1})
	require.Len(t, one, 1)
	updated, err := rules.Save(ctx, ptx, groups, g1, one[0]["updated"], map[string]any{"attributes": map[string]any{"n": 1}})
	require.NoError(t, err)
	require.Equal(t, 1, ptx.QueuedSaves())
	require.Equal(t, `{}`, stored(g1), "the save is queued")

	require.Len(t, find(map[string]any{"pk__in": []any{g2}}), 1)
	require.Equal(t, 1, ptx.QueuedSaves(), "a query of other rows by pk does not send it")

	again := find(map[string]any{"pk": g1})
	require.Zero(t, ptx.QueuedSaves(), "a query of the saved row sends it first")
	require.Equal(t, map[string]any{"n": json.Number("1")}, again[0]["attributes"])
	require.Equal(t, `{"n": 1}`, stored(g1))
	require.Equal(t, updated, again[0]["updated"], "save returns the updated value it stores")

	// Saves of two rows go out together, before a query by another field.
	_, err = rules.Save(ctx, ptx, groups, g1, again[0]["updated"], map[string]any{"name": "uno"})
	require.NoError(t, err)
	_, err = rules.Save(ctx, ptx, groups, g2, nil, map[string]any{"name": "dos"})
	require.NoError(t, err)
	require.Equal(t, 2, ptx.QueuedSaves())
	require.Len(t, find(map[string]any{"name": "dos"}), 1)
	require.Zero(t, ptx.QueuedSaves())
	require.NoError(t, ptx.Settle(ctx))

	// A save of an object read before a later save of the same row
	// conflicts, and the batch cannot settle.
	_, err = rules.Save(ctx, ptx, groups, g1, one[0]["updated"], map[string]any{"name": "stale"})
	require.NoError(t, err, "queued, not yet checked")
	err = ptx.Settle(ctx)
	require.ErrorIs(t, err, rules.ErrConflict)
	require.ErrorIs(t, ptx.Settle(ctx), rules.ErrConflict, "the failure stays")
	var name string
	require.NoError(t, tx.GetContext(ctx, &name, `SELECT name FROM groups WHERE id = $1`, g1))
	require.Equal(t, "uno", name)
}

// Outside an optimistic batch a save is written at once, and a stale one
// fails there with ErrConflict.
func TestSaveWithSavepointsWritesAtOnce(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	var g string
	require.NoError(t, db.Get(&g, `INSERT INTO groups (name) VALUES ('one') RETURNING id`))
	tx, err := db.BeginTxx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck // test
	ptx := rules.NewPolicyTx(db.DB, tx)
	groups := rules.Models["Group"]
	rows, err := rules.Find(ctx, ptx, rules.Query{Model: groups, Filters: map[string]any{"pk": g}}, 1, true)
	require.NoError(t, err)
	first, err := rules.Save(ctx, ptx, groups, g, rows[0]["updated"], map[string]any{"name": "uno"})
	require.NoError(t, err)
	var name string
	require.NoError(t, tx.GetContext(ctx, &name, `SELECT name FROM groups WHERE id = $1`, g))
	require.Equal(t, "uno", name)
	second, err := rules.Save(ctx, ptx, groups, g, first, map[string]any{"name": "dos"})
	require.NoError(t, err)
	t1, err := time.Parse(time.RFC3339Nano, first)
	require.NoError(t, err)
	t2, err := time.Parse(time.RFC3339Nano, second)
	require.NoError(t, err)
	require.True(t, t2.After(t1), "saves in one batch set increasing updated values")
	_, err = rules.Save(ctx, ptx, groups, g, rows[0]["updated"], map[string]any{"name": "stale"})
	require.ErrorIs(t, err, rules.ErrConflict)
}
