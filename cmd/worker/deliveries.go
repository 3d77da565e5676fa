package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/heraldhq/herald/rules"
)

// deliveriesCommand lists deliveries, or puts failed and dead ones back to
// pending: worker deliveries [-status S] [-limit N] | retry ID... | retry --dead.
func deliveriesCommand(ctx context.Context, e env, args []string) error {
	if len(args) > 0 && args[0] == "retry" {
		return retryCommand(ctx, e, args[1:])
	}
	fs := e.flags("deliveries")
	status := fs.String("status", "", "only deliveries with this status (pending, sent, failed, dead, skipped)")
	limit := fs.Int("limit", 50, "at most this many deliveries")
	cfg, err := loadConfig(e.getenv, fs, args)
	if err != nil {
		return err
	}
	db, err := e.openExistingDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	rows, err := rules.ListDeliveries(ctx, db, *status, *limit)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSTATUS\tATTEMPTS\tTRANSPORT\tUSER\tRULE\tNEXT ATTEMPT\tLAST ERROR")
	for _, r := range rows {
		next := "-"
		if r.Status == rules.DeliveryFailed || r.Status == rules.DeliveryPending {
			next = r.NextAttemptAt.Local().Format(time.DateTime)
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s (%s)\t%s\t%s\t%s\t%s\n", r.ID, r.Status, r.Attempts, r.Transport, r.Mode,
			r.Username, r.Rule, next, oneLine(r.LastError, 120))
	}
	return w.Flush()
}

func retryCommand(ctx context.Context, e env, args []string) error {
	fs := e.flags("deliveries retry")
	dead := fs.Bool("dead", false, "retry every dead delivery")
	cfg, err := loadConfig(e.getenv, fs, args)
	if err != nil {
		return err
	}
	switch {
	case !*dead && fs.NArg() == 0:
		return errors.New("deliveries retry: give delivery IDs or --dead")
	case *dead && fs.NArg() > 0:
		return errors.New("deliveries retry: give delivery IDs or --dead, not both")
	}
	for _, id := range fs.Args() {
		if strings.HasPrefix(id, "-") {
			return fmt.Errorf("deliveries retry: %q after the delivery IDs: flags go before them", id)
		}
	}
	db, err := e.openExistingDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	n, err := rules.RetryDeliveries(ctx, db, fs.Args(), *dead)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%d deliveries back to pending\n", n)
	return nil
}

func oneLine(s string, n int) string {
	r := []rune(s)
	for i, c := range r {
		if c == '\n' || c == '\r' || c == '\t' {
			r[i] = ' '
		}
	}
	if len(r) > n {
		return string(r[:n]) + "…"
	}
	return string(r)
}
