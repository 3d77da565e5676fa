package testinfra

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"testing"

	"github.com/jmoiron/sqlx"
	_ "github.com/lib/pq" // the postgres driver
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/heraldhq/herald/rules"
	"github.com/heraldhq/herald/schema"
)

var postgres service

// PostgresURL returns the URL of the shared PostgreSQL server's database.
func PostgresURL(t testing.TB) string {
	t.Helper()
	return postgres.get(t, "PostgreSQL", func() (string, error) {
		if u := os.Getenv("DATABASE_URL"); u != "" {
			return u, nil
		}
		if answers("127.0.0.1:5432") {
			return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", nil
		}
		ports, err := startContainer("postgres:17-alpine", []string{"5432/tcp"},
			wait.ForAll(wait.ForLog("database system is ready to accept connections").WithOccurrence(2), wait.ForListeningPort("5432/tcp")),
			testcontainers.WithEnv(map[string]string{"POSTGRES_HOST_AUTH_METHOD": "trust"}))
		if err != nil {
			return "", err
		}
		return "postgres://postgres@" + ports["5432/tcp"] + "/postgres?sslmode=disable", nil
	})
}

// DB is a database connection confined to a schema of its own.
type DB struct {
	*sqlx.DB
	// URL connects to the same schema (search_path is set in it).
	URL string
	// Schema is the schema's name.
	Schema string
}

// Postgres returns a connection whose search_path is a new schema with
// Herald's migrations applied. The schema is dropped when the test ends.
func Postgres(t testing.TB) *DB {
	t.Helper()
	db := EmptyPostgres(t)
	if _, err := schema.Migrate(context.Background(), db.DB); err != nil {
		t.Fatalf("migrate schema %s: %v", db.Schema, err)
	}
	return db
}

// EmptyPostgres is [Postgres] without the migrations.
func EmptyPostgres(t testing.TB) *DB {
	t.Helper()
	base := PostgresURL(t)
	name := Name(t)
	ctx := context.Background()

	admin, err := sqlx.Open("postgres", base)
	if err != nil {
		t.Fatalf("open PostgreSQL: %v", err)
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+name); err != nil {
		t.Fatalf("create schema %s: %v", name, err)
	}
	t.Cleanup(func() {
		a, err := sqlx.Open("postgres", base)
		if err != nil {
			return
		}
		defer a.Close()
		_, _ = a.ExecContext(context.Background(), `DROP SCHEMA `+name+` CASCADE`)
	})

	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("DATABASE_URL must be a URL: %v", err)
	}
	q := u.Query()
	q.Set("search_path", name)
	for k, v := range rules.ConnectionParams {
		q.Set(k, v)
	}
	u.RawQuery = q.Encode()
	db, err := sqlx.Open("postgres", u.String())
	if err != nil {
		t.Fatalf("open PostgreSQL schema %s: %v", name, err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return &DB{DB: db, URL: u.String(), Schema: name}
}

// MustExec runs SQL statements in db, failing the test on error.
func (db *DB) MustExec(t testing.TB, query string, args ...any) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), query, args...); err != nil {
		t.Fatalf("exec %q: %v", shorten(query), err)
	}
}

func shorten(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return fmt.Sprint(s)
}
