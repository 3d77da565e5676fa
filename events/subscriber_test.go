package events_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
)

// Batches that are not full (the stream is keeping up) run on half the
// workers at once, so that a steady stream goes out in fewer, larger
// batches; full ones (a backlog) run on all of them.
func TestPartialBatchesRunOnHalfTheWorkers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		batchSize int
		want      int32
	}{
		{"partial", 10, 2},
		{"full", 1, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, js, st := stream(t)
			ctx := t.Context()

			// One event for each of the four workers' queues.
			const workers = 4
			pub := events.NewPublisher(js, st.SubjectPrefix)
			for q := range workers {
				require.NoError(t, pub.Publish(ctx, events.Event{PK: pkOnQueue(q, workers), Action: "login", Created: time.Now()}))
			}

			var running, most, handled atomic.Int32
			release := make(chan struct{})
			handler := events.HandlerFunc(func(_ context.Context, evs []events.Event) error {
				n := running.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				<-release
				running.Add(-1)
				handled.Add(int32(len(evs)))
				return nil
			})
			sub := events.NewSubscriber(js, handler, nil, events.SubscriberConfig{
				Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix,
				BatchSize: tc.batchSize, Concurrency: workers,
				PartitionKey: func(ev *events.Event) string { return ev.PK },
			})
			stop := runSubscriber(t, sub)

			require.Eventually(t, func() bool { return running.Load() == tc.want }, 10*time.Second, 10*time.Millisecond)
			time.Sleep(300 * time.Millisecond) // room for a batch that should not start
			require.Equal(t, tc.want, most.Load(), "batches at once")
			close(release)
			require.Eventually(t, func() bool { return handled.Load() == workers }, 10*time.Second, 10*time.Millisecond)
			stop()
		})
	}
}

// A batch that is not full waits BatchWait for more, so that events
// arriving one by one go out together; a batch that fills meanwhile does
// not wait.
func TestPartialBatchesWaitForMore(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		events int
		wait   time.Duration
	}{
		{"partial", 3, time.Second},
		{"full", 10, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, js, st := stream(t)
			ctx := t.Context()
			var mu sync.Mutex
			var batches []int
			handler := events.HandlerFunc(func(_ context.Context, evs []events.Event) error {
				mu.Lock()
				batches = append(batches, len(evs))
				mu.Unlock()
				return nil
			})
			sub := events.NewSubscriber(js, handler, nil, events.SubscriberConfig{
				Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix,
				BatchSize: 10, Concurrency: 1, BatchWait: tc.wait,
			})
			stop := runSubscriber(t, sub)
			pub := events.NewPublisher(js, st.SubjectPrefix)
			for i := range tc.events {
				require.NoError(t, pub.Publish(ctx, events.Event{PK: testPK(i), Action: "login", Created: time.Now()}))
				time.Sleep(20 * time.Millisecond)
			}
			require.Eventually(t, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(batches) > 0
			}, 10*time.Second, 10*time.Millisecond)
			stop()
			mu.Lock()
			defer mu.Unlock()
			require.Equal(t, []int{tc.events}, batches)
		})
	}
}

// Messages held behind a batch that outlasts AckWait are kept alive with
// progress acks: a batch waiting for a slot (the other worker's partial
// batch holds the only one), and messages waiting in the slow batch's own
// queue, however many batches they make. None is redelivered; each reaches
// the handler once.
func TestHeldMessagesAreKeptAlive(t *testing.T) {
	t.Parallel()
	many := make([]string, 30)
	for i := range many {
		many[i] = testPK(i + 1)
	}
	for _, tc := range []struct {
		name      string
		workers   int
		batchSize int
		later     []string // published while the slow batch runs
	}{
		{"waiting for a slot", 2, 10, []string{pkOnQueue(1, 2)}},
		{"queued behind it", 1, 10, []string{testPK(1), testPK(2), testPK(3)}},
		{"many batches queued behind it", 1, 2, many},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, js, st := stream(t)
			ctx := t.Context()
			pub := events.NewPublisher(js, st.SubjectPrefix)
			slow := pkOnQueue(0, tc.workers)
			var mu sync.Mutex
			seen := map[string]int{}
			started := make(chan struct{}, 1)
			handler := events.HandlerFunc(func(_ context.Context, evs []events.Event) error {
				mu.Lock()
				for _, ev := range evs {
					seen[ev.PK]++
				}
				mu.Unlock()
				if evs[0].PK == slow {
					started <- struct{}{}
					time.Sleep(2500 * time.Millisecond) // 2.5 times AckWait
				}
				return nil
			})
			sub := events.NewSubscriber(js, handler, nil, events.SubscriberConfig{
				Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix,
				BatchSize: tc.batchSize, Concurrency: tc.workers, AckWait: time.Second,
				PartitionKey: func(ev *events.Event) string { return ev.PK },
			})
			stop := runSubscriber(t, sub)

			require.NoError(t, pub.Publish(ctx, events.Event{PK: slow, Action: "login", Created: time.Now()}))
			<-started
			want := map[string]int{slow: 1}
			for _, pk := range tc.later {
				want[pk] = 1
				require.NoError(t, pub.Publish(ctx, events.Event{PK: pk, Action: "login", Created: time.Now()}))
			}
			require.Eventually(t, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(seen) == len(want)
			}, 10*time.Second, 10*time.Millisecond)
			time.Sleep(1500 * time.Millisecond) // room for a redelivery
			stop()
			mu.Lock()
			defer mu.Unlock()
			require.Equal(t, want, seen)
		})
	}
}

// Each pull request bounds the bytes it brings, so that a backlog of large
// events cannot exceed what a connection may have pending (64 MB on the
// server and in the client) and be dropped as a slow consumer.
func TestPullRequestsAreBoundedInBytes(t *testing.T) {
	t.Parallel()
	nc, js, st := stream(t)
	requests, err := nc.SubscribeSync("$JS.API.CONSUMER.MSG.NEXT." + st.Name + "." + st.Consumer)
	require.NoError(t, err)

	handler := events.HandlerFunc(func(context.Context, []events.Event) error { return nil })
	sub := events.NewSubscriber(js, handler, nil, events.SubscriberConfig{
		Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix, BatchSize: 500, Concurrency: 16,
	})
	defer runSubscriber(t, sub)()

	msg, err := requests.NextMsg(10 * time.Second)
	require.NoError(t, err)
	var req struct {
		Batch    int `json:"batch"`
		MaxBytes int `json:"max_bytes"`
	}
	require.NoError(t, json.Unmarshal(msg.Data, &req))
	require.Equal(t, 2*500*16, req.Batch)
	require.Positive(t, req.MaxBytes, "a pull request without a byte bound: %s", msg.Data)
	require.LessOrEqual(t, req.MaxBytes, 16<<20)
	require.GreaterOrEqual(t, req.MaxBytes, 2*int(nc.MaxPayload()), "room for the largest message")
}

// stream connects to NATS and creates a stream of the test's own.
func stream(t *testing.T) (*nats.Conn, jetstream.JetStream, testinfra.Stream) {
	t.Helper()
	nc, js, st := testinfra.JetStream(t)
	_, err := events.EnsureStream(t.Context(), js, events.StreamConfig{Name: st.Name, SubjectPrefix: st.SubjectPrefix})
	require.NoError(t, err)
	return nc, js, st
}

// testPK is the i-th of the event pks the tests use.
func testPK(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

// pkOnQueue is the first test pk that goes to queue q of n.
func pkOnQueue(q, n int) string {
	for i := 0; ; i++ {
		if pk := testPK(i); events.Partition(pk, n) == q {
			return pk
		}
	}
}

// runSubscriber runs sub until the returned stop, which waits for Run to
// return and checks its error.
func runSubscriber(t *testing.T, sub *events.Subscriber) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx, context.Background()) }()
	return func() {
		cancel()
		require.NoError(t, <-done)
		msgs, bytes := sub.Held()
		require.Zero(t, msgs, "messages still held after Run returned")
		require.Zero(t, bytes, "bytes still held after Run returned")
	}
}

// An event without a created time gets the time the stream stored it, the
// same on every delivery.
func TestEventWithoutCreatedGetsTheStreamTime(t *testing.T) {
	t.Parallel()
	_, js, st := stream(t)
	ack, err := js.Publish(t.Context(), st.SubjectPrefix+".login", []byte(`{"pk": "`+testPK(1)+`", "action": "login"}`))
	require.NoError(t, err)
	s, err := js.Stream(t.Context(), st.Name)
	require.NoError(t, err)
	stored, err := s.GetMsg(t.Context(), ack.Sequence)
	require.NoError(t, err)

	created := make(chan time.Time, 2)
	deliveries := 0
	handler := events.HandlerFunc(func(_ context.Context, evs []events.Event) error {
		created <- evs[0].Created
		deliveries++
		if deliveries == 1 {
			return errors.New("fail the first delivery")
		}
		return nil
	})
	sub := events.NewSubscriber(js, handler, nil, events.SubscriberConfig{
		Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix, RetryDelay: 10 * time.Millisecond,
	})
	stop := runSubscriber(t, sub)
	defer stop()
	for range 2 {
		select {
		case c := <-created:
			require.True(t, c.Equal(stored.Time), "created %s, stored %s", c, stored.Time)
		case <-time.After(10 * time.Second):
			t.Fatal("the event was not delivered twice")
		}
	}
}

// Consuming is true while Run consumes, and false before and after.
func TestSubscriberReportsConsuming(t *testing.T) {
	t.Parallel()
	_, js, st := stream(t)
	handler := events.HandlerFunc(func(context.Context, []events.Event) error { return nil })
	sub := events.NewSubscriber(js, handler, nil, events.SubscriberConfig{Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix})
	require.False(t, sub.Consuming())
	stop := runSubscriber(t, sub)
	require.Eventually(t, sub.Consuming, 10*time.Second, 10*time.Millisecond)
	stop()
	require.False(t, sub.Consuming())
}

// A handler that panics fails its events instead of the worker: the event
// is retried like any failed one.
func TestHandlerPanicIsAFailedAttempt(t *testing.T) {
	t.Parallel()
	_, js, st := stream(t)
	_, err := js.Publish(t.Context(), st.SubjectPrefix+".login", []byte(`{"pk": "`+testPK(1)+`", "action": "login"}`))
	require.NoError(t, err)
	var calls atomic.Int32
	handled := make(chan struct{})
	handler := events.HandlerFunc(func(context.Context, []events.Event) error {
		if calls.Add(1) == 1 {
			var m map[string]int
			m["boom"]++ // a nil map: the kind of bug a panic comes from
		}
		close(handled)
		return nil
	})
	sub := events.NewSubscriber(js, handler, nil, events.SubscriberConfig{
		Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix, RetryDelay: 10 * time.Millisecond,
	})
	stop := runSubscriber(t, sub)
	defer stop()
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("the event was not handled again after the panic")
	}
	require.Equal(t, int32(2), calls.Load())
}

// memDeadLetters is a DeadLetterStore that keeps what it stored.
type memDeadLetters struct {
	mu  sync.Mutex
	got []events.DeadLetter
}

func (s *memDeadLetters) StoreDeadLetter(_ context.Context, dl events.DeadLetter) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, dl)
	return nil
}

func (s *memDeadLetters) list() []events.DeadLetter {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]events.DeadLetter(nil), s.got...)
}

// A message returned to the stream at shutdown (the worker stopped before
// it could finish it) has not failed: after MaxAttempts-1 restarts, its
// first transient failure is retried, not dead-lettered.
func TestShutdownReturnsAreNotFailedAttempts(t *testing.T) {
	t.Parallel()
	_, js, st := stream(t)
	ctx := t.Context()
	pk := testPK(1)
	require.NoError(t, events.NewPublisher(js, st.SubjectPrefix).Publish(ctx, events.Event{PK: pk, Action: "login", Created: time.Now()}))

	dead := &memDeadLetters{}
	cfg := events.SubscriberConfig{
		Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix,
		MaxAttempts: 3, RetryDelay: 10 * time.Millisecond, AckWait: 30 * time.Second,
	}

	// Two worker restarts while the event's batch is in progress and
	// outlasts the shutdown timeout: the handler is cancelled, the message
	// goes back to the stream (context.Canceled: not a failure).
	for run := range 2 {
		started := make(chan struct{}, 1)
		handler := events.HandlerFunc(func(ctx context.Context, _ []events.Event) error {
			started <- struct{}{}
			<-ctx.Done()
			return ctx.Err()
		})
		sub := events.NewSubscriber(js, handler, dead, cfg)
		runCtx, stopRun := context.WithCancel(ctx)
		stopCtx, timeout := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- sub.Run(runCtx, stopCtx) }()
		select {
		case <-started:
		case <-time.After(15 * time.Second):
			t.Fatalf("run %d: the event was not delivered", run)
		}
		stopRun() // SIGTERM
		timeout() // HERALD_SHUTDOWN_TIMEOUT passes
		require.NoError(t, <-done)
	}

	// Third run: the database has one transient hiccup, then works.
	var calls atomic.Int32
	handled := make(chan struct{}, 1)
	handler := events.HandlerFunc(func(context.Context, []events.Event) error {
		if calls.Add(1) == 1 {
			return errors.New("pq: deadlock detected")
		}
		handled <- struct{}{}
		return nil
	})
	sub := events.NewSubscriber(js, handler, dead, cfg)
	stop := runSubscriber(t, sub)
	defer stop()
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		dls := dead.list()
		reason := ""
		if len(dls) > 0 {
			reason = dls[0].Reason
		}
		t.Fatalf("the event failed once and was never retried; handler calls %d, dead letters %d: %q",
			calls.Load(), len(dls), reason)
	}
	require.Empty(t, dead.list())
}

// A message whose processing fails MaxAttempts times is dead-lettered with
// the last error, after exactly that many attempts.
func TestFailingMessageIsDeadLetteredAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	_, js, st := stream(t)
	require.NoError(t, events.NewPublisher(js, st.SubjectPrefix).Publish(t.Context(), events.Event{PK: testPK(1), Action: "login", Created: time.Now()}))
	var calls atomic.Int32
	handler := events.HandlerFunc(func(context.Context, []events.Event) error {
		return fmt.Errorf("attempt %d failed", calls.Add(1))
	})
	dead := &memDeadLetters{}
	sub := events.NewSubscriber(js, handler, dead, events.SubscriberConfig{
		Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix, MaxAttempts: 3, RetryDelay: 10 * time.Millisecond,
	})
	stop := runSubscriber(t, sub)
	defer stop()
	require.Eventually(t, func() bool { return len(dead.list()) == 1 }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, "processing failed 3 times: attempt 3 failed", dead.list()[0].Reason)
	require.Equal(t, int32(3), calls.Load())
}

// A consumer deleted under a running subscriber (by an operator, or with
// its stream) is created again and consumed anew; Consuming is false
// meanwhile.
func TestDeletedConsumerIsCreatedAgain(t *testing.T) {
	t.Parallel()
	_, js, st := stream(t)
	handled := make(chan string, 10)
	handler := events.HandlerFunc(func(_ context.Context, evs []events.Event) error {
		for _, ev := range evs {
			handled <- ev.PK
		}
		return nil
	})
	sub := events.NewSubscriber(js, handler, nil, events.SubscriberConfig{
		Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix, RetryDelay: 50 * time.Millisecond,
	})
	stop := runSubscriber(t, sub)
	defer stop()
	require.Eventually(t, sub.Consuming, 10*time.Second, 10*time.Millisecond)

	require.NoError(t, js.DeleteConsumer(t.Context(), st.Name, st.Consumer))
	require.Eventually(t, func() bool {
		_, err := js.Consumer(t.Context(), st.Name, st.Consumer)
		return err == nil && sub.Consuming()
	}, 20*time.Second, 10*time.Millisecond, "the consumer is not created again")

	require.NoError(t, events.NewPublisher(js, st.SubjectPrefix).Publish(t.Context(), events.Event{PK: testPK(7), Action: "login", Created: time.Now()}))
	select {
	case pk := <-handled:
		require.Equal(t, testPK(7), pk)
	case <-time.After(20 * time.Second):
		t.Fatal("an event published after the consumer was deleted is not handled")
	}
}
