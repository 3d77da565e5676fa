package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
)

// evalCommand dry-runs the rules (or one rule, or one policy) against an
// event: every binding's result, messages and logs, and the effects it
// would have, none of them performed.
func evalCommand(ctx context.Context, e env, args []string) error {
	fs := e.flags("eval")
	var (
		file   = fs.String("f", "", "read the event from `FILE` (\"-\" for stdin)")
		rule   = fs.String("rule", "", "evaluate only this rule")
		policy = fs.String("policy", "", "evaluate only this policy (bound to a rule or not)")
		asJSON = fs.Bool("json", false, "print the report as JSON")
		flags  = addEventFlags(fs)
	)
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: worker eval [flags] [FILE]\n\nDry-runs the rules against an event; nothing is stored, sent or published.")
		fs.PrintDefaults()
	}
	cfg, err := loadConfig(e.getenv, fs, args)
	if err != nil {
		return err
	}
	if *file == "" && fs.NArg() > 0 {
		*file = fs.Arg(0)
	}
	var payload []byte
	switch {
	case *flags.action != "":
		payload, err = flags.payload("")
		if err != nil {
			return err
		}
	case *file != "":
		if payload, err = readInput(*file, e.stdin); err != nil {
			return err
		}
	default:
		fs.Usage()
		return errors.New("eval: give -action or a FILE (\"-\" for stdin)")
	}
	filled, _, _, err := fillEvent(payload, "")
	if err != nil {
		return err
	}
	ev, err := events.Decode(filled)
	if err != nil {
		return err
	}

	db, err := e.openExistingDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	rs, err := rules.LoadRuleSet(ctx, db)
	if err != nil {
		return err
	}
	if *policy != "" {
		if rs, err = rs.OnlyPolicy(*policy); err != nil {
			return err
		}
	}
	pool := jsrt.New(jsrt.Config{Size: 1, Logger: cfg.logger(io.Discard)})
	engine := rules.NewEngine(db, rules.StaticRules{Set: rs}, pool, rules.EngineConfig{MaxEventDepth: cfg.MaxEventDepth, Logger: cfg.logger(io.Discard)})
	report, err := engine.DryRun(ctx, ev, *rule)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(report)
	}
	printReport(e.stdout, report)
	return nil
}

func printReport(w io.Writer, r *rules.DryRunReport) {
	fmt.Fprintf(w, "event %s (%s), a dry run: nothing was stored, sent or published\n", r.Event.PK, r.Event.Action)
	if r.Guard != "" {
		fmt.Fprintf(w, "matches no rule: %s\n", r.Guard)
		return
	}
	for _, b := range r.Bindings {
		verdict := "fails"
		if b.Passing {
			verdict = "passes"
		}
		neg := ""
		if b.Negate {
			neg = " (negated)"
		}
		fmt.Fprintf(w, "  rule %q #%d %s %s: %s%s\n", b.Rule, b.Order, b.Kind, b.Target, verdict, neg)
		if b.Error != "" {
			fmt.Fprintf(w, "      error: %s\n", b.Error)
		}
		for _, m := range b.Messages {
			fmt.Fprintf(w, "      message: %s\n", m)
		}
		for _, l := range b.Logs {
			fmt.Fprintf(w, "      log %s: %s %v\n", l.Level, l.Message, l.Fields)
		}
		if b.Raw != nil {
			raw, _ := json.Marshal(b.Raw)
			fmt.Fprintf(w, "      returned: %s\n", raw)
		}
	}
	fmt.Fprintf(w, "fires: %s\n", orNone(strings.Join(r.Fired, ", ")))
	for _, n := range r.Notifications {
		fmt.Fprintf(w, "  would notify user %d (%s, rule %q) via %s: %s\n", n.UserID, n.Severity, n.Rule, strings.Join(n.Transports, ", "), n.Body)
	}
	for _, ev := range r.CreatedEvents {
		c, _ := json.Marshal(ev.Context)
		fmt.Fprintf(w, "  would create event %s: %s\n", ev.Action, c)
	}
	for _, m := range r.Emails {
		fmt.Fprintf(w, "  would email %s: %q\n", strings.Join(m.To, ", "), m.Subject)
	}
	for _, s := range r.Saves {
		fmt.Fprintf(w, "  would save %s\n", s)
	}
}

func orNone(s string) string {
	if s == "" {
		return "no rule"
	}
	return s
}
