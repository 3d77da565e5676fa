package schema

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/jmoiron/sqlx"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Examples holds the example seed files (examples/*.sql) shipped with Herald.
//
//go:embed examples/*.sql
var Examples embed.FS

// ExampleExpression returns the expression of the first policy that the
// example seed file examples/NAME.sql defines (the text between its $js$
// quotes), so that code and tests can run the example as shipped.
func ExampleExpression(name string) (string, error) {
	b, err := Examples.ReadFile("examples/" + name + ".sql")
	if err != nil {
		return "", fmt.Errorf("example %s: %w", name, err)
	}
	parts := strings.SplitN(string(b), "$js$", 3)
	if len(parts) < 3 {
		return "", fmt.Errorf("example %s: no $js$-quoted expression", name)
	}
	return strings.Trim(parts[1], "\n"), nil
}

// Migration is one embedded SQL file, applied in Version order.
type Migration struct {
	Version string // the file name without ".sql", e.g. "0001_init"
	SQL     string
}

// Migrations returns the embedded migrations in the order they are applied.
func Migrations() ([]Migration, error) {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	sort.Strings(names)
	out := make([]Migration, 0, len(names))
	for _, name := range names {
		b, err := migrations.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		out = append(out, Migration{Version: strings.TrimSuffix(path.Base(name), ".sql"), SQL: string(b)})
	}
	return out, nil
}

// Migrate applies the migrations that the current schema does not have yet,
// each in its own transaction, and returns the versions it applied. The
// first schema of the connection's search_path is created when it does not
// exist (a search_path in DATABASE_URL selects the installation's schema).
//
// It is idempotent and safe to run from several processes at once: a
// transaction-scoped advisory lock, keyed by the schema name, serialises
// concurrent runs, and each run skips what is already recorded in
// schema_migrations.
func Migrate(ctx context.Context, db *sqlx.DB) ([]string, error) {
	all, err := Migrations()
	if err != nil {
		return nil, err
	}
	if err := createSearchPathSchema(ctx, db); err != nil {
		return nil, err
	}
	var current sql.NullString
	if err := db.GetContext(ctx, &current, `SELECT current_schema()`); err != nil {
		return nil, fmt.Errorf("read current schema: %w", err)
	}
	if !current.Valid {
		var searchPath string
		_ = db.GetContext(ctx, &searchPath, `SELECT current_setting('search_path')`)
		return nil, fmt.Errorf("search_path %q selects no schema that exists: name the installation's schema first", searchPath)
	}
	var applied []string
	for _, m := range all {
		done, err := apply(ctx, db, m)
		if err != nil {
			return applied, err
		}
		if done {
			applied = append(applied, m.Version)
		}
	}
	return applied, nil
}

// createSearchPathSchema creates the first schema of the search_path when
// it does not exist, under the lock that serialises the migrations of that
// schema. "$user" counts when a schema of the current user's name exists,
// as PostgreSQL reads it, and is passed over otherwise; pg_ schemas are
// left alone.
func createSearchPathSchema(ctx context.Context, db *sqlx.DB) error {
	var searchPath, user string
	if err := db.QueryRowxContext(ctx, `SELECT current_setting('search_path'), current_user`).Scan(&searchPath, &user); err != nil {
		return fmt.Errorf("read search_path: %w", err)
	}
	name, ok := firstSchema(searchPath)
	if !ok {
		return nil
	}
	if name == "$user" {
		var own bool
		if err := db.GetContext(ctx, &own, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, user); err != nil {
			return fmt.Errorf("look for schema %q: %w", user, err)
		}
		if own {
			return nil
		}
		if name, ok = firstSchema(afterFirst(searchPath)); !ok || name == "$user" {
			return nil
		}
	}
	const exists = `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`
	var found bool
	if err := db.GetContext(ctx, &found, exists, name); err != nil {
		return fmt.Errorf("look for schema %q: %w", name, err)
	}
	if found {
		return nil
	}
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin creating schema %q: %w", name, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	// The key apply uses once the schema exists (current_schema() is then name).
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext('herald_migrate:' || $1))`, name); err != nil {
		return fmt.Errorf("lock schema %q for creation: %w", name, err)
	}
	if err := tx.GetContext(ctx, &found, exists, name); err != nil {
		return fmt.Errorf("look for schema %q: %w", name, err)
	}
	if found { // created meanwhile by another process
		return nil
	}
	if _, err := tx.ExecContext(ctx, `CREATE SCHEMA "`+strings.ReplaceAll(name, `"`, `""`)+`"`); err != nil {
		return fmt.Errorf("create schema %q (the first of search_path): %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit schema %q: %w", name, err)
	}
	return nil
}

// firstSchema returns the first schema a search_path setting names, as
// PostgreSQL reads it: a double-quoted name as written, another in lower
// case ("$user" as it is). It reports false for a pg_ schema, or none.
func firstSchema(searchPath string) (string, bool) {
	first, _ := splitFirst(searchPath)
	name := strings.TrimSpace(first)
	if strings.HasPrefix(name, `"`) {
		if len(name) < 2 || !strings.HasSuffix(name, `"`) {
			return "", false
		}
		name = strings.ReplaceAll(name[1:len(name)-1], `""`, `"`)
	} else {
		name = strings.ToLower(name)
	}
	if name == "" || strings.HasPrefix(name, "pg_") {
		return "", false
	}
	return name, true
}

// afterFirst is searchPath without its first entry.
func afterFirst(searchPath string) string {
	_, rest := splitFirst(searchPath)
	return rest
}

// splitFirst cuts searchPath at the first comma outside double quotes.
func splitFirst(searchPath string) (first, rest string) {
	quoted := false
	for i := 0; i < len(searchPath); i++ {
		switch searchPath[i] {
		case '"':
			quoted = !quoted
		case ',':
			if !quoted {
				return searchPath[:i], searchPath[i+1:]
			}
		}
	}
	return searchPath, ""
}

const createMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version text PRIMARY KEY,
    applied timestamptz NOT NULL DEFAULT now()
)`

// apply runs m unless it is already recorded. It reports whether it ran m.
func apply(ctx context.Context, db *sqlx.DB, m Migration) (bool, error) {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("begin migration %s: %w", m.Version, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit

	// The lock is taken before the table is created, so two processes
	// cannot both try to create it.
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtext('herald_migrate:' || current_schema()))`); err != nil {
		return false, fmt.Errorf("lock schema for migration: %w", err)
	}
	if _, err := tx.ExecContext(ctx, createMigrationsTable); err != nil {
		return false, fmt.Errorf("create schema_migrations: %w", err)
	}
	var exists bool
	if err := tx.GetContext(ctx, &exists, `SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)`, m.Version); err != nil {
		return false, fmt.Errorf("check migration %s: %w", m.Version, err)
	}
	if exists {
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return false, fmt.Errorf("apply migration %s: %w", m.Version, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version) VALUES ($1)`, m.Version); err != nil {
		return false, fmt.Errorf("record migration %s: %w", m.Version, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("commit migration %s: %w", m.Version, err)
	}
	return true, nil
}

// SeedFile is a named SQL script.
type SeedFile struct {
	Name string // shown in errors, usually the path
	SQL  string
}

// ReadSeedFiles reads seed files from disk; a name of the form
// "examples/NAME.sql" that does not exist on disk is read from [Examples].
func ReadSeedFiles(paths ...string) ([]SeedFile, error) {
	files := make([]SeedFile, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			if eb, eerr := Examples.ReadFile(p); eerr == nil {
				b, err = eb, nil
			}
		}
		if err != nil {
			return nil, fmt.Errorf("read seed file: %w", err)
		}
		files = append(files, SeedFile{Name: p, SQL: string(b)})
	}
	return files, nil
}

// SeedError names the file and the statement of a seed file that failed.
type SeedError struct {
	File      string
	Statement int    // 1-based index of the statement within File
	Line      int    // line of File on which the statement starts
	SQL       string // the statement, shortened
	Err       error
}

func (e *SeedError) Error() string {
	return fmt.Sprintf("seed %s: statement %d (line %d) %q: %v", e.File, e.Statement, e.Line, e.SQL, e.Err)
}

func (e *SeedError) Unwrap() error { return e.Err }

// Seed applies the seed files in order, all in one transaction: either every
// statement of every file is applied, or none is. A file's own BEGIN, START
// TRANSACTION, COMMIT and END statements are skipped (they would commit
// part of the seed), and a ROLLBACK (but to a savepoint) is an error. A
// failure is reported as a [*SeedError].
func Seed(ctx context.Context, db *sqlx.DB, files ...SeedFile) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin seed: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	for _, f := range files {
		stmts, err := SplitStatements(f.SQL)
		if err != nil {
			return &SeedError{File: f.Name, Err: err}
		}
		for i, st := range stmts {
			switch transactionControl(st.SQL) {
			case txOpenOrCommit:
				continue
			case txRollback:
				return &SeedError{File: f.Name, Statement: i + 1, Line: st.Line, SQL: shorten(st.SQL, 120),
					Err: errors.New("a seed runs in one transaction; ROLLBACK would end it")}
			}
			if _, err := tx.ExecContext(ctx, st.SQL); err != nil {
				return &SeedError{File: f.Name, Statement: i + 1, Line: st.Line, SQL: shorten(st.SQL, 120), Err: err}
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit seed: %w", err)
	}
	return nil
}

type txStatement int

const (
	txNone         txStatement = iota
	txOpenOrCommit             // BEGIN, START TRANSACTION, COMMIT, END (any form)
	txRollback                 // ROLLBACK or ABORT, but to a savepoint
)

// transactionControl tells whether the statement opens, commits or rolls
// back a transaction.
func transactionControl(sql string) txStatement {
	for {
		sql = strings.TrimSpace(sql)
		switch {
		case strings.HasPrefix(sql, "--"):
			_, rest, _ := strings.Cut(sql, "\n")
			sql = rest
			continue
		case strings.HasPrefix(sql, "/*"):
			_, rest, _ := strings.Cut(sql, "*/")
			sql = rest
			continue
		}
		break
	}
	words := strings.Fields(strings.ToLower(strings.TrimRight(sql, "; \t\r\n")))
	if len(words) == 0 {
		return txNone
	}
	second := ""
	if len(words) > 1 {
		second = words[1]
	}
	switch words[0] {
	case "begin", "commit", "end":
		return txOpenOrCommit
	case "start":
		if second == "transaction" {
			return txOpenOrCommit
		}
	case "rollback", "abort":
		if second == "to" || len(words) > 2 && words[2] == "to" {
			return txNone // to a savepoint
		}
		return txRollback
	}
	return txNone
}

func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
