package events_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

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
			_, js, st := testinfra.JetStream(t)
			ctx := t.Context()
			_, err := events.EnsureStream(ctx, js, events.StreamConfig{Name: st.Name, SubjectPrefix: st.SubjectPrefix})
			require.NoError(t, err)

			// One event for each of the four workers' queues.
			const workers = 4
			pub := events.NewPublisher(js, st.SubjectPrefix)
			var queued [workers]bool
			for i := 0; slices.Index(queued[:], false) >= 0; i++ {
				pk := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
				if q := events.Partition(pk, workers); !queued[q] {
					queued[q] = true
					require.NoError(t, pub.Publish(ctx, events.Event{PK: pk, Action: "login", Created: time.Now()}))
				}
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
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- sub.Run(runCtx, context.Background()) }()

			require.Eventually(t, func() bool { return running.Load() == tc.want }, 10*time.Second, 10*time.Millisecond)
			time.Sleep(300 * time.Millisecond) // room for a batch that should not start
			require.Equal(t, tc.want, most.Load(), "batches at once")
			close(release)
			require.Eventually(t, func() bool { return handled.Load() == workers }, 10*time.Second, 10*time.Millisecond)
			stop()
			require.NoError(t, <-done)
		})
	}
}
