package events

import (
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// sizedMsg is a message of n bytes; its other methods are not called.
type sizedMsg struct {
	jetstream.Msg
	n int
}

func (m *sizedMsg) Data() []byte { return make([]byte, m.n) }

// Adding a message waits while the held bytes would pass the limit (a
// single larger message is taken when nothing is held), until messages
// are removed or the subscriber stops.
func TestHeldMessagesAreBoundedInBytes(t *testing.T) {
	h := newHeldMessages()
	h.open(100, time.Minute)
	big := &sizedMsg{n: 150}
	require.True(t, h.add(big), "nothing held: a message over the limit is taken")

	added := make(chan bool)
	small := &sizedMsg{n: 60}
	go func() { added <- h.add(small) }()
	select {
	case <-added:
		t.Fatal("added past the limit")
	case <-time.After(100 * time.Millisecond):
	}
	h.remove([]item{{msg: big}})
	require.True(t, <-added)
	require.True(t, h.since[small].IsZero(), "it waited: its progress ack is due at once")

	go func() { added <- h.add(&sizedMsg{n: 60}) }()
	select {
	case <-added:
		t.Fatal("added past the limit")
	case <-time.After(100 * time.Millisecond):
	}
	h.close()
	require.False(t, <-added, "stopping: the waiting message is refused")
	h.remove([]item{{msg: small}, {msg: small}})
	require.Zero(t, h.bytes, "removing counts each held message once")
}

// A worker takes the oldest messages of its queue, up to the batch size,
// and is signalled again while some are left.
func TestWorkQueueTakesInOrder(t *testing.T) {
	q := newWorkQueue()
	for i := range 5 {
		q.push(item{ev: Event{PK: string(rune('a' + i))}})
	}
	<-q.ready
	pks := func(batch []item) (out string) {
		for _, it := range batch {
			out += it.ev.PK
		}
		return out
	}
	batch := q.take(nil, 3)
	require.Equal(t, "abc", pks(batch))
	require.Len(t, q.ready, 1, "signalled: items are left")
	require.Equal(t, "abc", pks(q.take(batch, 3)), "a full batch takes nothing")
	<-q.ready
	require.Equal(t, "de", pks(q.take(nil, 10)))
	require.Empty(t, q.ready)
	q.push(item{ev: Event{PK: "f"}})
	require.Equal(t, "f", pks(q.take(nil, 10)))
}

// recordingMsg records the acks it is sent, in order.
type recordingMsg struct {
	jetstream.Msg
	mu   sync.Mutex
	acks []string
}

func (m *recordingMsg) Data() []byte { return nil }

func (m *recordingMsg) InProgress() error {
	runtime.Gosched() // widens the window a racing settle would need
	m.record("progress")
	return nil
}

func (m *recordingMsg) NakWithDelay(time.Duration) error {
	m.record("nak")
	return nil
}

func (m *recordingMsg) record(ack string) {
	m.mu.Lock()
	m.acks = append(m.acks, ack)
	m.mu.Unlock()
}

// A message let go of before it is settled gets no progress ack after its
// nak: one would restart the nak's redelivery delay as a full ack wait.
func TestNoProgressAckFollowsASettle(t *testing.T) {
	const interval = time.Millisecond
	h := newHeldMessages()
	h.open(1<<20, interval)
	msgs := make([]*recordingMsg, 2000)
	for i := range msgs {
		msgs[i] = &recordingMsg{}
		require.True(t, h.add(msgs[i]))
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		h.keepAlive(interval, done)
		close(stopped)
	}()
	for i, m := range msgs {
		h.release(m)
		_ = m.NakWithDelay(time.Second)
		if i%50 == 0 {
			time.Sleep(interval) // progress acks go out among the settles
		}
	}
	close(done)
	<-stopped
	progressed := 0
	for i, m := range msgs {
		m.mu.Lock()
		acks := slices.Clone(m.acks)
		m.mu.Unlock()
		require.Equal(t, "nak", acks[len(acks)-1], "message %d: %v", i, acks)
		if len(acks) > 1 {
			progressed++
		}
	}
	require.NotZero(t, progressed, "no progress ack was sent: the test shows nothing")
	require.Zero(t, h.bytes)
}
