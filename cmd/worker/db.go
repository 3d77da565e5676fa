package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
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
// yet, it is created first (so the quick start needs no manual step); dsn
// may be a URL or a keyword/value connection string.
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

// connect opens a pool on dsn and checks that PostgreSQL answers. Its
// errors never contain the dsn's password.
func connect(ctx context.Context, dsn string) (*sqlx.DB, error) {
	cfg, err := pq.NewConfig(dsn)
	if err != nil {
		return nil, dsnError(dsn, err)
	}
	return connectConfig(ctx, cfg)
}

func connectConfig(ctx context.Context, cfg pq.Config) (*sqlx.DB, error) {
	connector, err := pq.NewConnectorConfig(cfg)
	if err != nil {
		return nil, err
	}
	db := sqlx.NewDb(sql.OpenDB(connector), "postgres")
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

// dsnError is err, from parsing dsn, without the dsn's password. lib/pq
// returns url.Parse's error, which repeats the whole URL, and names the
// word it stopped at in a keyword/value string, which can be the part of
// an unquoted password after a space.
func dsnError(dsn string, err error) error {
	err = withoutURL(err)
	if !isURLDSN(dsn) && strings.Contains(dsn, "password") && strings.Contains(err.Error(), `missing "="`) {
		return errors.New(`connection string: a word without "=" after it (a value holding a space is quoted: password='a b')`)
	}
	return err
}

// createDatabase creates the database that dsn names by connecting to the
// "postgres" maintenance database on the same server.
func createDatabase(ctx context.Context, dsn string, logger *slog.Logger) error {
	cfg, err := pq.NewConfig(dsn)
	if err != nil {
		return dsnError(dsn, err)
	}
	name := cfg.Database
	if name == "" {
		return errors.New("connect to PostgreSQL: the database does not exist, and DATABASE_URL names none (dbname) to create")
	}
	maintenance := cfg.Clone()
	maintenance.Database = "postgres"
	admin, err := connectConfig(ctx, maintenance)
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
