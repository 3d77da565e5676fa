package rules

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/heraldhq/herald/events"
)

// Outbox kinds.
const (
	OutboxEvent = "event" // an event Herald created, to publish to the stream
	OutboxEmail = "email" // an email queued by ak_send_email
)

// OutboxSender carries out one outbox item. An error means the item is
// retried later with backoff. An event it returns (email_sent) is stored
// in the transaction that marks the item sent.
type OutboxSender interface {
	SendOutbox(ctx context.Context, key string, payload []byte) (*OutcomeEvent, error)
}

// OutboxSenderFunc adapts a function to [OutboxSender].
type OutboxSenderFunc func(ctx context.Context, key string, payload []byte) (*OutcomeEvent, error)

// SendOutbox calls f.
func (f OutboxSenderFunc) SendOutbox(ctx context.Context, key string, payload []byte) (*OutcomeEvent, error) {
	return f(ctx, key, payload)
}

// EventPublisher publishes an encoded event. [*events.Publisher] implements it.
type EventPublisher interface {
	PublishRaw(ctx context.Context, pk, action string, data []byte) error
}

// PublishEvents returns the sender for [OutboxEvent] items.
func PublishEvents(p EventPublisher) OutboxSender {
	return OutboxSenderFunc(func(ctx context.Context, _ string, payload []byte) (*OutcomeEvent, error) {
		var head struct {
			PK     string `json:"pk"`
			Action string `json:"action"`
		}
		if err := json.Unmarshal(payload, &head); err != nil {
			return nil, fmt.Errorf("decode outbox event: %w", err)
		}
		err := p.PublishRaw(ctx, head.PK, head.Action, payload)
		if errors.Is(err, events.ErrDuplicate) {
			return nil, nil // published before, by an attempt whose outcome was not recorded
		}
		return nil, err
	})
}

// OutboxConfig configures an [Outbox]. The zero value of each field means
// its default.
type OutboxConfig struct {
	// Senders carry out items by kind. Items of a kind without a sender
	// stay pending.
	Senders map[string]OutboxSender
	// PollInterval is how often due items are looked for when nothing wakes
	// the dispatcher. Defaults to 1s.
	PollInterval time.Duration
	// BatchSize is the most items claimed at once. Defaults to 100.
	BatchSize int
	// MaxAttempts before an item is marked dead. Defaults to 20 (with the
	// default backoff, about an hour and 50 minutes of retrying).
	MaxAttempts int
	// MinBackoff is the delay after the first failure; it doubles per
	// attempt, with jitter, up to MaxBackoff. Defaults to 1s and 10m.
	MinBackoff, MaxBackoff time.Duration
	// Lease is how long claimed items are kept from other dispatchers.
	// Items are sent only in its first half, each within the rest of that
	// half and started while a tenth of the lease is left of it, so that
	// none is sent twice at once. Defaults to 5m.
	Lease time.Duration
	// Permanent reports errors that will not go away on retry; the item is
	// marked dead at once. Optional.
	Permanent func(error) bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c OutboxConfig) withDefaults() OutboxConfig {
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 100
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 20
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 10 * time.Minute
	}
	if c.Lease <= 0 {
		c.Lease = 5 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Outbox dispatches the effects that event transactions queued: it claims
// due items with FOR UPDATE SKIP LOCKED and leases them (so several workers
// can run it), carries each out, and records each outcome as soon as it is
// known. An item is carried out at least once (twice only when a worker
// stops between carrying it out and recording it). An event published
// twice is dropped by the stream within its duplicate window (Nats-Msg-Id
// is the pk), and found stored, so not processed again, after it.
//
// Each kind is dispatched on its own, so that a slow mail server does not
// hold up the events Herald creates.
type Outbox struct {
	db    *sqlx.DB
	cfg   OutboxConfig
	log   *slog.Logger
	kinds []string
	wakes map[string]wakeup // by kind
}

// NewOutbox returns an Outbox on db.
func NewOutbox(db *sqlx.DB, cfg OutboxConfig) *Outbox {
	cfg = cfg.withDefaults()
	o := &Outbox{db: db, cfg: cfg, log: cfg.Logger, wakes: make(map[string]wakeup, len(cfg.Senders))}
	for kind := range cfg.Senders {
		o.kinds = append(o.kinds, kind)
		o.wakes[kind] = newWakeup()
	}
	slices.Sort(o.kinds)
	return o
}

// Wake makes the dispatcher look for due items now. It never blocks.
func (o *Outbox) Wake() {
	for _, w := range o.wakes {
		w.wake()
	}
}

// Run dispatches until ctx is done, one loop per kind.
func (o *Outbox) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, kind := range o.kinds {
		wg.Go(func() {
			poll(ctx, o.cfg.PollInterval, o.wakes[kind], o.log, "outbox dispatch of "+kind, func() (bool, error) {
				n, err := o.dispatch(ctx, kind)
				return n == o.cfg.BatchSize, err
			})
		})
	}
	wg.Wait()
	return nil
}

type outboxItem struct {
	ID       int64  `db:"id"`
	Key      string `db:"key"`
	Kind     string `db:"kind"`
	Payload  []byte `db:"payload"`
	Attempts int    `db:"attempts"`
}

// claimOutbox leases due items: they are not due again until the lease
// ends, and attempts counts the claim, so that a dispatcher records an
// outcome only while the item is still its own.
const claimOutbox = `UPDATE outbox o SET attempts = o.attempts + 1, next_attempt_at = now() + $3 * interval '1 millisecond'
FROM (SELECT id FROM outbox
      WHERE status IN ('pending', 'failed') AND next_attempt_at <= now() AND kind = $1
      ORDER BY next_attempt_at, id
      LIMIT $2
      FOR UPDATE SKIP LOCKED) due
WHERE o.id = due.id
RETURNING o.id, o.key, o.kind, o.payload, o.attempts`

// DispatchOnce carries out the items of every kind that are due now, up to
// BatchSize of each, and returns how many it claimed. Items it did not get
// to (it stopped, or half the lease went by) are due again at once.
func (o *Outbox) DispatchOnce(ctx context.Context) (int, error) {
	total := 0
	for _, kind := range o.kinds {
		n, err := o.dispatch(ctx, kind)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// dispatch is [Outbox.DispatchOnce] for the items of one kind.
func (o *Outbox) dispatch(ctx context.Context, kind string) (int, error) {
	claimed := time.Now()
	var items []outboxItem
	if err := o.db.SelectContext(ctx, &items, claimOutbox, kind, o.cfg.BatchSize, o.cfg.Lease.Milliseconds()); err != nil {
		return 0, fmt.Errorf("claim outbox items: %w", err)
	}
	slices.SortFunc(items, func(a, b outboxItem) int { return cmp.Compare(a.ID, b.ID) })
	// Outcomes are recorded even when ctx ends: the item was carried out.
	record := context.WithoutCancel(ctx)
	sendBy := claimed.Add(o.cfg.Lease / 2)
	// An item is started only while it has a tenth of the lease (30s by
	// default) before sendBy, so that a late one is not cut short and
	// counted as failed.
	startBy := sendBy.Add(-o.cfg.Lease / 10)
	for i, it := range items {
		if ctx.Err() != nil || !time.Now().Before(startBy) {
			return len(items), o.release(record, items[i:])
		}
		sendCtx, cancel := context.WithDeadline(ctx, sendBy)
		outcome, err := o.cfg.Senders[it.Kind].SendOutbox(sendCtx, it.Key, it.Payload)
		cancel()
		if err != nil && ctx.Err() != nil {
			// Stopping: not an attempt of the item's.
			return len(items), o.release(record, items[i:])
		}
		if err == nil && outcome != nil {
			if err := o.recordSent(record, it, outcome); err != nil {
				return len(items), err
			}
			continue
		}
		if err := o.record(record, it, err); err != nil {
			return len(items), err
		}
	}
	return len(items), nil
}

// record writes the outcome of a claimed item, unless its lease ended and
// another dispatcher claimed it since.
func (o *Outbox) record(ctx context.Context, it outboxItem, sendErr error) error {
	if sendErr == nil {
		_, err := o.db.ExecContext(ctx, `UPDATE outbox SET status = 'sent', sent_at = now(), last_error = ''
WHERE id = $1 AND attempts = $2`, it.ID, it.Attempts)
		if err != nil {
			return fmt.Errorf("mark outbox item %s sent: %w", it.Key, err)
		}
		return nil
	}
	status := DeliveryFailed
	if it.Attempts >= o.cfg.MaxAttempts || (o.cfg.Permanent != nil && o.cfg.Permanent(sendErr)) {
		status = DeliveryDead
	}
	delay := Backoff(it.Attempts, o.cfg.MinBackoff, o.cfg.MaxBackoff)
	o.log.WarnContext(ctx, "outbox item failed", slog.String("key", it.Key), slog.Int("attempts", it.Attempts),
		slog.String("status", status), slog.Duration("retry_in", delay), slog.Any("error", sendErr))
	_, err := o.db.ExecContext(ctx, `UPDATE outbox SET status = $3, last_error = $4,
        next_attempt_at = now() + $5 * interval '1 millisecond' WHERE id = $1 AND attempts = $2`,
		it.ID, it.Attempts, status, errorText(sendErr, 2000), delay.Milliseconds())
	if err != nil {
		return fmt.Errorf("record outbox failure of %s: %w", it.Key, err)
	}
	return nil
}

// recordSent marks a claimed item sent, fenced by its attempt, and stores
// the event it created in the same transaction.
func (o *Outbox) recordSent(ctx context.Context, it outboxItem, outcome *OutcomeEvent) error {
	tx, err := o.db.BeginTxx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin recording outbox item %s: %w", it.Key, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	res, err := tx.ExecContext(ctx, `UPDATE outbox SET status = 'sent', sent_at = now(), last_error = ''
WHERE id = $1 AND attempts = $2`, it.ID, it.Attempts)
	if err != nil {
		return fmt.Errorf("mark outbox item %s sent: %w", it.Key, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return nil // a newer claim carries it out, and records its own event
	}
	created := eventAfter(outcome.Cause, outcome.Action, outcome.App, outcome.User, outcome.Context, it.Key)
	if err := insertCreatedEvent(ctx, tx, &created); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("record outbox item %s sent: %w", it.Key, err)
	}
	if w, ok := o.wakes[OutboxEvent]; ok {
		w.wake() // the created event waits to be published
	}
	return nil
}

// release makes claimed items that were not carried out due again at once,
// without counting the claim as an attempt.
func (o *Outbox) release(ctx context.Context, items []outboxItem) error {
	ids, attempts := make([]int64, len(items)), make([]int64, len(items))
	for i, it := range items {
		ids[i], attempts[i] = it.ID, int64(it.Attempts)
	}
	_, err := o.db.ExecContext(ctx, `UPDATE outbox o SET attempts = o.attempts - 1, next_attempt_at = now()
FROM unnest($1::bigint[], $2::int[]) AS r(id, attempts)
WHERE o.id = r.id AND o.attempts = r.attempts AND o.status IN ('pending', 'failed')`,
		pq.Int64Array(ids), pq.Int64Array(attempts))
	if err != nil {
		return fmt.Errorf("release %d outbox items: %w", len(items), err)
	}
	return nil
}

// Backoff is the delay before retry number attempt (1-based): min doubled
// per attempt with up to 20% random jitter added, capped at max.
func Backoff(attempt int, minDelay, maxDelay time.Duration) time.Duration {
	d := minDelay << min(attempt-1, 30)
	if d <= 0 || d > maxDelay {
		d = maxDelay
	}
	return min(d+time.Duration(rand.Int64N(int64(d)/5+1)), maxDelay)
}
