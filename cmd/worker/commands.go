package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
	"github.com/heraldhq/herald/schema"
)

func migrateCommand(ctx context.Context, e env, args []string) error {
	fs := e.flags("migrate")
	cfg, err := loadConfig(e.getenv, fs, args)
	if err != nil {
		return err
	}
	db, err := e.openDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	applied, err := schema.Migrate(ctx, db)
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintln(e.stdout, "database is up to date")
	}
	for _, v := range applied {
		fmt.Fprintln(e.stdout, "applied", v)
	}
	return nil
}

func seedCommand(ctx context.Context, e env, args []string) error {
	fs := e.flags("seed")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: worker seed [flags] FILE...\n\nApplies the SQL files in one transaction; "+
			"examples/NAME.sql names an example shipped in the binary.")
		fs.PrintDefaults()
	}
	cfg, err := loadConfig(e.getenv, fs, args)
	if err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("seed: no files given")
	}
	files, err := schema.ReadSeedFiles(fs.Args()...)
	if err != nil {
		return err
	}
	db, err := e.openDB(ctx, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := schema.Migrate(ctx, db); err != nil {
		return err
	}
	if err := schema.Seed(ctx, db, files...); err != nil {
		return err
	}
	for _, f := range files {
		fmt.Fprintln(e.stdout, "seeded", f.Name)
	}
	return nil
}

func checkCommand(ctx context.Context, e env, args []string) error {
	fs := e.flags("check")
	cfg, err := loadConfig(e.getenv, fs, args)
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
	var mappings []struct {
		Name       string `db:"name"`
		Expression string `db:"expression"`
	}
	if err := db.SelectContext(ctx, &mappings, `SELECT name, expression FROM webhook_mappings ORDER BY name`); err != nil {
		return fmt.Errorf("read webhook mappings: %w", err)
	}
	pool := jsrt.New(jsrt.Config{Size: 1})
	failed := 0
	check := func(p *rules.Policy) {
		if err := pool.Check(p); err != nil {
			failed++
			fmt.Fprintln(e.stdout, "FAIL", err)
		}
	}
	policies := 0
	for _, p := range rs.Policies {
		if p.Kind == rules.KindExpression {
			policies++
			check(p)
		}
	}
	for _, m := range mappings {
		check(&rules.Policy{Name: "webhook mapping " + m.Name, Kind: rules.KindExpression, Expression: m.Expression})
	}
	fmt.Fprintf(e.stdout, "%d policies and %d webhook mappings checked, %d failed\n", policies, len(mappings), failed)
	if failed > 0 {
		return fmt.Errorf("%d expressions do not compile", failed)
	}
	return nil
}

func publishCommand(ctx context.Context, e env, args []string) error {
	fs := e.flags("publish")
	var (
		file  = fs.String("f", "", "read events from `FILE` (\"-\" for stdin): one JSON object, an array, or one object per line")
		flags = addEventFlags(fs)
		pk    = fs.String("pk", "", "the event's pk (default: a new UUID)")
		raw   = fs.Bool("raw", false, "publish the input bytes unchecked as one message (to test dead-lettering)")
	)
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: worker publish [flags] [FILE]\n\nPublishes events to the stream; fills pk and created when missing and prints each pk.")
		fs.PrintDefaults()
	}
	cfg, err := loadConfig(e.getenv, fs, args)
	if err != nil {
		return err
	}
	if *file == "" && fs.NArg() > 0 {
		*file = fs.Arg(0)
	}

	var payloads [][]byte
	switch {
	case *flags.action != "":
		b, err := flags.payload(*pk)
		if err != nil {
			return err
		}
		payloads = append(payloads, b)
	case *file != "":
		data, err := readInput(*file, e.stdin)
		if err != nil {
			return err
		}
		if *raw {
			payloads = append(payloads, data)
		} else if payloads, err = splitEvents(data); err != nil {
			return err
		}
	default:
		fs.Usage()
		return errors.New("publish: give -action or a FILE (\"-\" for stdin)")
	}
	if *pk != "" && len(payloads) > 1 {
		// One pk for several events: the stream would keep the first.
		return fmt.Errorf("publish: -pk names one event, and the input holds %d", len(payloads))
	}

	// Every event is filled and validated before the first is published:
	// an input with an invalid event publishes nothing.
	type event struct {
		payload    []byte
		id, action string
	}
	var outgoing []event
	for i, p := range payloads {
		if *raw {
			break // published unchecked
		}
		filled, id, act, err := fillEvent(p, *pk)
		if err == nil {
			_, err = events.Decode(filled)
		}
		if err != nil && len(payloads) > 1 {
			return fmt.Errorf("event %d of %d: %w (nothing was published)", i+1, len(payloads), err)
		} else if err != nil {
			return err
		}
		outgoing = append(outgoing, event{payload: filled, id: id, action: act})
	}

	nc, err := connectNATS(cfg, false, cfg.logger(e.stderr))
	if err != nil {
		return err
	}
	defer nc.close()
	if _, err := events.EnsureStream(ctx, nc.js, events.StreamConfig{
		Name: cfg.Stream, SubjectPrefix: cfg.SubjectPrefix, MaxAge: cfg.StreamMaxAge,
	}); err != nil {
		return err
	}
	if *raw {
		for _, p := range payloads {
			if _, err := nc.js.Publish(ctx, events.Subject(cfg.SubjectPrefix, "raw"), p); err != nil {
				return fmt.Errorf("publish raw message: %w", err)
			}
			fmt.Fprintln(e.stdout, "published raw message")
		}
		return nil
	}
	pub := events.NewPublisher(nc.js, cfg.SubjectPrefix)
	duplicates := 0
	for _, ev := range outgoing {
		err := pub.PublishRaw(ctx, ev.id, ev.action, ev.payload)
		if errors.Is(err, events.ErrDuplicate) {
			// Not published; the rest of the input still is.
			duplicates++
			fmt.Fprintf(e.stderr, "%s: not published: a message with this pk is already in the stream\n", ev.id)
			continue
		}
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, ev.id)
	}
	if duplicates > 0 {
		return fmt.Errorf("publish: %d of %d events not published: %w", duplicates, len(payloads), events.ErrDuplicate)
	}
	return nil
}

// eventFlags are the flags of publish and eval that build one event.
type eventFlags struct {
	action, app, username, email, context, clientIP *string
	userPK                                          *int64
}

func addEventFlags(fs *flag.FlagSet) *eventFlags {
	return &eventFlags{
		action:   fs.String("action", "", "build one event with this action from flags instead of reading a file"),
		app:      fs.String("app", "", "the event's app (with -action)"),
		userPK:   fs.Int64("user-pk", 0, "the event user's pk (with -action)"),
		username: fs.String("username", "", "the event user's username (with -action)"),
		email:    fs.String("email", "", "the event user's email (with -action)"),
		context:  fs.String("context", "{}", "the event context as a JSON object (with -action)"),
		clientIP: fs.String("client-ip", "", "the event's client IP (with -action)"),
	}
}

// payload builds the event, with pk when it is not empty.
func (f *eventFlags) payload(pk string) ([]byte, error) {
	var c map[string]any
	if err := json.Unmarshal([]byte(*f.context), &c); err != nil {
		return nil, fmt.Errorf("-context: want a JSON object: %w", err)
	}
	ev := map[string]any{"action": *f.action, "app": *f.app, "context": c, "user": map[string]any{}}
	if pk != "" {
		ev["pk"] = pk
	}
	if *f.userPK != 0 || *f.username != "" {
		ev["user"] = map[string]any{"pk": *f.userPK, "username": *f.username, "email": *f.email}
	}
	if *f.clientIP != "" {
		ev["client_ip"] = *f.clientIP
	}
	return json.Marshal(ev)
}

func readInput(name string, stdin io.Reader) ([]byte, error) {
	if name == "-" {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("read stdin: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	return b, nil
}

// splitEvents accepts one JSON object, an array of objects, or a stream of
// objects (e.g. one per line).
func splitEvents(data []byte) ([][]byte, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var arr []json.RawMessage
		if err := json.Unmarshal(trimmed, &arr); err != nil {
			return nil, fmt.Errorf("read events: %w", err)
		}
		out := make([][]byte, len(arr))
		for i, a := range arr {
			out[i] = a
		}
		return out, nil
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	var out [][]byte
	for dec.More() {
		var m json.RawMessage
		if err := dec.Decode(&m); err != nil {
			return nil, fmt.Errorf("read events: event %d: %w", len(out)+1, err)
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, errors.New("read events: no event in input")
	}
	return out, nil
}

// fillEvent sets pk (to pkFlag, or a new UUID) and created (now) when they
// are missing or null, and returns the payload, its pk and its action. A pk
// that is present but not a string is refused: it is malformed, not
// missing, and the worker would dead-letter the event.
func fillEvent(data []byte, pkFlag string) ([]byte, string, string, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		return nil, "", "", fmt.Errorf("event is not a JSON object: %.80s", data)
	}
	var id, action string
	if raw, ok := m["pk"]; !ok || string(raw) == "null" || string(raw) == `""` {
		id = cmpOr(pkFlag, newUUID())
		m["pk"], _ = json.Marshal(id)
	} else if err := json.Unmarshal(raw, &id); err != nil {
		return nil, "", "", fmt.Errorf("pk %.40s: want a UUID string, or no pk for a new one", raw)
	}
	_ = json.Unmarshal(m["action"], &action)
	if canon, err := events.CanonicalUUID(id); err == nil {
		id = canon
	}
	if _, ok := m["created"]; !ok || string(m["created"]) == "null" {
		m["created"], _ = json.Marshal(time.Now().UTC().Format(time.RFC3339Nano))
	}
	out, err := json.Marshal(m)
	if err != nil {
		return nil, "", "", fmt.Errorf("encode event: %w", err)
	}
	return out, id, strings.TrimSpace(action), nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
