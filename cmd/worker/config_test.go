package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"testing"

	"github.com/jmoiron/sqlx"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
)

// Settings that cannot work are refused when the worker starts, each named.
func TestConfigRefusesSettingsThatCannotWork(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"HERALD_STREAM_MAX_AGE":   "1m",
		"HERALD_MAX_EVENT_DEPTH":  "0",
		"HERALD_ACK_WAIT":         "0s",
		"HERALD_BATCH_WAIT":       "-1ms",
		"HERALD_MAX_ATTEMPTS":     "0",
		"HERALD_SHUTDOWN_TIMEOUT": "0",
	}
	_, err := loadConfig(func(k string) string { return env[k] }, nil, nil)
	require.Error(t, err)
	for k := range env {
		require.ErrorContains(t, err, k)
	}

	_, err = loadConfig(func(k string) string { return map[string]string{"HERALD_STREAM_MAX_AGE": "0"}[k] }, nil, nil)
	require.ErrorContains(t, err, "HERALD_STREAM_MAX_AGE must be at least 2m", "zero is not read as unset")

	cfg, err := loadConfig(func(k string) string { return map[string]string{"HERALD_BATCH_WAIT": "0"}[k] }, nil, nil)
	require.NoError(t, err, "the defaults, and no batch wait, are valid")
	require.Zero(t, cfg.BatchWait)
}

func TestRedactDSN(t *testing.T) {
	t.Parallel()
	for dsn, want := range map[string]string{
		"postgres://herald:pw@db:5432/herald?sslmode=disable":       "postgres://herald:xxxxx@db:5432/herald?sslmode=disable",
		"postgresql://herald@db/herald?password=pw&sslmode=disable": "postgresql://herald@db/herald?password=xxxxx&sslmode=disable",
		"postgres://herald:p/w%zz@db/herald":                        "postgres://xxxxx@db/herald",
		"host=db user=herald password=pw dbname=herald":             "host=db user=herald password=xxxxx dbname=herald",
		"host=db password = 'p w\\' x' dbname=herald":               "host=db password=xxxxx dbname=herald",
		"password=pw":                       "password=xxxxx",
		"host=db user=herald dbname=herald": "host=db user=herald dbname=herald",
		"postgres://herald@db/herald?sslmode=disable&search_path=pwd": "postgres://herald@db/herald?sslmode=disable&search_path=pwd",
	} {
		require.Equal(t, want, redactDSN(dsn), dsn)
	}
}

func TestRedactNATSURL(t *testing.T) {
	t.Parallel()
	for u, want := range map[string]string{
		"nats://herald:pw@nats:4222":                    "nats://herald:xxxxx@nats:4222",
		"nats://token@nats:4222":                        "nats://xxxxx@nats:4222",
		"herald:p@w@nats:4222":                          "herald:xxxxx@nats:4222",
		"nats://a:pw@n1:4222, tls://token@n2:4222,n3:1": "nats://a:xxxxx@n1:4222, tls://xxxxx@n2:4222,n3:1",
		"nats://nats:4222":                              "nats://nats:4222",
	} {
		require.Equal(t, want, redactNATSURL(u), u)
	}
}

// The passwords and tokens of DATABASE_URL and NATS_URL are not printed in
// errors: not from a URL that does not parse (url.Error repeats it), not
// from a keyword/value string, not in the NATS server's address.
func TestSecretsAreNotPrintedInErrors(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-Pw"
	down := freeAddr(t)
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"database url with a typo in the port", map[string]string{
			"DATABASE_URL": "postgres://herald:" + secret + "@127.0.0.1:54x2/herald?sslmode=disable"}, []string{"migrate"}},
		{"database url whose password holds a %", map[string]string{
			"DATABASE_URL": "postgres://herald:" + secret + "%zz@127.0.0.1:5432/herald"}, []string{"migrate"}},
		{"database url with a parameter whose password holds a %", map[string]string{
			"DATABASE_URL": "postgres://herald:" + secret + "%zz@127.0.0.1:5432/herald?sslmode=disable"}, []string{"check"}},
		{"-database-url that does not parse", nil, []string{"migrate", "-database-url", "postgres://herald:" + secret + "%zz@127.0.0.1/herald"}},
		{"keyword dsn with an unquoted password holding a space", map[string]string{
			"DATABASE_URL": "host=127.0.0.1 user=postgres password=pass " + secret + " dbname=postgres"}, []string{"migrate"}},
		{"nats url of a server that is down", map[string]string{
			"NATS_URL": "nats://herald:" + secret + "@" + down}, []string{"publish", "-action", "login"}},
		{"nats url with a token", map[string]string{
			"NATS_URL": "nats://" + secret + "@" + down}, []string{"publish", "-action", "login"}},
		{"nats url whose password holds a %", map[string]string{
			"NATS_URL": "nats://herald:" + secret + "%zz@" + down}, []string{"publish", "-action", "login"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := dispatch(t.Context(), c.args, func(k string) string { return c.env[k] }, strings.NewReader(""), &out, &errOut)
			require.Error(t, err)
			t.Logf("worker %s: %v", strings.Join(c.args, " "), err)
			require.NotContains(t, err.Error()+errOut.String(), secret)
		})
	}

	// Below the configuration's check, as bench's DSNs are.
	logger := slog.New(slog.DiscardHandler)
	for _, dsn := range []string{
		"postgres://herald:" + secret + "@127.0.0.1:54x2/herald?sslmode=disable",
		"postgres://herald:" + secret + "%zz@127.0.0.1:5432/herald?sslmode=disable",
	} {
		_, err := openDB(t.Context(), dsn, logger)
		require.Error(t, err)
		require.NotContains(t, err.Error(), secret)
		_, err = openExistingDB(t.Context(), dsn)
		require.Error(t, err)
		require.NotContains(t, err.Error(), secret)
	}
}

// A database that a keyword/value DATABASE_URL names is created when
// missing, as one a URL names is.
func TestMissingDatabaseIsCreatedForAKeywordDSN(t *testing.T) {
	t.Parallel()
	base, err := url.Parse(testinfra.PostgresURL(t))
	require.NoError(t, err)
	admin, err := sqlx.Connect("postgres", base.String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close() })
	name := "herald_kw_" + strings.ToLower(testinfra.Name(t))
	t.Cleanup(func() { _, _ = admin.Exec(`DROP DATABASE IF EXISTS ` + name + ` WITH (FORCE)`) })

	dsn := fmt.Sprintf("host=%s port=%s user=%s dbname='%s' sslmode=disable", base.Hostname(), base.Port(), base.User.Username(), name)
	db, err := openDB(t.Context(), dsn, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer db.Close()
	var current string
	require.NoError(t, db.Get(&current, `SELECT current_database()`))
	require.Equal(t, name, current)
}
