package events_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
)

// A re-created stream numbers its messages from 1 again: a new message does
// not inherit the failures of the old one that had its sequence.
func TestRecreatedStreamStartsFailureCountsAgain(t *testing.T) {
	t.Parallel()
	_, js, st := stream(t)
	ctx := t.Context()
	pub := events.NewPublisher(js, st.SubjectPrefix)
	a, b := testPK(1), testPK(2)
	require.NoError(t, pub.Publish(ctx, events.Event{PK: a, Action: "login", Created: time.Now()}))

	var aFails, bCalls atomic.Int32
	bHandled := make(chan struct{}, 1)
	handler := events.HandlerFunc(func(_ context.Context, evs []events.Event) error {
		for _, ev := range evs {
			switch ev.PK {
			case a:
				aFails.Add(1)
				return errors.New("database down")
			case b:
				if bCalls.Add(1) == 1 {
					return errors.New("pq: deadlock detected")
				}
				bHandled <- struct{}{}
			}
		}
		return nil
	})
	dead := &memDeadLetters{}
	sub := events.NewSubscriber(js, handler, dead, events.SubscriberConfig{
		Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix,
		MaxAttempts: 3, RetryDelay: 2 * time.Second,
	})
	stop := runSubscriber(t, sub)
	defer stop()

	// A fails twice (its third attempt would be 4s later).
	require.Eventually(t, func() bool { return aFails.Load() == 2 }, 15*time.Second, 5*time.Millisecond)
	// The stream is re-created (an operator, a restore, a config change).
	require.NoError(t, js.DeleteStream(ctx, st.Name))
	_, err := events.EnsureStream(ctx, js, events.StreamConfig{Name: st.Name, SubjectPrefix: st.SubjectPrefix})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := js.Consumer(ctx, st.Name, st.Consumer)
		return err == nil && sub.Consuming()
	}, 90*time.Second, 20*time.Millisecond, "the consumer is not created again")

	// B is sequence 1 of the new stream; it fails once, transiently.
	ack, err := js.Publish(ctx, st.SubjectPrefix+".login", mustJSON(t, b))
	require.NoError(t, err)
	t.Logf("B stored at stream sequence %d", ack.Sequence)
	select {
	case <-bHandled:
	case <-time.After(20 * time.Second):
		var reasons []string
		for _, dl := range dead.list() {
			reasons = append(reasons, dl.Reason)
		}
		t.Fatalf("B failed once and was not retried; handler calls for B: %d; dead letters: %q", bCalls.Load(), reasons)
	}
	require.Empty(t, dead.list())
}

func mustJSON(t *testing.T, pk string) []byte {
	return []byte(`{"pk": "` + pk + `", "action": "login", "created": "` + time.Now().UTC().Format(time.RFC3339Nano) + `"}`)
}

// The subscriber stops promptly while its consumer cannot be created again
// (its stream is gone).
func TestShutdownWhileConsumerCannotBeCreated(t *testing.T) {
	t.Parallel()
	_, js, st := stream(t)
	sub := events.NewSubscriber(js, events.HandlerFunc(func(context.Context, []events.Event) error { return nil }), nil, events.SubscriberConfig{
		Stream: st.Name, Consumer: st.Consumer, SubjectPrefix: st.SubjectPrefix, RetryDelay: 100 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sub.Run(ctx, context.Background()) }()
	require.Eventually(t, sub.Consuming, 10*time.Second, 10*time.Millisecond)
	require.NoError(t, js.DeleteStream(t.Context(), st.Name))
	require.Eventually(t, func() bool { return !sub.Consuming() }, 60*time.Second, 10*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}
