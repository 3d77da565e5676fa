package rules_test

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// In an optimistic batch a save is queued until a statement could see it:
// a model query limited by pk to other rows runs first, any other query
// sends the save before it, and a queued save that fails fails the batch
// when it settles. (Reads by pk of rows the batch has read are answered
// from the batch, see TestLockedRowsAnswerReadsInTheBatch: the saved row is
// queried here by another field.)
func TestOptimisticSavesAreQueuedUntilAStatementCouldSeeThem(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	var g1, g2 string
	require.NoError(t, db.Get(&g1, `INSERT INTO groups (name) VALUES ('one') RETURNING id`))
	require.NoError(t, db.Get(&g2, `INSERT INTO groups (name) VALUES ('two') RETURNING id`))
	tx, ptx := openBatch(t, db)
	groups := rules.Models["Group"]
	stored := func(id string) (attrs string) {
		t.Helper()
		require.NoError(t, tx.GetContext(ctx, &attrs, `SELECT attributes::text FROM groups WHERE id = $1`, id))
		return attrs
	}
	find := func(filters map[string]any) []map[string]any { return finder(t, groups)(ptx, 0, false, filters) }

	one := find(map[string]any{"pk": g1})
	require.Len(t, one, 1)
	updated, err := rules.Save(ctx, ptx, groups, g1, one[0]["updated"], map[string]any{"attributes": map[string]any{"n": 1}})
	require.NoError(t, err)
	require.Equal(t, 1, ptx.QueuedSaves())
	require.Equal(t, `{}`, stored(g1), "the save is queued")

	require.Len(t, find(map[string]any{"pk__in": []any{g2}}), 1)
	require.Equal(t, 1, ptx.QueuedSaves(), "a query of other rows by pk does not send it")
	locked, err := rules.Find(ctx, ptx, rules.Query{Model: groups, Filters: map[string]any{"pk": g2}}, 1, true)
	require.NoError(t, err)
	require.Len(t, locked, 1)
	require.Equal(t, 1, ptx.QueuedSaves(), "nor does a locking one")

	again := find(map[string]any{"name": "one"})
	require.Zero(t, ptx.QueuedSaves(), "a query that can see the saved row sends it first")
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

	// A save of an object read as the row never was in this batch (another
	// transaction changed it since) conflicts, and the batch cannot settle.
	_, err = rules.Save(ctx, ptx, groups, g1, changedElsewhere, map[string]any{"name": "stale"})
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
	g := oneGroup(t, db)
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
	// An object read before the batch's own saves saves over them, as in
	// Django: nobody else changed the row meanwhile.
	_, err = rules.Save(ctx, ptx, groups, g, rows[0]["updated"], map[string]any{"name": "tres"})
	require.NoError(t, err)
	require.NoError(t, tx.GetContext(ctx, &name, `SELECT name FROM groups WHERE id = $1`, g))
	require.Equal(t, "tres", name)
	_, err = rules.Save(ctx, ptx, groups, g, changedElsewhere, map[string]any{"name": "stale"})
	require.ErrorIs(t, err, rules.ErrConflict)
}

// changedElsewhere is an updated value that a test's batch never read: an
// object read so was changed since by another transaction.
const changedElsewhere = "2001-02-03T04:05:06Z"

// In an optimistic batch, a row read with a lock (first(), get()) cannot
// change until the batch ends but through the batch's own saves: a later
// read of it by pk is answered from the batch, with its queued saves
// applied, exactly as the database answers once they are written; and a
// save made on that reading joins the queued one in a single UPDATE.
func TestLockedRowsAnswerReadsInTheBatch(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	// g2 sorts before g1.
	const g1, g2 = "ffffffff-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
	var parent string
	require.NoError(t, db.Get(&parent, `INSERT INTO groups (name) VALUES ('parent') RETURNING id`))
	db.MustExec(t, `INSERT INTO groups (id, name, attributes) VALUES ($1, 'one', '{"keep": [1, 2.50, "x"]}')`, g1)
	db.MustExec(t, `INSERT INTO groups (id, name) VALUES ($1, 'two')`, g2)
	tx, ptx := openBatch(t, db)
	groups := rules.Models["Group"]
	find := func(q sqlx.QueryerContext, lock bool, filters map[string]any) []map[string]any {
		return finder(t, groups)(q, 0, lock, filters)
	}
	// rowsUpdated counts the groups rows this transaction has updated,
	// scans its reads of the table.
	rowsUpdated := func() int {
		t.Helper()
		var n int
		require.NoError(t, tx.GetContext(ctx, &n, `SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relid = 'groups'::regclass`))
		return n
	}
	scans := func() int { return tableScans(t, tx, "groups") }

	one := find(ptx, true, map[string]any{"pk": g1})
	require.Len(t, one, 1)
	first, err := rules.Save(ctx, ptx, groups, g1, one[0]["updated"], map[string]any{
		"attributes": map[string]any{"keep": []any{1, 2.5, "x"}, "n": 1e21, "s": "é\n\"", "f": 0.1},
		"parent":     strings.ToUpper(parent),
		"name":       "uno",
	})
	require.NoError(t, err)

	read := scans()
	again := find(ptx, true, map[string]any{"pk": strings.ToUpper(g1)})
	require.Equal(t, 1, ptx.QueuedSaves(), "the locked row is answered without sending the save")
	require.Equal(t, read, scans(), "without reading the table")
	require.Equal(t, first, again[0]["updated"])
	require.Equal(t, parent, again[0]["parent"])
	second, err := rules.Save(ctx, ptx, groups, g1, again[0]["updated"], map[string]any{"is_superuser": true, "name": "eins"})
	require.NoError(t, err)
	require.Equal(t, 1, ptx.QueuedSaves(), "a save made on the saved row joins the queued one")
	answered := find(ptx, false, map[string]any{"pk__in": []any{g1, g1}})
	require.Len(t, answered, 1)
	require.Equal(t, second, answered[0]["updated"])

	require.NoError(t, ptx.Settle(ctx))
	require.Zero(t, ptx.QueuedSaves())
	require.Equal(t, 1, rowsUpdated(), "both saves went out as one UPDATE")
	require.Equal(t, find(tx, false, map[string]any{"pk": g1}), answered, "the batch answered what the database now holds")

	// Several locked rows come in pk order, as the database gives them.
	find(ptx, true, map[string]any{"pk": g2})
	read = scans()
	both := find(ptx, false, map[string]any{"pk__in": []any{g1, g2}})
	require.Equal(t, read, scans(), "answered from the batch")
	require.Equal(t, []any{g2, g1}, []any{both[0]["pk"], both[1]["pk"]})
	require.Equal(t, find(tx, false, map[string]any{"pk__in": []any{g1, g2}}), both)

	// A save made on a reading of the row that is not the batch's is not
	// answered from the batch: the next read goes to the database, which
	// reports the conflict.
	_, err = rules.Save(ctx, ptx, groups, g1, changedElsewhere, map[string]any{"name": "stale"})
	require.NoError(t, err, "queued, not yet checked")
	_, err = rules.Find(ctx, ptx, rules.Query{Model: groups, Filters: map[string]any{"pk": g1}}, 1, true)
	require.ErrorIs(t, err, rules.ErrConflict)
	require.ErrorIs(t, ptx.Settle(ctx), rules.ErrConflict)
}

// The same holds for users (bigint pks, here given as text) and their
// time field, for get() and first() limits and for saves without a read
// time. A time finer than PostgreSQL keeps is read back from the database.
func TestLockedUsersAnswerReadsInTheBatch(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	var u1, u2 int64
	require.NoError(t, db.Get(&u1, `INSERT INTO users (username) VALUES ('one') RETURNING id`))
	require.NoError(t, db.Get(&u2, `INSERT INTO users (username) VALUES ('two') RETURNING id`))
	tx, ptx := openBatch(t, db)
	users := rules.Models["User"]
	find := finder(t, users)
	both := map[string]any{"pk__in": []any{fmt.Sprint(u2), u1}}
	locked := find(ptx, 2, true, both)
	require.Len(t, locked, 2)

	_, err := rules.Save(ctx, ptx, users, fmt.Sprint(u1), nil, map[string]any{"last_login": "2024-05-01T10:00:00.123456Z", "attributes": map[string]any{"a": 1}})
	require.NoError(t, err)
	_, err = rules.Save(ctx, ptx, users, u1, nil, map[string]any{"email": "one@example.com"})
	require.NoError(t, err)
	require.Equal(t, 1, ptx.QueuedSaves(), "a save without a read time joins the queued one")
	first := find(ptx, 1, true, both)
	all := find(ptx, 0, false, both)
	require.Equal(t, 1, ptx.QueuedSaves(), "answered from the batch")
	require.Len(t, first, 1)
	require.Equal(t, all[:1], first)
	require.NoError(t, ptx.Settle(ctx))
	require.Equal(t, find(tx, 0, false, both), all, "the batch answered what the database now holds")

	_, err = rules.Save(ctx, ptx, users, u2, locked[1]["updated"], map[string]any{"last_login": "2024-05-01T10:00:00.0000005Z"})
	require.NoError(t, err)
	fine := find(ptx, 0, true, map[string]any{"pk": u2})
	require.Zero(t, ptx.QueuedSaves(), "read from the database")
	require.NoError(t, ptx.Settle(ctx))
	require.Equal(t, find(tx, 0, false, map[string]any{"pk": u2}), fine)
}

// Rows read without a lock, and the events' users the batch loads first,
// answer later reads by pk without a lock as the batch first read them,
// with its saves applied. A locking read still goes to the database. A
// save made on a reading that another transaction has overtaken conflicts
// when it is sent.
func TestRowsReadWithoutALockAnswerReadsWithoutOne(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	var u1, u2, u3 int64
	require.NoError(t, db.Get(&u1, `INSERT INTO users (username, attributes, last_login) VALUES ('one', '{"a": [1, 2.50]}', '2024-05-01T10:00:00.5Z') RETURNING id`))
	require.NoError(t, db.Get(&u2, `INSERT INTO users (username) VALUES ('two') RETURNING id`))
	require.NoError(t, db.Get(&u3, `INSERT INTO users (username) VALUES ('three') RETURNING id`))
	tx, ptx := openBatch(t, db)
	users := rules.Models["User"]
	find := finder(t, users)
	scans := func() int { return tableScans(t, tx, "users") }

	ev := events.Event{User: map[string]any{"pk": u1}}
	loaded, err := rules.NewEngine(db.DB, nil, nil, rules.EngineConfig{}).LoadUsers(ctx, ptx, []*events.Event{&ev})
	require.NoError(t, err)
	require.Equal(t, "one", loaded[u1].Username)
	require.Equal(t, map[string]any{"a": []any{1.0, 2.5}}, map[string]any(loaded[u1].Attributes))
	require.Equal(t, "2024-05-01T10:00:00.5Z", loaded[u1].LastLogin.UTC().Format(time.RFC3339Nano))

	read := scans()
	one := find(ptx, 0, false, map[string]any{"pk": u1})
	require.Equal(t, read, scans(), "a loaded user is answered from the batch")
	require.Equal(t, find(tx, 0, false, map[string]any{"pk": u1}), one)
	read = scans()
	find(ptx, 1, true, map[string]any{"pk": u1})
	require.Equal(t, read+1, scans(), "a locking read goes to the database")

	both := find(ptx, 0, false, map[string]any{"pk__in": []any{u2, u1}})
	require.Len(t, both, 2)
	read = scans()
	require.Equal(t, both, find(ptx, 0, false, map[string]any{"pk__in": []any{u1, u2}}))
	require.Equal(t, read, scans(), "rows an unlocked read returned are answered from the batch")

	saved, err := rules.Save(ctx, ptx, users, u2, both[1]["updated"], map[string]any{"name": "Two"})
	require.NoError(t, err)
	two := find(ptx, 0, false, map[string]any{"pk": u2})
	require.Equal(t, read, scans())
	require.Equal(t, 1, ptx.QueuedSaves(), "answered with the queued save applied")
	require.Equal(t, "Two", two[0]["name"])
	require.Equal(t, saved, two[0]["updated"])
	require.NoError(t, ptx.Settle(ctx))
	require.Equal(t, find(tx, 0, false, map[string]any{"pk": u2}), two, "the batch answered what the database now holds")

	// Another transaction changes a row the batch read without a lock.
	// Later reads in the batch still see it as first read; a save made on
	// that reading conflicts instead of overwriting the change.
	three := find(ptx, 0, false, map[string]any{"pk": u3})
	db.MustExec(t, `UPDATE users SET name = 'elsewhere', updated = now() WHERE id = $1`, u3)
	require.Equal(t, three, find(ptx, 0, false, map[string]any{"pk": u3}))
	_, err = rules.Save(ctx, ptx, users, u3, three[0]["updated"], map[string]any{"name": "mine"})
	require.NoError(t, err, "queued, not yet checked")
	require.ErrorIs(t, ptx.Settle(ctx), rules.ErrConflict)
}

// A save without a read time of a row the batch read without a lock could
// hide a change made elsewhere since: the row is read back from the
// database, so that a later checked save does not overwrite that change.
func TestUncheckedSavesOfRowsReadWithoutALockAreReadBack(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	var u int64
	require.NoError(t, db.Get(&u, `INSERT INTO users (username) VALUES ('one') RETURNING id`))
	tx, ptx := openBatch(t, db)
	users := rules.Models["User"]
	find := finder(t, users)

	find(ptx, 0, false, map[string]any{"pk": u})
	db.MustExec(t, `UPDATE users SET email = 'set@elsewhere', updated = now() WHERE id = $1`, u)
	_, err := rules.Save(ctx, ptx, users, u, nil, map[string]any{"name": "mine"})
	require.NoError(t, err)
	again := find(ptx, 0, false, map[string]any{"pk": u})
	require.Equal(t, "set@elsewhere", again[0]["email"], "read back from the database")
	_, err = rules.Save(ctx, ptx, users, u, again[0]["updated"], map[string]any{"email": again[0]["email"], "name": "mine, again"})
	require.NoError(t, err)
	require.NoError(t, ptx.Settle(ctx))
	require.Equal(t, find(tx, 0, false, map[string]any{"pk": u}), find(ptx, 0, false, map[string]any{"pk": u}))
	require.Equal(t, "set@elsewhere", find(tx, 0, false, map[string]any{"pk": u})[0]["email"])
}

// A batch that holds as many rows read without a lock as it keeps still
// keeps rows it reads with one, and a locked reading replaces an older
// unlocked one: later reads see what the lock returned.
func TestLockedReadingsReplaceUnlockedOnesInAFullBatch(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	db.MustExec(t, `INSERT INTO users (username) SELECT 'u' || i FROM generate_series(1, $1::int) i`, rules.MaxBatchRows+1)
	var u int64
	require.NoError(t, db.Get(&u, `SELECT min(id) FROM users`))
	tx, ptx := openBatch(t, db)
	find := finder(t, rules.Models["User"])
	require.Len(t, find(ptx, 0, false, map[string]any{"username__startswith": "u"}), rules.MaxBatchRows+1)

	db.MustExec(t, `UPDATE users SET name = 'elsewhere', updated = now() WHERE id = $1`, u)
	locked := find(ptx, 1, true, map[string]any{"pk": u})
	require.Equal(t, "elsewhere", locked[0]["name"])
	read := tableScans(t, tx, "users")
	require.Equal(t, locked, find(ptx, 0, false, map[string]any{"pk": u}))
	require.Equal(t, locked, find(ptx, 1, true, map[string]any{"pk": u}))
	require.Equal(t, read, tableScans(t, tx, "users"), "answered from the batch")
}

// Numbers as encoding/json writes them, at their extremes, through saves.
func TestLockedRowsAnswerSavedNumbersAsStored(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	var g string
	require.NoError(t, db.Get(&g, `INSERT INTO groups (name) VALUES ('g') RETURNING id`))
	tx, ptx := openBatch(t, db)
	find := func(q sqlx.QueryerContext, lock bool) []map[string]any {
		return finder(t, rules.Models["Group"])(q, 0, lock, map[string]any{"pk": g})
	}
	groups := rules.Models["Group"]
	one := find(ptx, true)
	_, err := rules.Save(ctx, ptx, groups, g, one[0]["updated"], map[string]any{"attributes": map[string]any{
		"a": 5e-324, "b": 1.7976931348623157e308, "c": -1e-7, "d": 1.2345e-20, "e": math.Copysign(0, -1),
		"f": 1e21, "g": 123456789.125, "h": int64(-9007199254740993), "i": []any{0.1, -2.5e-9, 1e100},
	}})
	require.NoError(t, err)
	answered := find(ptx, true)
	require.Equal(t, 1, ptx.QueuedSaves(), "answered from the batch")
	require.NoError(t, ptx.Settle(ctx))
	require.Equal(t, find(tx, false), answered)
}

// What the batch answers for a saved JSON field reads, number text for
// number text, as PostgreSQL gives it back from the jsonb column: checked
// against the server itself.
func TestStoredJSONWritesNumbersAsPostgreSQLDoes(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	for _, in := range []string{
		`{"n": 1e+21, "m": -1.5e-07, "k": [0.5e1, 2.50e1, -0, -0.0, 1E2, 7, -3.25, 1e0, 0e5, 10.0]}`,
		`{"s": "1e+21 -0 \"2e3\" \\", "x": [1e-7, {"y": 123456789e-3}]}`,
		`[]`,
	} {
		var stored []byte
		require.NoError(t, db.Get(&stored, `SELECT $1::jsonb::text`, in))
		want, err := events.ParseJSON(stored)
		require.NoError(t, err)
		got, err := events.ParseJSON(rules.StoredJSON([]byte(in)))
		require.NoError(t, err)
		require.Equal(t, want, got, "%s, stored as %s", in, stored)
	}
}

// tableScans counts the index and sequential scans of table made by tx.
func tableScans(t *testing.T, tx *sqlx.Tx, table string) int {
	t.Helper()
	var n int
	require.NoError(t, tx.GetContext(t.Context(), &n, `SELECT COALESCE(idx_scan, 0) + seq_scan FROM pg_stat_xact_user_tables WHERE relid = $1::regclass`, table))
	return n
}

// openBatch begins a transaction on db, rolled back when the test ends, and
// returns it with the policyTx of an optimistic batch on it.
func openBatch(t *testing.T, db *testinfra.DB) (*sqlx.Tx, *rules.PolicyTx) {
	t.Helper()
	tx, err := db.BeginTxx(t.Context(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tx.Rollback() })
	return tx, rules.NewOptimisticPolicyTx(db.DB, tx)
}

// finder returns Find on m's rows, failing the test on an error.
func finder(t *testing.T, m *rules.Model) func(q sqlx.QueryerContext, limit int, lock bool, filters map[string]any) []map[string]any {
	return func(q sqlx.QueryerContext, limit int, lock bool, filters map[string]any) []map[string]any {
		t.Helper()
		rows, err := rules.Find(t.Context(), q, rules.Query{Model: m, Filters: filters}, limit, lock)
		require.NoError(t, err)
		return rows
	}
}

// A policy that saves two copies of one row, or a called policy that saves
// the caller's copy of a user the caller saved, overwrites the
// transaction's own change, as in Django: it is no concurrent change, and
// the event commits instead of failing on every attempt.
func TestSaveOverTheTransactionsOwnChange(t *testing.T) {
	t.Parallel()
	for _, optimistic := range []bool{true, false} {
		t.Run(fmt.Sprintf("optimistic=%v", optimistic), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			alice := b.user(t, "alice")
			copies := b.policy(t, "two-copies", `const a = ak_user_by({pk: request.user.pk});
const c = User.objects.filter({pk: request.user.pk}).all()[0];
a.name = "A"; a.save({update_fields: ["name"]});
c.email = "c@example.com"; c.save({update_fields: ["email"]});
return true;`)
			b.policy(t, "mark-seen", `request.user.attributes.seen = true; request.user.save({update_fields: ["attributes"]}); return true;`)
			caller := b.policy(t, "caller", `request.user.username = "alice2"; request.user.save({update_fields: ["username"]});
return ak_call_policy("mark-seen").passing;`)
			r1 := b.alertRule(t, "copies", binding{Policy: copies})
			r2 := b.alertRule(t, "calls", binding{Policy: caller, Order: 1})
			if !optimistic {
				// A policy that fails after using the database makes the
				// batch run again with a savepoint per policy.
				b.alertRule(t, "fails", binding{Policy: b.policy(t, "fails", `User.objects.filter({pk: 0}).count(); throw new Error("redo");`), Order: 2})
			}
			b.reload(t)

			ev := userEvent(t, "login", alice, nil)
			require.NoError(t, b.engine.HandleEvents(t.Context(), []events.Event{ev}))
			require.True(t, b.fired(t, r1, ev.PK))
			require.True(t, b.fired(t, r2, ev.PK))
			var row struct {
				Name     string `db:"name"`
				Email    string `db:"email"`
				Username string `db:"username"`
				Seen     bool   `db:"seen"`
			}
			require.NoError(t, b.db.GetContext(t.Context(), &row, `SELECT name, email, username, (attributes->>'seen')::bool AS seen FROM users WHERE id = $1`, alice))
			require.Equal(t, "A", row.Name)
			require.Equal(t, "c@example.com", row.Email)
			require.Equal(t, "alice2", row.Username)
			require.True(t, row.Seen)
		})
	}
}

// A policy's save that its savepoint undid is no longer the transaction's
// own change: a copy read before another transaction's change still
// conflicts. P1 saves a row and fails; P2 reads copy A, another transaction
// changes the row, P2 reads and saves copy B, then saves A.
func TestSaveAfterARolledBackSaveStillChecksOtherChanges(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	g := oneGroup(t, db)
	groups := rules.Models["Group"]
	tx, err := db.BeginTxx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck // test
	ptx := rules.NewPolicyTx(db.DB, tx)

	p1 := rules.NewPolicyScope(ptx)
	q, err := p1.DB(ctx)
	require.NoError(t, err)
	rows, err := rules.Find(ctx, q, rules.Query{Model: groups, Filters: map[string]any{"pk": g}}, 1, false)
	require.NoError(t, err)
	r0 := rows[0]["updated"]
	_, err = rules.Save(ctx, q, groups, g, r0, map[string]any{"name": "p1"})
	require.NoError(t, err)
	require.NoError(t, p1.Finish(ctx, true)) // P1 failed: its save is undone

	p2 := rules.NewPolicyScope(ptx)
	q, err = p2.DB(ctx)
	require.NoError(t, err)
	a, err := rules.Find(ctx, q, rules.Query{Model: groups, Filters: map[string]any{"pk": g}}, 0, false)
	require.NoError(t, err)
	require.Equal(t, r0, a[0]["updated"])
	// Another transaction changes the row.
	db.MustExec(t, `UPDATE groups SET name = 'elsewhere', updated = now() WHERE id = $1`, g)
	bRows, err := rules.Find(ctx, q, rules.Query{Model: groups, Filters: map[string]any{"pk": g}}, 1, true)
	require.NoError(t, err)
	require.Equal(t, "elsewhere", bRows[0]["name"])
	_, err = rules.Save(ctx, q, groups, g, bRows[0]["updated"], map[string]any{"attributes": map[string]any{"b": 1}})
	require.NoError(t, err)
	_, err = rules.Save(ctx, q, groups, g, a[0]["updated"], map[string]any{"name": "from-A"})
	require.ErrorIs(t, err, rules.ErrConflict, "A read the row before another transaction changed it")
}

// Queued saves are written in statements within PostgreSQL's parameter
// limit: 11,000 one-field saves, 6 parameters each.
func TestManySavesStayWithinTheParameterLimit(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	db.MustExec(t, `INSERT INTO groups (name) SELECT 'g' || i FROM generate_series(1, 11000) i`)
	var ids []string
	require.NoError(t, db.Select(&ids, `SELECT id FROM groups ORDER BY name`))
	groups := rules.Models["Group"]
	_, ptx := openBatch(t, db)
	for _, id := range ids {
		_, err := rules.Save(ctx, ptx, groups, id, nil, map[string]any{"name": "x" + id})
		require.NoError(t, err)
	}
	require.NoError(t, ptx.Settle(ctx))
}

// In an optimistic batch, a copy read from the batch between two saves of a
// row that join into one UPDATE saves over them: only this transaction
// wrote the row.
func TestSaveOverJoinedSavesOfTheBatch(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	ctx := t.Context()
	g := oneGroup(t, db)
	groups := rules.Models["Group"]
	_, ptx := openBatch(t, db)
	get := func() map[string]any {
		rows, err := rules.Find(ctx, ptx, rules.Query{Model: groups, Filters: map[string]any{"pk": g}}, 1, true)
		require.NoError(t, err)
		return rows[0]
	}
	a := get()
	u1, err := rules.Save(ctx, ptx, groups, g, a["updated"], map[string]any{"name": "a1"})
	require.NoError(t, err)
	c := get()
	require.Equal(t, u1, c["updated"])
	_, err = rules.Save(ctx, ptx, groups, g, u1, map[string]any{"name": "a2"})
	require.NoError(t, err)
	_, err = rules.Save(ctx, ptx, groups, g, c["updated"], map[string]any{"attributes": map[string]any{"c": 1}})
	require.NoError(t, err)
	require.NoError(t, ptx.Settle(ctx))
}

// oneGroup inserts a group named "one" and returns its id.
func oneGroup(t *testing.T, db *testinfra.DB) string {
	t.Helper()
	var g string
	require.NoError(t, db.Get(&g, `INSERT INTO groups (name) VALUES ('one') RETURNING id`))
	return g
}

// Saving an object whose row does not exist fails the policy, as Django's
// "did not affect any rows" does: no retry changes it, so it is not a
// conflict that runs the event again (and dead-letters it in the end, with
// the notifications of every other rule).
func TestSaveOfAMissingRowFailsThePolicy(t *testing.T) {
	t.Parallel()
	b := setup(t)
	jane := b.user(t, "jane")
	other := b.alertRule(t, "other", binding{Policy: b.policy(t, "yes", "return true;")})
	b.alertRule(t, "buggy", binding{Policy: b.policy(t, "buggy", `const u = User.objects.filter({pk: request.user.pk}).first();
u.pk = 999999;
u.save({update_fields: ["attributes"]});
return true;`)})
	b.reload(t)
	ev := userEvent(t, "login", jane, nil)
	require.NoError(t, b.engine.HandleEvents(t.Context(), []events.Event{ev}))
	require.True(t, b.fired(t, other, ev.PK))
	require.Equal(t, 1, b.count(t, `SELECT count(*) FROM events WHERE action = 'policy_exception'
AND context->>'exception' LIKE '%User.save: no User with pk 999999: the save did not affect any rows%'`))
}
