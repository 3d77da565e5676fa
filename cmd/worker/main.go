// Command worker is Herald's single binary: it runs the notification-rule
// worker and the operator commands around it (migrate, seed, publish, check).
//
// Run "worker help" for the commands and their flags; configuration comes
// from the environment (see README.md), flags override it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/jmoiron/sqlx"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := dispatch(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "worker:", err)
		os.Exit(1)
	}
}

const usage = `usage: worker <command> [flags]

commands:
  run        consume events and evaluate notification rules (the default)
  migrate    apply database migrations (idempotent)
  seed       apply SQL seed files in one transaction: worker seed FILE...
  publish    publish events from a file, stdin or flags
  check      compile every policy and report errors
  eval       dry-run the rules (or -rule, -policy) against an event: results and effects, none performed
  bench      measure throughput and latency against the floor of the same run
  deliveries list deliveries (dead and failed first); "deliveries retry ID...|--dead" retries them
  help       show this text

Run "worker <command> -h" for a command's flags.
`

type command func(ctx context.Context, env env, args []string) error

// env is what a command may use of the process.
type env struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// flags returns an empty flag set for a command, printing to stderr.
func (e env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return fs
}

// openDB connects to the configured database, logging to stderr.
func (e env) openDB(ctx context.Context, cfg config) (*sqlx.DB, error) {
	return openDB(ctx, cfg.DatabaseURL, cfg.logger(e.stderr))
}

// openExistingDB connects to the configured database, which must exist.
func (e env) openExistingDB(ctx context.Context, cfg config) (*sqlx.DB, error) {
	return openExistingDB(ctx, cfg.DatabaseURL)
}

func dispatch(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	e := env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	name := "run"
	if len(args) > 0 {
		name, args = args[0], args[1:]
	}
	commands := map[string]command{
		"run":        runCommand,
		"migrate":    migrateCommand,
		"seed":       seedCommand,
		"publish":    publishCommand,
		"check":      checkCommand,
		"deliveries": deliveriesCommand,
		"bench":      benchCommand,
		// The publisher process of `bench -rate`; not for use by hand.
		"bench-publish": benchPublishCommand,
		"eval":          evalCommand,
	}
	switch name {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", name)
	}
	return cmd(ctx, e, args)
}
