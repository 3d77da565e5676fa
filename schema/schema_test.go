package schema_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/jmoiron/sqlx"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/schema"
)

func TestSplitStatements(t *testing.T) {
	t.Parallel()
	script := `-- a comment; with a semicolon
INSERT INTO t VALUES ('a;b', 'it''s');
/* block; comment /* nested; */ */
CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;
INSERT INTO policies (name, expression) VALUES ('p', $js$
const a = "x;y"; return a;
$js$);
SELECT E'\';' ;
SELECT "weird;name" FROM t`
	stmts, err := schema.SplitStatements(script)
	require.NoError(t, err)
	require.Len(t, stmts, 5)
	require.Equal(t, 2, stmts[0].Line)
	require.Equal(t, "INSERT INTO t VALUES ('a;b', 'it''s')", stmts[0].SQL)
	require.Contains(t, stmts[1].SQL, "SELECT 1; $$")
	require.Equal(t, 4, stmts[1].Line)
	require.Contains(t, stmts[2].SQL, `const a = "x;y"; return a;`)
	require.Equal(t, 5, stmts[2].Line)
	require.Equal(t, `SELECT E'\';'`, stmts[3].SQL)
	require.Equal(t, 9, stmts[4].Line)

	for _, bad := range []string{"SELECT 'open", "SELECT $$ open", "/* open"} {
		_, err := schema.SplitStatements(bad)
		require.Error(t, err, bad)
	}
}

// Each statement's line is where its first token is: after comments, and
// after quotes and dollar quotes that span lines.
func TestSplitStatementLines(t *testing.T) {
	t.Parallel()
	script := "-- header\n" + // 1
		"/* a\n" + // 2
		"   b */ INSERT INTO t VALUES ('x\n" + // 3
		"y');\n" + // 4
		"INSERT INTO p VALUES ($js$\n" + // 5
		"const s = `${a}`; -- not a comment\n" + // 6
		"$js$); -- trailing; comment\n" + // 7
		"\n" + // 8
		"SELECT E'it\\'s', 'a\\'; SELECT 2;\n" + // 9
		"SELECT 3 -- no newline at end" // 10
	stmts, err := schema.SplitStatements(script)
	require.NoError(t, err)
	var lines []int
	for _, s := range stmts {
		lines = append(lines, s.Line)
	}
	require.Equal(t, []int{3, 5, 9, 9, 10}, lines, "%+v", stmts)
}

func TestMigrateIsIdempotentAndSafeConcurrently(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t) // migrated once already
	applied, err := schema.Migrate(t.Context(), db.DB)
	require.NoError(t, err)
	require.Empty(t, applied, "a second run applies nothing")

	// A fresh schema migrated by four processes at once.
	fresh := testinfra.EmptyPostgres(t)
	var wg sync.WaitGroup
	results := make([][]string, 4)
	errs := make([]error, 4)
	for i := range 4 {
		wg.Go(func() { results[i], errs[i] = schema.Migrate(context.Background(), fresh.DB) })
	}
	wg.Wait()
	all, err := schema.Migrations()
	require.NoError(t, err)
	total := 0
	for i := range 4 {
		require.NoError(t, errs[i])
		total += len(results[i])
	}
	require.Equal(t, len(all), total, "each migration is applied exactly once")
	var n int
	require.NoError(t, fresh.Get(&n, `SELECT count(*) FROM schema_migrations`))
	require.Equal(t, len(all), n)
}

// The schema a search_path names is created when it does not exist, by
// several processes at once too; a quoted name keeps its case.
func TestMigrateCreatesTheSearchPathSchema(t *testing.T) {
	t.Parallel()
	base, err := url.Parse(testinfra.PostgresURL(t))
	require.NoError(t, err)
	admin, err := sqlx.Connect("postgres", base.String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close() }) // after the schemas are dropped
	plain := testinfra.Name(t)
	quoted := strings.ToUpper(testinfra.Name(t)) + ` "q", r`
	afterUser := testinfra.Name(t) + "_after_user"
	quotedAfterUser := strings.ToUpper(testinfra.Name(t)) + ",after user"
	for _, c := range []struct{ searchPath, schema string }{
		{plain, plain},
		{`"` + strings.ReplaceAll(quoted, `"`, `""`) + `"`, quoted},
		// PostgreSQL's default form: no schema is named after the user.
		{`"$user", ` + afterUser, afterUser},
		{`$user,"` + quotedAfterUser + `", public`, quotedAfterUser},
	} {
		t.Cleanup(func() {
			_, _ = admin.Exec(`DROP SCHEMA IF EXISTS "` + strings.ReplaceAll(c.schema, `"`, `""`) + `" CASCADE`)
		})
		u := *base
		q := u.Query()
		q.Set("search_path", c.searchPath)
		u.RawQuery = q.Encode()
		db, err := sqlx.Open("postgres", u.String())
		require.NoError(t, err)
		defer db.Close()

		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i := range errs {
			wg.Go(func() { _, errs[i] = schema.Migrate(t.Context(), db) })
		}
		wg.Wait()
		for _, err := range errs {
			require.NoError(t, err, "search_path %s", c.searchPath)
		}
		var tables int
		require.NoError(t, admin.Get(&tables, `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'events'`, c.schema))
		require.Equal(t, 1, tables, "search_path %s", c.searchPath)
	}
}

// A search_path that selects no schema is refused with a clear error.
func TestMigrateRefusesASearchPathWithoutSchema(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(testinfra.PostgresURL(t))
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", `"$user"`) // no schema is named after the user
	u.RawQuery = q.Encode()
	db, err := sqlx.Open("postgres", u.String())
	require.NoError(t, err)
	defer db.Close()
	_, err = schema.Migrate(t.Context(), db)
	require.ErrorContains(t, err, `search_path "\"$user\"" selects no schema that exists`)
}

func TestSeedAppliesAllOrNothingAndNamesTheFailure(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	good := schema.SeedFile{Name: "good.sql", SQL: `INSERT INTO users (username) VALUES ('a');`}
	bad := schema.SeedFile{Name: "bad.sql", SQL: "INSERT INTO users (username) VALUES ('b');\n\nINSERT INTO nowhere VALUES (1);"}
	err := schema.Seed(t.Context(), db.DB, good, bad)
	var seedErr *schema.SeedError
	require.True(t, errors.As(err, &seedErr), "%v", err)
	require.Equal(t, "bad.sql", seedErr.File)
	require.Equal(t, 2, seedErr.Statement)
	require.Equal(t, 3, seedErr.Line)
	require.Contains(t, err.Error(), "nowhere")
	var users int
	require.NoError(t, db.Get(&users, `SELECT count(*) FROM users`))
	require.Zero(t, users, "nothing of a failed seed is applied")

	require.NoError(t, schema.Seed(t.Context(), db.DB, good))
	require.NoError(t, db.Get(&users, `SELECT count(*) FROM users`))
	require.Equal(t, 1, users)

	// A file's own transaction does not commit part of the seed.
	wrapped := schema.SeedFile{Name: "wrapped.sql", SQL: "BEGIN;\nINSERT INTO users (username) VALUES ('c');\nCOMMIT;\n-- next\nStart Transaction;\nINSERT INTO nowhere VALUES (1);\nEND;"}
	err = schema.Seed(t.Context(), db.DB, wrapped)
	require.ErrorContains(t, err, "nowhere")
	require.NoError(t, db.Get(&users, `SELECT count(*) FROM users`))
	require.Equal(t, 1, users, "nothing of the failed seed is applied")

	chained := schema.SeedFile{Name: "chained.sql", SQL: "INSERT INTO users (username) VALUES ('d');\nCOMMIT AND CHAIN;\nINSERT INTO nowhere VALUES (1);"}
	require.ErrorContains(t, schema.Seed(t.Context(), db.DB, chained), "nowhere")
	rolled := schema.SeedFile{Name: "rolled.sql", SQL: "SAVEPOINT s;\nINSERT INTO users (username) VALUES ('e');\nROLLBACK TO SAVEPOINT s;\nINSERT INTO users (username) VALUES ('f');\nROLLBACK;"}
	require.ErrorContains(t, schema.Seed(t.Context(), db.DB, rolled), "ROLLBACK would end it")
	require.NoError(t, db.Get(&users, `SELECT count(*) FROM users`))
	require.Equal(t, 1, users, "nothing of the failed seeds is applied")
}

func TestExamplesSeedTwice(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	names := []string{"unknown-device-login", "send-welcome-email", "deactivated-user-ssh-keys", "application-without-bindings", "group-user-history"}
	var files []string
	for _, n := range names {
		files = append(files, "examples/"+n+".sql")
	}
	seeds, err := schema.ReadSeedFiles(files...)
	require.NoError(t, err)
	require.NoError(t, schema.Seed(t.Context(), db.DB, seeds...))
	require.NoError(t, schema.Seed(t.Context(), db.DB, seeds...), "the examples can be applied again")
	var rules, bindings int
	require.NoError(t, db.Get(&rules, `SELECT count(*) FROM notification_rules`))
	require.NoError(t, db.Get(&bindings, `SELECT count(*) FROM policy_bindings`))
	require.Equal(t, 5, rules)
	require.Equal(t, 5, bindings)
}

func TestExampleExpression(t *testing.T) {
	t.Parallel()
	expression, err := schema.ExampleExpression("group-user-history")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(expression, "const event = request.context.event;\n"), "%q", expression)
	require.True(t, strings.HasSuffix(expression, "group.save({update_fields: [\"attributes\"]});\nreturn false;"), "%q", expression)
	_, err = schema.ExampleExpression("no-such-example")
	require.Error(t, err)
}

// Users given their ids (authentik's pks) and users that take the default
// mix once the sequence is moved, with the README's statement.
func TestUserIDsGivenThenDefault(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	db.MustExec(t, `INSERT INTO users (id, username) VALUES (12, 'jane')`)
	db.MustExec(t, `SELECT setval(pg_get_serial_sequence('users', 'id'), (SELECT max(id) FROM users))`)
	for i := range 3 {
		db.MustExec(t, `INSERT INTO users (username) VALUES ($1)`, "user"+strings.Repeat("x", i))
	}
	var ids []int64
	require.NoError(t, db.Select(&ids, `SELECT id FROM users ORDER BY id`))
	require.Equal(t, []int64{12, 13, 14, 15}, ids)
}

// The README's SQL runs as written on a fresh schema.
func TestReadmeSQLRuns(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	blocks := strings.Split(string(readme), "```sql\n")[1:]
	require.NotEmpty(t, blocks)
	for i, block := range blocks {
		sql, _, ok := strings.Cut(block, "```")
		require.True(t, ok, "block %d is not closed", i)
		db := testinfra.Postgres(t)
		require.NoError(t, schema.Seed(t.Context(), db.DB, schema.SeedFile{Name: "README", SQL: sql}), "block %d", i)
	}
}
