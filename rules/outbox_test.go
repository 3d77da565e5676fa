package rules_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// outboxItems inserts email items with the given keys, due now.
func outboxItems(t *testing.T, db *testinfra.DB, keys ...string) {
	t.Helper()
	for _, k := range keys {
		db.MustExec(t, `INSERT INTO outbox (key, kind, payload) VALUES ($1, 'email', '{}')`, k)
	}
}

type outboxRow struct {
	Status   string `db:"status"`
	Attempts int    `db:"attempts"`
	Due      bool   `db:"due"`
}

func outboxState(t *testing.T, db *testinfra.DB, key string) outboxRow {
	t.Helper()
	var r outboxRow
	require.NoError(t, db.GetContext(t.Context(), &r, `SELECT status, attempts, next_attempt_at <= now() AS due FROM outbox WHERE key = $1`, key))
	return r
}

// sender adapts a sender that creates no event.
func sender(send func(ctx context.Context, key string, payload []byte) error) rules.OutboxSender {
	return rules.OutboxSenderFunc(func(ctx context.Context, key string, payload []byte) (*rules.OutcomeEvent, error) {
		return nil, send(ctx, key, payload)
	})
}

func newOutbox(db *testinfra.DB, send func(ctx context.Context, key string, payload []byte) error) *rules.Outbox {
	return rules.NewOutbox(db.DB, rules.OutboxConfig{
		Senders: map[string]rules.OutboxSender{rules.OutboxEmail: sender(send)},
		Logger:  slog.New(slog.DiscardHandler),
	})
}

// Each item's outcome is recorded as soon as it is carried out: a
// dispatcher stopped in the middle of its items neither loses what it sent
// (to be sent again) nor counts an attempt for what it did not.
func TestOutboxRecordsEachItemAsItIsSent(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	outboxItems(t, db, "a", "b", "c")

	ctx, stop := context.WithCancel(t.Context())
	var sent []string
	stopped := false
	ob := newOutbox(db, func(ctx context.Context, key string, _ []byte) error {
		if key == "b" && !stopped {
			stopped = true
			stop() // the worker stops while b is being sent
			return ctx.Err()
		}
		sent = append(sent, key)
		return nil
	})
	n, err := ob.DispatchOnce(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.Equal(t, []string{"a"}, sent)
	a := outboxState(t, db, "a")
	require.Equal(t, "sent", a.Status)
	require.Equal(t, 1, a.Attempts)
	for _, k := range []string{"b", "c"} {
		require.Equal(t, outboxRow{Status: "pending", Attempts: 0, Due: true}, outboxState(t, db, k), k)
	}

	n, err = ob.DispatchOnce(t.Context())
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.Equal(t, []string{"a", "b", "c"}, sent, "a is not sent again")
}

// A claimed item is leased: another dispatcher does not take it while it
// is being sent.
func TestOutboxLeasesClaimedItems(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	outboxItems(t, db, "slow")

	sending, finish := make(chan struct{}), make(chan struct{})
	first := newOutbox(db, func(context.Context, string, []byte) error {
		close(sending)
		<-finish
		return nil
	})
	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := first.DispatchOnce(t.Context())
		require.NoError(t, err)
	})
	<-sending
	second := newOutbox(db, func(context.Context, string, []byte) error {
		t.Error("the leased item was sent by a second dispatcher")
		return nil
	})
	n, err := second.DispatchOnce(t.Context())
	require.NoError(t, err)
	require.Zero(t, n)
	close(finish)
	wg.Wait()
	require.Equal(t, "sent", outboxState(t, db, "slow").Status)
}

// A failed item is retried after a backoff and is dead after its last
// attempt, or at once when the error is permanent.
func TestOutboxRecordsFailures(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	outboxItems(t, db, "flaky", "rejected")
	errPermanent := errors.New("550 no such user")
	ob := rules.NewOutbox(db.DB, rules.OutboxConfig{
		Senders: map[string]rules.OutboxSender{rules.OutboxEmail: sender(func(_ context.Context, key string, _ []byte) error {
			if key == "rejected" {
				return errPermanent
			}
			return errors.New("connection refused")
		})},
		Permanent:   func(err error) bool { return errors.Is(err, errPermanent) },
		MaxAttempts: 2,
		MinBackoff:  time.Hour,
		Logger:      slog.New(slog.DiscardHandler),
	})
	_, err := ob.DispatchOnce(t.Context())
	require.NoError(t, err)
	require.Equal(t, outboxRow{Status: "failed", Attempts: 1, Due: false}, outboxState(t, db, "flaky"))
	require.Equal(t, outboxRow{Status: "dead", Attempts: 1, Due: false}, outboxState(t, db, "rejected"))

	db.MustExec(t, `UPDATE outbox SET next_attempt_at = now() WHERE key = 'flaky'`)
	_, err = ob.DispatchOnce(t.Context())
	require.NoError(t, err)
	require.Equal(t, "dead", outboxState(t, db, "flaky").Status, "after its last attempt")
}

// Each kind is dispatched on its own: an email held up by its mail server
// does not hold up the events Herald created.
func TestOutboxKindsDoNotWaitForEachOther(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	outboxItems(t, db, "mail")
	db.MustExec(t, `INSERT INTO outbox (key, kind, payload) VALUES ('event', 'event', '{}')`)

	mailing, release := make(chan struct{}), make(chan struct{})
	published := make(chan struct{})
	ob := rules.NewOutbox(db.DB, rules.OutboxConfig{
		Senders: map[string]rules.OutboxSender{
			rules.OutboxEmail: sender(func(context.Context, string, []byte) error {
				close(mailing)
				<-release
				return nil
			}),
			rules.OutboxEvent: sender(func(context.Context, string, []byte) error {
				close(published)
				return nil
			}),
		},
		PollInterval: 10 * time.Millisecond,
		Logger:       slog.New(slog.DiscardHandler),
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ob.Run(ctx)
	}()
	<-mailing
	select {
	case <-published:
	case <-time.After(10 * time.Second):
		t.Fatal("the event waited for the email")
	}
	require.Eventually(t, func() bool { return outboxState(t, db, "event").Status == "sent" }, 10*time.Second, 10*time.Millisecond)
	close(release)
	require.Eventually(t, func() bool { return outboxState(t, db, "mail").Status == "sent" }, 10*time.Second, 10*time.Millisecond)
	cancel()
	<-done
}

// An item is not started late in the lease's first half, where it would be
// cut short and counted as a failed attempt: it is left for the next claim.
func TestOutboxDoesNotStartAnItemLateInTheLease(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	outboxItems(t, db, "first", "second")
	const lease = time.Second // items start within 400ms of the claim
	ob := rules.NewOutbox(db.DB, rules.OutboxConfig{
		Senders: map[string]rules.OutboxSender{rules.OutboxEmail: sender(func(ctx context.Context, key string, _ []byte) error {
			if key == "first" {
				time.Sleep(450 * time.Millisecond)
				return nil
			}
			select {
			case <-time.After(100 * time.Millisecond):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})},
		Lease:  lease,
		Logger: slog.New(slog.DiscardHandler),
	})
	_, err := ob.DispatchOnce(t.Context())
	require.NoError(t, err)
	require.Equal(t, "sent", outboxState(t, db, "first").Status)
	require.Equal(t, outboxRow{Status: "pending", Attempts: 0, Due: true}, outboxState(t, db, "second"), "left for the next claim")
}

// An error text PostgreSQL cannot store as it is (an SMTP server answering
// in Latin-1) is recorded all the same: the item fails, and the items
// claimed with it go on.
func TestOutboxRecordsAnyErrorText(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	outboxItems(t, db, "a", "b")
	var sent []string
	ob := rules.NewOutbox(db.DB, rules.OutboxConfig{MaxAttempts: 1, Logger: slog.New(slog.DiscardHandler),
		Senders: map[string]rules.OutboxSender{rules.OutboxEmail: sender(func(_ context.Context, key string, _ []byte) error {
			if key == "a" {
				return errors.New("550 Empf\xe4nger\x00 unbekannt")
			}
			sent = append(sent, key)
			return nil
		})}})
	_, err := ob.DispatchOnce(t.Context())
	require.NoError(t, err)
	require.Equal(t, "dead", outboxState(t, db, "a").Status)
	var lastErr string
	require.NoError(t, db.GetContext(t.Context(), &lastErr, `SELECT last_error FROM outbox WHERE key = 'a'`))
	require.Equal(t, "550 Empf\uFFFDnger unbekannt", lastErr)
	require.Equal(t, []string{"b"}, sent)
}
