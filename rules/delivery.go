package rules

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/events"
)

// Delivery is one (notification, transport) pair to carry out, with what
// its transport needs.
type Delivery struct {
	ID       string `db:"id"`
	Attempts int    `db:"attempts"`

	NotificationID string  `db:"notification_id"`
	Severity       string  `db:"severity"`
	Body           string  `db:"body"`
	Hyperlink      *string `db:"hyperlink"`
	HyperlinkLabel *string `db:"hyperlink_label"`
	RuleName       string  `db:"rule_name"`

	Transport Transport `db:"transport"`
	// User is the recipient.
	User User `db:"recipient"`
	// EventJSON is the notification's event in wire form (null if deleted).
	EventJSON []byte `db:"event_json"`
	// Event is EventJSON decoded, nil when the event is gone.
	Event *events.Event `db:"-"`
}

// DeliveryResult is what a transport reports for one delivery.
type DeliveryResult struct {
	// Skipped means there was nothing to do (e.g. a user without email);
	// the delivery is recorded as skipped, not failed.
	Skipped bool
	// Note is recorded in last_error for skipped deliveries.
	Note string
	// Event, when set, is an event the delivery created (email_sent): it is
	// stored with the delivery's sent status, in one transaction, so that
	// neither is recorded without the other.
	Event *OutcomeEvent
}

// OutcomeEvent is an event that a delivery or an outbox item creates
// (email_sent); its pk derives from the delivery or the item.
type OutcomeEvent struct {
	Action, App   string
	User, Context map[string]any
	// Cause is the event that led to an outbox item's event. A delivery's
	// event is caused by its notification's event.
	Cause *EventCause
}

// EventCause is what an event created after its cause's batch committed
// needs of that cause: its pk, its depth in a chain of created events (for
// the loop guard) and its brand.
type EventCause struct {
	Event string         `json:"event"`
	Depth int            `json:"depth"`
	Brand map[string]any `json:"brand,omitempty"`
}

// causeOf is ev as the cause of an event created later; nil for nil.
func causeOf(ev *events.Event) *EventCause {
	if ev == nil {
		return nil
	}
	return &EventCause{Event: ev.PK, Depth: EventDepth(ev), Brand: ev.Brand}
}

// Transporter carries out deliveries of one transport mode.
type Transporter interface {
	Deliver(ctx context.Context, d *Delivery) (DeliveryResult, error)
}

// PermanentError marks a delivery failure that retrying cannot fix; the
// delivery is declared dead at once.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// DispatcherConfig configures a [Dispatcher]. The zero value of each field
// means its default.
type DispatcherConfig struct {
	// Transports by mode (local, webhook, webhook_slack, email). Deliveries of a
	// mode without a transporter stay pending.
	Transports map[string]Transporter
	// MaxAttempts before a failing delivery is dead. Defaults to 6, as
	// authentik's 5 retries.
	MaxAttempts int
	// MinBackoff after the first failure, doubled per attempt with jitter up
	// to MaxBackoff. Default 15s and 1h (authentik's Dramatiq settings).
	MinBackoff, MaxBackoff time.Duration
	// Lease is how long a claimed delivery is reserved for its worker; a
	// worker that dies mid-delivery delays it by at most this. A delivery
	// must go out within the first half of its lease (a longer transport
	// timeout is cut to that), so that no other worker sends it at the
	// same time. Default 5m.
	Lease time.Duration
	// Concurrency is how many deliveries run at once. Defaults to 4.
	Concurrency int
	// PollInterval between looks for due deliveries. Defaults to 1s.
	PollInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c DispatcherConfig) withDefaults() DispatcherConfig {
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 6
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 15 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = time.Hour
	}
	if c.Lease <= 0 {
		c.Lease = 5 * time.Minute
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Dispatcher carries out pending deliveries after their event committed.
// Deliveries move pending → sending → sent, or failed (with attempts,
// last_error and next_attempt_at) → … → dead after MaxAttempts. Several
// workers may run dispatchers on the same database: a delivery is claimed
// with FOR UPDATE SKIP LOCKED and leased (status sending until the lease
// ends), so only one worker carries it out at a time.
type Dispatcher struct {
	db   *sqlx.DB
	cfg  DispatcherConfig
	log  *slog.Logger
	wake wakeup
}

// NewDispatcher returns a Dispatcher on db.
func NewDispatcher(db *sqlx.DB, cfg DispatcherConfig) *Dispatcher {
	cfg = cfg.withDefaults()
	return &Dispatcher{db: db, cfg: cfg, log: cfg.Logger, wake: newWakeup()}
}

// Wake makes the dispatcher look for due deliveries now. It never blocks.
func (d *Dispatcher) Wake() { d.wake.wake() }

// Run dispatches until ctx is done: Concurrency workers each claim one due
// delivery at a time, so a slow receiver holds up only its own delivery.
// Deliveries in progress when ctx ends are released for the next run.
func (d *Dispatcher) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range d.cfg.Concurrency {
		wg.Go(func() { d.work(ctx) })
	}
	wg.Wait()
	return nil
}

func (d *Dispatcher) work(ctx context.Context) {
	poll(ctx, d.cfg.PollInterval, d.wake, d.log, "delivery dispatch", func() (bool, error) {
		return d.DispatchOne(ctx)
	})
}

// claimDelivery leases one due delivery: it is marked sending until the
// lease ends, so no other worker takes it, and a worker that dies while
// sending only delays it.
const claimDelivery = `UPDATE deliveries SET status = 'sending', attempts = attempts + 1,
    next_attempt_at = now() + $1 * interval '1 millisecond', updated = now()
WHERE id = (
    SELECT d.id FROM deliveries d JOIN notification_transports t ON t.id = d.transport_id
    WHERE (d.status IN ('pending', 'failed') OR d.status = 'sending') AND d.next_attempt_at <= now()
      AND t.mode = ANY($2)
    ORDER BY d.next_attempt_at
    LIMIT 1
    FOR UPDATE OF d SKIP LOCKED)
RETURNING id, attempts`

// selectDelivery loads a delivery. Transports other than local send the
// notification as its rule made it, before a local transport's body mapping
// changed it (see [LocalTransport]).
const selectDelivery = `SELECT d.id, d.attempts, n.id AS notification_id,
    CASE WHEN t.mode = 'local' OR n.unmapped IS NULL THEN n.severity ELSE n.unmapped->>'severity' END AS severity,
    CASE WHEN t.mode = 'local' OR n.unmapped IS NULL THEN n.body ELSE n.unmapped->>'body' END AS body,
    CASE WHEN t.mode = 'local' OR n.unmapped IS NULL THEN n.hyperlink ELSE n.unmapped->>'hyperlink' END AS hyperlink,
    CASE WHEN t.mode = 'local' OR n.unmapped IS NULL THEN n.hyperlink_label ELSE n.unmapped->>'hyperlink_label' END AS hyperlink_label,
    coalesce(r.name, '') AS rule_name,
    t.id AS "transport.id", t.name AS "transport.name", t.mode AS "transport.mode", t.send_once AS "transport.send_once",
    t.webhook_url AS "transport.webhook_url", t.webhook_mapping_body_id AS "transport.webhook_mapping_body_id",
    t.webhook_mapping_headers_id AS "transport.webhook_mapping_headers_id",
    t.email_subject_prefix AS "transport.email_subject_prefix", t.email_template AS "transport.email_template",
    u.id AS "recipient.id", u.uuid AS "recipient.uuid", u.username AS "recipient.username", u.name AS "recipient.name",
    u.email AS "recipient.email", u.is_active AS "recipient.is_active", u.is_superuser AS "recipient.is_superuser",
    u.attributes AS "recipient.attributes", u.last_login AS "recipient.last_login",
    u.created AS "recipient.created", u.updated AS "recipient.updated",
    CASE WHEN e.id IS NULL THEN 'null'::jsonb ELSE jsonb_build_object(
        'pk', e.id, 'action', e.action, 'app', e.app, 'user', e."user", 'context', e.context,
        'client_ip', host(e.client_ip), 'created', e.created, 'brand', e.brand) END AS event_json
FROM deliveries d
JOIN notifications n ON n.id = d.notification_id
JOIN notification_transports t ON t.id = d.transport_id
JOIN users u ON u.id = n.user_id
LEFT JOIN notification_rules r ON r.id = n.rule_id
LEFT JOIN events e ON e.id = n.event_id
WHERE d.id = $1`

// DispatchOne claims one due delivery, carries it out and records the
// outcome. It reports whether there was one.
func (d *Dispatcher) DispatchOne(ctx context.Context) (bool, error) {
	modes := make([]string, 0, len(d.cfg.Transports))
	for m := range d.cfg.Transports {
		modes = append(modes, m)
	}
	if ctx.Err() != nil {
		return false, nil
	}
	// The claim is not cancelled halfway: a cancelled query may still have
	// claimed a row, which would then wait for its lease to run out.
	claimed := time.Now()
	var claim struct {
		ID       string `db:"id"`
		Attempts int    `db:"attempts"`
	}
	err := d.db.GetContext(context.WithoutCancel(ctx), &claim, claimDelivery, d.cfg.Lease.Milliseconds(), textArray(modes))
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claim delivery: %w", err)
	}
	if ctx.Err() != nil {
		d.release(ctx, claim.ID, claim.Attempts) // stopping: give it back at once
		return false, nil
	}
	// It is carried out in the first half of its lease, so that it is
	// recorded before another worker can claim it again.
	sendCtx, cancel := context.WithDeadline(ctx, claimed.Add(d.cfg.Lease/2))
	defer cancel()
	d.deliver(ctx, sendCtx, claim.ID, claim.Attempts)
	return true, nil
}

func (d *Dispatcher) deliver(ctx, sendCtx context.Context, id string, attempts int) {
	del := Delivery{ID: id, Attempts: attempts}
	if err := d.db.GetContext(ctx, &del, selectDelivery, id); err != nil {
		if ctx.Err() != nil {
			d.release(ctx, id, attempts)
			return
		}
		// Counted as a failed attempt, so that a delivery that can never
		// be loaded ends dead.
		del = Delivery{ID: id, Attempts: attempts}
		if rerr := d.record(context.WithoutCancel(ctx), &del, DeliveryResult{}, fmt.Errorf("load delivery: %w", err)); rerr != nil {
			d.log.WarnContext(ctx, "record delivery", slog.String("delivery", id), slog.Any("error", rerr))
		}
		return
	}
	if string(del.EventJSON) != "null" {
		if ev, err := events.Decode(del.EventJSON); err == nil {
			del.Event = &ev
		}
	}
	var (
		res DeliveryResult
		err error
	)
	if t := d.cfg.Transports[del.Transport.Mode]; t != nil {
		res, err = deliverSafely(sendCtx, t, &del)
	} else {
		// The transport's mode changed since the claim.
		err = &PermanentError{Err: fmt.Errorf("transport %q is now %q, which this dispatcher does not send", del.Transport.Name, del.Transport.Mode)}
	}
	if errors.Is(err, ErrLeaseLost) {
		d.log.WarnContext(ctx, "delivery not recorded: its lease ran out", slog.String("delivery", id), slog.Int("attempt", attempts))
		return
	}
	if err != nil && ctx.Err() != nil {
		// Shutting down mid-delivery: give the attempt back so that the
		// next start (or another worker) tries again at once.
		d.release(ctx, id, attempts)
		return
	}
	// A delivery that went out is recorded even while shutting down.
	if err := d.record(context.WithoutCancel(ctx), &del, res, err); err != nil {
		d.log.WarnContext(ctx, "record delivery", slog.String("delivery", id), slog.Any("error", err))
	}
}

// release gives back a claimed delivery that was not carried out, unless
// its lease ran out and another claim took it since.
func (d *Dispatcher) release(ctx context.Context, id string, attempts int) {
	_, err := d.db.ExecContext(context.WithoutCancel(ctx), `UPDATE deliveries SET
    status = CASE WHEN attempts > 1 THEN 'failed' ELSE 'pending' END, attempts = attempts - 1,
    next_attempt_at = now(), updated = now() WHERE id = $1 AND status = 'sending' AND attempts = $2`, id, attempts)
	if err != nil {
		d.log.WarnContext(ctx, "release delivery", slog.String("delivery", id), slog.Any("error", err))
	}
}

func (d *Dispatcher) record(ctx context.Context, del *Delivery, res DeliveryResult, sendErr error) error {
	log := d.log.With(slog.String("delivery", del.ID), slog.String("transport", del.Transport.Name),
		slog.String("user", del.User.Username), slog.Int("attempt", del.Attempts))
	switch {
	case sendErr == nil && res.Skipped:
		log.InfoContext(ctx, "delivery skipped", slog.String("reason", res.Note))
		_, err := d.db.ExecContext(ctx, `UPDATE deliveries SET status = 'skipped', last_error = $2, updated = now()
WHERE id = $1 AND status = 'sending' AND attempts = $3`, del.ID, storableText(res.Note), del.Attempts)
		return err
	case sendErr == nil:
		log.InfoContext(ctx, "delivery sent")
		return d.recordSent(ctx, del, res.Event)
	}
	var perm *PermanentError
	status := DeliveryFailed
	if del.Attempts >= d.cfg.MaxAttempts || errors.As(sendErr, &perm) {
		status = DeliveryDead
	}
	delay := Backoff(del.Attempts, d.cfg.MinBackoff, d.cfg.MaxBackoff)
	if status == DeliveryDead {
		log.WarnContext(ctx, "delivery failed", slog.String("status", status), slog.Any("error", sendErr))
	} else {
		log.WarnContext(ctx, "delivery failed", slog.String("status", status), slog.Duration("retry_in", delay), slog.Any("error", sendErr))
	}
	// attempts fences the update: a worker whose lease ran out while it
	// was sending must not overwrite the outcome of a newer claim.
	_, err := d.db.ExecContext(ctx, `UPDATE deliveries SET status = $2, last_error = $3,
    next_attempt_at = now() + $4 * interval '1 millisecond', updated = now()
WHERE id = $1 AND status = 'sending' AND attempts = $5`,
		del.ID, status, errorText(sendErr, 2000), delay.Milliseconds(), del.Attempts)
	return err
}

// deliverSafely runs t's delivery of del. A panic in it fails the attempt,
// which is retried and ends dead, instead of stopping the worker.
func deliverSafely(ctx context.Context, t Transporter, del *Delivery) (res DeliveryResult, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("transport panicked: %v\n%s", r, debug.Stack())
		}
	}()
	return t.Deliver(ctx, del)
}

// recordSent marks a delivery sent, fenced by its attempt, and stores the
// event it created in the same transaction.
func (d *Dispatcher) recordSent(ctx context.Context, del *Delivery, ev *OutcomeEvent) error {
	const markSent = `UPDATE deliveries SET status = 'sent', sent_at = now(), last_error = '', updated = now()
WHERE id = $1 AND status = 'sending' AND attempts = $2`
	if ev == nil {
		_, err := d.db.ExecContext(ctx, markSent, del.ID, del.Attempts)
		return err
	}
	tx, err := d.db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin recording delivery: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	res, err := tx.ExecContext(ctx, markSent, del.ID, del.Attempts)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return nil // a newer claim carries it out, and records its own event
	}
	created := eventAfter(causeOf(del.Event), ev.Action, ev.App, ev.User, ev.Context, del.ID)
	if err := insertCreatedEvent(ctx, tx, &created); err != nil {
		return err
	}
	return tx.Commit()
}

// errorText is err's message as last_error stores it: text PostgreSQL
// takes (see [storableText]), cut to at most maxBytes on a character
// boundary.
func errorText(err error, maxBytes int) string {
	s := storableText(err.Error())
	if len(s) <= maxBytes {
		return s
	}
	cut := maxBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// CreateEventAfter stores an event that Herald creates outside of a policy
// (email_sent, property_mapping_exception), caused by cause (which may be
// nil), and queues it for publishing.
func CreateEventAfter(ctx context.Context, db *sqlx.DB, cause *events.Event, action, app string, user, evContext map[string]any, key string) error {
	ev := eventAfter(causeOf(cause), action, app, user, evContext, key)
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin %s event: %w", action, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if err := insertCreatedEvent(ctx, tx, &ev); err != nil {
		return err
	}
	return tx.Commit()
}

// eventAfter is the event Herald creates outside of a policy (see
// [CreateEventAfter]); its pk derives from cause, action and key.
func eventAfter(cause *EventCause, action, app string, user, evContext map[string]any, key string) events.Event {
	c := events.Cleanse(events.Sanitize(evContext).(map[string]any))
	causePK := ""
	depth := 1
	var brand map[string]any
	if cause != nil {
		causePK, depth, brand = cause.Event, cause.Depth+1, cause.Brand
	}
	c["caused_by"] = map[string]any{"event": causePK, "depth": int64(depth)}
	if user == nil {
		user = map[string]any{}
	}
	return events.Event{
		PK:      derivedUUID(causePK, action, key),
		Action:  action,
		App:     app,
		User:    events.Sanitize(user).(map[string]any),
		Context: c,
		Created: time.Now().UTC(),
		Brand:   brand,
	}
}

// RetryDeliveries puts the deliveries with the given ids (or, with dead,
// every dead delivery) back to pending with a fresh attempt count. It
// returns how many it changed.
func RetryDeliveries(ctx context.Context, db *sqlx.DB, ids []string, dead bool) (int64, error) {
	var res sql.Result
	var err error
	if dead {
		res, err = db.ExecContext(ctx, `UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(), updated = now() WHERE status = 'dead'`)
	} else {
		// Not sent ones, and not one being sent right now.
		res, err = db.ExecContext(ctx, `UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(), updated = now()
WHERE id::text = ANY($1) AND status IN ('failed', 'dead', 'skipped', 'pending')`, textArray(ids))
	}
	if err != nil {
		return 0, fmt.Errorf("retry deliveries: %w", err)
	}
	return res.RowsAffected()
}

// DeliveryRow is a line of `worker deliveries`.
type DeliveryRow struct {
	ID            string     `db:"id"`
	Status        string     `db:"status"`
	Attempts      int        `db:"attempts"`
	LastError     string     `db:"last_error"`
	NextAttemptAt time.Time  `db:"next_attempt_at"`
	SentAt        *time.Time `db:"sent_at"`
	Transport     string     `db:"transport"`
	Mode          string     `db:"mode"`
	Username      string     `db:"username"`
	Rule          string     `db:"rule"`
	Created       time.Time  `db:"created"`
}

// ListDeliveries returns deliveries, dead and failed first, then pending,
// skipped and sent, newest first within each; status filters when not empty.
func ListDeliveries(ctx context.Context, db *sqlx.DB, status string, limit int) ([]DeliveryRow, error) {
	var rows []DeliveryRow
	err := db.SelectContext(ctx, &rows, `SELECT d.id, d.status, d.attempts, d.last_error, d.next_attempt_at, d.sent_at,
    t.name AS transport, t.mode, u.username, coalesce(r.name, '') AS rule, d.created
FROM deliveries d
JOIN notification_transports t ON t.id = d.transport_id
JOIN notifications n ON n.id = d.notification_id
JOIN users u ON u.id = n.user_id
LEFT JOIN notification_rules r ON r.id = n.rule_id
WHERE $1 = '' OR d.status = $1
ORDER BY array_position(ARRAY['dead','failed','sending','pending','skipped','sent'], d.status), d.updated DESC
LIMIT $2`, status, limit)
	if err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	return rows, nil
}

// emptyIfNil is v, or "" for nil: a template prints nil as "<no value>".
func emptyIfNil(v any) any {
	if v == nil {
		return ""
	}
	return v
}

// EmailTemplateData is the data of a notification email, as authentik's
// email transport builds it: key_value (recipient and event user, and every
// top-level string of the event context), body, title, link and, for
// superusers, source.
func EmailTemplateData(d *Delivery) map[string]any {
	kv := map[string]any{"user_email": d.User.Email, "user_username": d.User.Username}
	title := cut(d.Body, 75)
	if d.Event != nil {
		title = d.Event.Action
		if len(d.Event.User) > 0 {
			kv["event_user_email"] = emptyIfNil(d.Event.User["email"])
			kv["event_user_username"] = emptyIfNil(d.Event.User["username"])
		}
		for k, v := range d.Event.Context {
			if s, ok := v.(string); ok {
				kv[k] = s
			}
		}
	}
	data := map[string]any{"key_value": kv, "body": d.Body, "title": title}
	if d.Hyperlink != nil {
		data["link"] = map[string]any{"target": *d.Hyperlink, "label": derefOr(d.HyperlinkLabel)}
	}
	if d.User.IsSuperuser {
		data["source"] = map[string]any{"from": d.Transport.Name}
	}
	return data
}
