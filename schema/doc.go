// Package schema owns Herald's PostgreSQL schema: the embedded, ordered SQL
// migrations applied by [Migrate], the loading of SQL seed files by [Seed],
// and the example seed files of the policies from authentik's documentation.
//
// Everything is created in the connection's current schema (the first entry
// of search_path), so several installations or test runs can share one
// database.
package schema
