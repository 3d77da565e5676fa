package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/heraldhq/herald/rules"
)

// openExistingDB connects to dsn's database, which must exist: the commands
// that work on an installation (check, eval, deliveries) do not create an
// empty one.
func openExistingDB(ctx context.Context, dsn string) (*sqlx.DB, error) {
	db, err := connect(ctx, rules.WithConnectionParams(dsn))
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	return db, nil
}

// openDB connects to PostgreSQL. When the database itself does not exist
// yet, it is created first (so the quick start needs no manual step).
func openDB(ctx context.Context, dsn string, logger *slog.Logger) (*sqlx.DB, error) {
	dsn = rules.WithConnectionParams(dsn)
	db, err := connect(ctx, dsn)
	var pqErr *pq.Error
	if errors.As(err, &pqErr) && pqErr.Code == "3D000" { // invalid_catalog_name
		if cerr := createDatabase(ctx, dsn, logger); cerr != nil {
			return nil, cerr
		}
		db, err = connect(ctx, dsn)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	return db, nil
}

func connect(ctx context.Context, dsn string) (*sqlx.DB, error) {
	db, err := sqlx.Open("postgres", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// createDatabase creates the database named in a URL-form dsn by connecting
// to the "postgres" maintenance database on the same server.
func createDatabase(ctx context.Context, dsn string, logger *slog.Logger) error {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return fmt.Errorf("database in %q does not exist and the URL cannot be rewritten to create it", redactDSN(dsn))
	}
	name := strings.TrimPrefix(u.Path, "/")
	u.Path = "/postgres"
	admin, err := connect(ctx, u.String())
	if err != nil {
		return fmt.Errorf("connect to maintenance database to create %q: %w", name, err)
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+pq.QuoteIdentifier(name)); err != nil {
		var pqErr *pq.Error
		// Created meanwhile: duplicate_database, or unique_violation when
		// both CREATE DATABASE statements ran at once.
		if errors.As(err, &pqErr) && (pqErr.Code == "42P04" || pqErr.Code == "23505") {
			return nil
		}
		return fmt.Errorf("create database %q: %w", name, err)
	}
	logger.Info("created database", slog.String("database", name))
	return nil
}

// redactDSN hides the password of a URL-form dsn.
func redactDSN(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		return dsn
	}
	return u.Redacted()
}
