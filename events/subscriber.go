package events

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Handler processes a batch of decoded events, all in one transaction.
// Returning nil means every event of the batch is durably processed and its
// message may be acknowledged. An error means none of it was kept; the
// [Subscriber] then retries the events one at a time, so one bad event does
// not hold back the others.
type Handler interface {
	HandleEvents(ctx context.Context, evs []Event) error
}

// HandlerFunc adapts a function to [Handler].
type HandlerFunc func(ctx context.Context, evs []Event) error

// HandleEvents calls f.
func (f HandlerFunc) HandleEvents(ctx context.Context, evs []Event) error { return f(ctx, evs) }

// DeadLetter is a message that can never be processed, kept for an operator.
type DeadLetter struct {
	Subject   string
	Payload   []byte
	Headers   map[string][]string
	Reason    string
	StreamSeq uint64
}

// DeadLetterStore keeps dead letters. A message is terminated only after its
// dead letter is stored.
type DeadLetterStore interface {
	StoreDeadLetter(ctx context.Context, dl DeadLetter) error
}

// SubscriberConfig configures a [Subscriber]. The zero value of each field
// means its default.
type SubscriberConfig struct {
	// Stream to consume. Defaults to [DefaultStream].
	Stream string
	// Consumer is the durable consumer's name. Defaults to [DefaultConsumer].
	Consumer string
	// SubjectPrefix filters the consumer to SubjectPrefix + ".>". Defaults to
	// [DefaultSubjectPrefix].
	SubjectPrefix string
	// BatchSize is the most events handed to the Handler at once. Defaults to 100.
	BatchSize int
	// Concurrency is the number of batches handled at the same time.
	// Defaults to GOMAXPROCS.
	Concurrency int
	// BatchWait is how long a batch that is not full may wait for more,
	// from when its worker takes it, before it waits for one of half the
	// workers' slots and is handled: a steady stream then goes out in
	// fewer, larger batches, which cost less per event. Zero leaves only
	// the wait for a slot. A full batch never waits.
	BatchWait time.Duration
	// AckWait is how long JetStream waits for an ack before redelivering.
	// Messages held longer (waiting in a worker's queue, or in a batch) are
	// kept alive with progress acks; those still in the client's buffer,
	// past the held bytes' bound, are not (see [heldMessages]).
	// Defaults to 60s.
	AckWait time.Duration
	// MaxPayload is the largest accepted message in bytes; larger ones are
	// dead-lettered. Defaults to 1 MiB.
	MaxPayload int
	// MaxAttempts is how many times processing a message may fail before
	// it is dead-lettered with the last error. Failures are counted by this
	// Subscriber: a message returned while stopping, or redelivered after
	// the ack wait, has not failed. Defaults to 10.
	MaxAttempts int
	// RetryDelay is the first redelivery delay after a failure; it doubles
	// with each failure up to 5 minutes. Defaults to 1s.
	RetryDelay time.Duration
	// PartitionKey routes events to workers: events with the same key are
	// handled by the same worker, in order. Defaults to [DefaultPartitionKey].
	PartitionKey func(*Event) string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c SubscriberConfig) withDefaults() SubscriberConfig {
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.Consumer == "" {
		c.Consumer = DefaultConsumer
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 100
	}
	if c.Concurrency <= 0 {
		c.Concurrency = runtime.GOMAXPROCS(0)
	}
	if c.AckWait <= 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxPayload <= 0 {
		c.MaxPayload = 1 << 20
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.RetryDelay <= 0 {
		c.RetryDelay = time.Second
	}
	if c.PartitionKey == nil {
		c.PartitionKey = DefaultPartitionKey
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// shutdownRedelivery delays the redelivery of messages returned while
// stopping: an immediate redelivery could go to this subscriber's own
// pull request, still open on the server, and be stuck until AckWait.
const shutdownRedelivery = time.Second

// Subscriber consumes the events stream through a durable pull consumer
// with explicit acks. Each message is settled in exactly one place:
// acknowledged after its batch commits, terminated after it is stored as a
// dead letter, or nak'ed with a delay for redelivery.
type Subscriber struct {
	cfg       SubscriberConfig
	js        jetstream.JetStream
	handler   Handler
	dead      DeadLetterStore
	log       *slog.Logger
	held      *heldMessages
	failures  failureCounts
	running   atomic.Bool
	consuming atomic.Bool
}

// Consuming reports whether Run is consuming: its consumer exists and it
// pulls messages, and it is not stopping.
func (s *Subscriber) Consuming() bool { return s.consuming.Load() }

// NewSubscriber returns a Subscriber; call [Subscriber.Run] to start it.
func NewSubscriber(js jetstream.JetStream, h Handler, dead DeadLetterStore, cfg SubscriberConfig) *Subscriber {
	cfg = cfg.withDefaults()
	return &Subscriber{cfg: cfg, js: js, handler: h, dead: dead, log: cfg.Logger, held: newHeldMessages()}
}

// EnsureConsumer creates or updates the durable consumer.
func (s *Subscriber) EnsureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	cons, err := s.js.CreateOrUpdateConsumer(ctx, s.cfg.Stream, jetstream.ConsumerConfig{
		Durable:    s.cfg.Consumer,
		AckPolicy:  jetstream.AckExplicitPolicy,
		AckWait:    s.cfg.AckWait,
		MaxDeliver: -1, // the Subscriber dead-letters after MaxAttempts itself
		// A batch in progress and two more waiting per worker: what the
		// workers hold, decoded, is bounded by this count.
		MaxAckPending: max(1000, 3*s.cfg.BatchSize*s.cfg.Concurrency),
		FilterSubject: s.cfg.SubjectPrefix + ".>",
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer %s on %s: %w", s.cfg.Consumer, s.cfg.Stream, err)
	}
	return cons, nil
}

// Run consumes until ctx is done, then stops pulling, finishes the batches
// in progress (their handlers keep running with a context that is not
// cancelled by ctx, so a commit is not cut short), returns buffered messages
// to the stream, and returns nil. stopCtx bounds that drain: when it ends,
// the in-flight handlers are cancelled and their messages are redelivered
// later by JetStream.
func (s *Subscriber) Run(ctx, stopCtx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("subscriber: Run is already running")
	}
	defer s.running.Store(false)
	cons, err := s.EnsureConsumer(ctx)
	if err != nil {
		return err
	}
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	go func() {
		select {
		case <-stopCtx.Done():
			cancelWork()
		case <-workCtx.Done():
		}
	}()

	// Each worker has a queue of its own; messages are decoded as they
	// arrive and routed by partition key, so that events about the same
	// object go to the same worker, one batch after another, instead of
	// contending for its row locks in two open transactions.
	// Adding to a queue never waits: what the subscriber holds is bounded
	// by MaxAckPending and in bytes instead (see [heldMessages]), so that
	// a slow worker's queue keeps no messages from the others until those
	// bounds are reached, and every message handed over is kept alive.
	stopping := make(chan struct{})
	queues := make([]*workQueue, s.cfg.Concurrency)
	for i := range queues {
		queues[i] = newWorkQueue()
	}
	keepAliveEvery := s.cfg.AckWait / 4
	s.held.open(s.heldBytes(), keepAliveEvery)
	keptAlive := make(chan struct{})
	defer close(keptAlive)
	go s.held.keepAlive(keepAliveEvery, keptAlive)
	// lost is signalled when the consumer may be gone (deleted, or its
	// stream re-created): consuming then stops for good, or stalls.
	lost := make(chan struct{}, 1)
	consume := func(cons jetstream.Consumer) (jetstream.ConsumeContext, error) {
		cc, err := cons.Consume(func(m jetstream.Msg) {
			if !s.held.add(m) { // stopping
				_ = m.NakWithDelay(shutdownRedelivery)
				return
			}
			it := item{msg: m}
			it.ev, it.err = s.decode(m)
			q := queues[0]
			if it.err == nil {
				q = queues[partition(s.cfg.PartitionKey(&it.ev), len(queues))]
			}
			q.push(it)
		},
			jetstream.PullMaxMessagesWithBytesLimit(s.pullMessages(), s.pullBytes()),
			jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
				s.log.WarnContext(ctx, "jetstream consume", slog.Any("error", err))
				if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
					errors.Is(err, jetstream.ErrNoHeartbeat) {
					select {
					case lost <- struct{}{}:
					default:
					}
				}
			}))
		if err != nil {
			return nil, fmt.Errorf("consume %s: %w", s.cfg.Consumer, err)
		}
		return cc, nil
	}
	cc, err := consume(cons)
	if err != nil {
		return err
	}
	s.consuming.Store(true)

	// A batch that is not full (the stream is keeping up) takes one of
	// half the slots: while it waits for one its queue fills, so a steady
	// stream goes out in fewer, larger batches, which cost less per event.
	// Full batches (a backlog) run on every worker at once.
	partial := make(chan struct{}, max(1, s.cfg.Concurrency/2))
	var wg sync.WaitGroup
	for _, q := range queues {
		wg.Go(func() {
			for {
				select {
				case <-stopping:
					return
				case <-q.ready:
					batch := q.take(nil, s.cfg.BatchSize)
					if len(batch) == 0 {
						continue
					}
					if len(batch) == s.cfg.BatchSize {
						s.process(workCtx, batch)
						continue
					}
					batch, slot, ok := s.awaitSlot(batch, q, partial, stopping)
					if !ok {
						for _, it := range batch {
							s.returnToStream(it)
						}
						return
					}
					s.process(workCtx, q.take(batch, s.cfg.BatchSize))
					if slot {
						<-partial
					}
				}
			}
		})
	}

	cc = s.superviseConsume(ctx, cons, cc, lost, consume)
	s.consuming.Store(false)
	// Drain (not Stop): messages already pulled into the client's buffer
	// reach the callback, which returns them to the stream at once instead
	// of leaving them unacknowledged until AckWait.
	close(stopping)
	s.held.close()
	cc.Drain()
	wg.Wait()
	select {
	case <-cc.Closed():
	case <-stopCtx.Done():
		// A drain held up by the connection: the messages still in the
		// client's buffer are redelivered after the ack wait.
	}
	for _, q := range queues {
		for _, it := range q.take(nil, math.MaxInt) {
			s.returnToStream(it)
		}
	}
	return nil
}

// pullBytes bounds the bytes of one pull request: a backlog of large
// events must not run past the server's and the client's limit on what a
// connection may have pending (64 MB), which would drop the connection as a
// slow consumer. It is at least twice the largest message the server takes
// (a larger bound than one message stalls the consumer).
func (s *Subscriber) pullBytes() int {
	return max(8<<20, 2*int(s.js.Conn().MaxPayload()))
}

// pullMessages is how many messages a pull request asks for: two batches
// per worker, and at least 256. The client asks for more once half of a
// request has arrived, unless its previous request is still being sent;
// with a handful of messages per request, a fast worker can take all of
// them in that moment and leave the client waiting for none (until its
// heartbeat check, tens of seconds later).
func (s *Subscriber) pullMessages() int { return max(256, 2*s.cfg.BatchSize*s.cfg.Concurrency) }

// heldBytes bounds the bytes of the messages the subscriber holds: two
// pull requests' worth. Beyond it, pulled messages wait in the client's
// buffer.
func (s *Subscriber) heldBytes() int { return 2 * s.pullBytes() }

// awaitSlot holds a batch that is not full for the batch wait, then until
// one of the partial slots is free (slot: it took one), adding what
// arrives on q; a batch that fills meanwhile returns at once, without a
// slot. ok is false when the subscriber stops.
func (s *Subscriber) awaitSlot(batch []item, q *workQueue, partial, stopping chan struct{}) (_ []item, slot, ok bool) {
	slots := partial
	var waited <-chan time.Time
	if s.cfg.BatchWait > 0 {
		wait := time.NewTimer(s.cfg.BatchWait)
		defer wait.Stop()
		slots, waited = nil, wait.C // a nil channel takes no slot
	}
	for {
		select {
		case <-waited:
			slots = partial
		case slots <- struct{}{}:
			return batch, true, true
		case <-q.ready:
			batch = q.take(batch, s.cfg.BatchSize)
			if len(batch) == s.cfg.BatchSize {
				return batch, false, true
			}
		case <-stopping:
			return batch, false, false
		}
	}
}

// item is a message and what decoding it gave.
type item struct {
	msg jetstream.Msg
	ev  Event
	err error
}

// DefaultPartitionKey routes an event by the object it is about:
// context.model.pk, else the user's pk, else its own pk.
func DefaultPartitionKey(ev *Event) string {
	if m, ok := ev.Context["model"].(map[string]any); ok {
		if pk, ok := m["pk"]; ok && pk != nil {
			return fmt.Sprint(pk)
		}
	}
	if pk, ok := ev.User["pk"]; ok && pk != nil {
		return fmt.Sprint(pk)
	}
	return ev.PK
}

func partition(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// process dead-letters what could not be decoded, hands the rest of the
// batch to the handler and settles every message.
func (s *Subscriber) process(ctx context.Context, batch []item) {
	defer s.held.remove(batch)

	evs := make([]Event, 0, len(batch))
	msgs := make([]jetstream.Msg, 0, len(batch))
	for _, it := range batch {
		if it.err != nil {
			s.deadLetter(ctx, it.msg, it.err.Error())
			continue
		}
		evs = append(evs, it.ev)
		msgs = append(msgs, it.msg)
	}
	if len(evs) == 0 {
		return
	}
	err := s.handle(ctx, evs)
	if err == nil {
		s.held.remove(batch)
		for _, m := range msgs {
			s.failures.forgetMsg(m)
			s.ack(ctx, m)
		}
		return
	}
	if len(evs) > 1 {
		s.log.WarnContext(ctx, "batch failed; retrying its events one by one",
			slog.Int("events", len(evs)), slog.Any("error", err))
		for i := range evs {
			s.settle(ctx, msgs[i], s.handle(ctx, evs[i:i+1]))
		}
		return
	}
	s.settle(ctx, msgs[0], err)
}

// handle passes events to the handler. A panic in the handler fails them
// instead of the worker: they are retried, and dead-lettered in the end.
func (s *Subscriber) handle(ctx context.Context, evs []Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.ErrorContext(ctx, "event handler panicked", slog.Int("events", len(evs)),
				slog.Any("panic", r), slog.String("stack", string(debug.Stack())))
			err = fmt.Errorf("event handler panicked: %v", r)
		}
	}()
	return s.handler.HandleEvents(ctx, evs)
}

func (s *Subscriber) decode(m jetstream.Msg) (Event, error) {
	if n := len(m.Data()); n > s.cfg.MaxPayload {
		return Event{}, &DecodeError{Reason: fmt.Sprintf("payload of %d bytes exceeds the limit of %d", n, s.cfg.MaxPayload)}
	}
	// An event without a created time gets the stream's, the same on every
	// delivery.
	return decode(m.Data(), func() time.Time {
		if md, err := m.Metadata(); err == nil {
			return md.Timestamp
		}
		return time.Now()
	})
}

func (s *Subscriber) settle(ctx context.Context, m jetstream.Msg, err error) {
	if err == nil {
		s.failures.forgetMsg(m)
		s.held.release(m)
		s.ack(ctx, m)
		return
	}
	if errors.Is(err, context.Canceled) || ctx.Err() != nil {
		// Shutting down (a statement cut short by it fails with an error
		// of its own): return the message to the stream. Not a failure.
		s.held.release(m)
		_ = m.NakWithDelay(shutdownRedelivery)
		return
	}
	failed := s.failures.add(m)
	if failed >= s.cfg.MaxAttempts {
		s.deadLetter(ctx, m, fmt.Sprintf("processing failed %d times: %v", failed, err))
		return
	}
	s.held.release(m)
	delay := s.retryDelay(failed)
	s.log.WarnContext(ctx, "event processing failed; will retry",
		slog.String("subject", m.Subject()), slog.Int("failures", failed),
		slog.Duration("retry_in", delay), slog.Any("error", err))
	if nakErr := m.NakWithDelay(delay); nakErr != nil {
		s.log.WarnContext(ctx, "nak message", slog.Any("error", nakErr))
	}
}

func (s *Subscriber) ack(ctx context.Context, m jetstream.Msg) {
	if err := m.Ack(); err != nil {
		// The effects are committed; a redelivery finds the event stored
		// and does nothing.
		s.log.WarnContext(ctx, "ack message", slog.Any("error", err))
	}
}

// superviseConsume keeps consuming until ctx is done and returns the
// consume context then in use. When the consumer is gone (deleted, or its
// stream re-created), consuming stops on the client's side: the consumer is
// created again, with a growing delay while that fails, and consumed anew.
// Meanwhile Consuming reports false.
func (s *Subscriber) superviseConsume(ctx context.Context, cons jetstream.Consumer, cc jetstream.ConsumeContext,
	lost <-chan struct{}, consume func(jetstream.Consumer) (jetstream.ConsumeContext, error)) jetstream.ConsumeContext {
	for {
		select {
		case <-ctx.Done():
			return cc
		case <-cc.Closed():
		case <-lost:
			if _, err := cons.Info(ctx); err == nil || ctx.Err() != nil {
				continue // still there: a passing hiccup
			}
		}
		s.consuming.Store(false)
		cc.Stop()
		s.log.WarnContext(ctx, "consumer lost; creating it again", slog.String("consumer", s.cfg.Consumer))
		for attempt := 1; ; attempt++ {
			next, err := s.EnsureConsumer(ctx)
			var nextCC jetstream.ConsumeContext
			if err == nil {
				nextCC, err = consume(next)
			}
			if err == nil {
				cons, cc = next, nextCC
				// A new consumer (or stream) numbers its messages anew:
				// old counts would belong to other messages.
				s.failures.reset()
				break
			}
			delay := s.retryDelay(attempt)
			s.log.WarnContext(ctx, "create consumer again", slog.Duration("retry_in", delay), slog.Any("error", err))
			select {
			case <-ctx.Done():
				return cc
			case <-time.After(delay):
			}
		}
		s.consuming.Store(true)
		s.log.InfoContext(ctx, "consuming again", slog.String("consumer", s.cfg.Consumer))
	}
}

// retryDelay is the redelivery delay after a message's nth failure:
// RetryDelay, doubling with each failure, up to 5 minutes.
func (s *Subscriber) retryDelay(n int) time.Duration {
	return min(s.cfg.RetryDelay<<min(max(n-1, 0), 20), 5*time.Minute)
}

// deadLetter stores m as a dead letter and terminates it. If the store
// fails, m is nak'ed instead, with a delay that grows with each failure,
// so that it is not lost.
func (s *Subscriber) deadLetter(ctx context.Context, m jetstream.Msg, reason string) {
	dl := DeadLetter{Subject: m.Subject(), Payload: m.Data(), Headers: m.Headers(), Reason: reason}
	if md, err := m.Metadata(); err == nil {
		dl.StreamSeq = md.Sequence.Stream
	}
	err := s.dead.StoreDeadLetter(ctx, dl)
	// Kept alive while it is stored; let go of before it is settled.
	s.held.release(m)
	if err != nil {
		delay := s.retryDelay(s.failures.add(m))
		s.log.ErrorContext(ctx, "store dead letter; message will be redelivered",
			slog.String("subject", m.Subject()), slog.Duration("retry_in", delay), slog.Any("error", err))
		_ = m.NakWithDelay(delay)
		return
	}
	s.failures.forgetMsg(m)
	s.log.WarnContext(ctx, "message dead-lettered", slog.String("subject", m.Subject()),
		slog.Uint64("stream_seq", dl.StreamSeq), slog.String("reason", reason))
	// Term, not TermWithReason: the reason is in dead_letters, and servers
	// before 2.10 ignore a term that carries one.
	if err := m.Term(); err != nil {
		s.log.WarnContext(ctx, "terminate message", slog.Any("error", err))
	}
}

// failureCounts counts the failed attempts of messages, by stream
// sequence, until they succeed or are dead-lettered. The count lives in
// this process: after a restart, or when another process took the message
// over, a message has MaxAttempts attempts again.
type failureCounts struct {
	mu sync.Mutex
	n  map[uint64]int
	// any is whether n has entries: the hot path (a success) looks no
	// further when it has none.
	any atomic.Bool
}

// maxFailureCounts bounds the messages counted; past it the counts start
// again (messages another process finished are never forgotten here).
const maxFailureCounts = 100_000

// add counts a failure of m and returns its failures.
func (f *failureCounts) add(m jetstream.Msg) int {
	seq := streamSeq(m)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == nil || len(f.n) >= maxFailureCounts {
		f.n = make(map[uint64]int)
	}
	f.n[seq]++
	f.any.Store(true)
	return f.n[seq]
}

// forgetMsg drops the count of m.
func (f *failureCounts) forgetMsg(m jetstream.Msg) {
	if !f.any.Load() {
		return
	}
	seq := streamSeq(m)
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.n, seq)
	f.any.Store(len(f.n) > 0)
}

// reset drops every count.
func (f *failureCounts) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n = nil
	f.any.Store(false)
}

// streamSeq is m's sequence in the stream; 0 when m has no metadata.
func streamSeq(m jetstream.Msg) uint64 {
	if md, err := m.Metadata(); err == nil {
		return md.Sequence.Stream
	}
	return 0
}

// returnToStream gives a message back to JetStream while stopping.
func (s *Subscriber) returnToStream(it item) {
	s.held.release(it.msg)
	_ = it.msg.NakWithDelay(shutdownRedelivery)
}
