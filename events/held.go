package events

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// heldMessages are the messages the client has handed to a subscriber and
// that are not settled yet: waiting in a worker's queue, in a batch waiting
// for a slot, or in the batch being processed. Each gets progress acks
// until it is let go of, just before it is settled, so that JetStream
// redelivers none held up behind a slow batch. Their bytes are bounded:
// adding one waits for room, and meanwhile the client's buffer holds what
// it pulled.
type heldMessages struct {
	mu   sync.Mutex
	room *sync.Cond // signalled when bytes go down or the subscriber stops
	// since is when a message arrived or got its last progress ack.
	since        map[jetstream.Msg]time.Time
	bytes, limit int
	closed       bool
	// interval is the keep-alive's; lastWait is when an add last waited
	// for room.
	interval time.Duration
	lastWait time.Time
}

func newHeldMessages() *heldMessages {
	h := &heldMessages{since: make(map[jetstream.Msg]time.Time)}
	h.room = sync.NewCond(&h.mu)
	return h
}

// open readies h for a run holding at most limit bytes (a single larger
// message is still taken when nothing else is held), kept alive every
// interval.
func (h *heldMessages) open(limit int, interval time.Duration) {
	h.mu.Lock()
	h.limit, h.interval, h.closed = limit, interval, false
	h.mu.Unlock()
}

// add holds m once there is room for it; false when the subscriber stops
// first.
func (h *heldMessages) add(m jetstream.Msg) bool {
	n := len(m.Data())
	h.mu.Lock()
	defer h.mu.Unlock()
	for !h.closed && h.bytes > 0 && h.bytes+n > h.limit {
		h.room.Wait()
		h.lastWait = time.Now()
	}
	if h.closed {
		return false
	}
	h.bytes += n
	since := time.Now()
	if since.Sub(h.lastWait) < h.interval {
		// m, or the messages pulled with it, waited in the client's
		// buffer for room, its ack wait running: due at the next tick.
		since = time.Time{}
	}
	h.since[m] = since
	return true
}

// remove lets go of the batch's messages. A message is let go of before
// it is settled (see [heldMessages.keepAlive]); remove after settling is a
// no-op for it.
func (h *heldMessages) remove(batch []item) {
	h.mu.Lock()
	for _, it := range batch {
		h.drop(it.msg)
	}
	h.mu.Unlock()
	h.room.Broadcast()
}

// release lets go of m, about to be settled.
func (h *heldMessages) release(m jetstream.Msg) {
	h.mu.Lock()
	h.drop(m)
	h.mu.Unlock()
	h.room.Broadcast()
}

func (h *heldMessages) drop(m jetstream.Msg) {
	if _, ok := h.since[m]; ok {
		delete(h.since, m)
		h.bytes -= len(m.Data())
	}
}

// close makes waiting and later adds fail: the subscriber is stopping.
func (h *heldMessages) close() {
	h.mu.Lock()
	h.closed = true
	h.mu.Unlock()
	h.room.Broadcast()
}

// keepAlive sends, every interval until done is closed, a progress ack for
// each message that arrived or had one at least half an interval ago: a
// held message goes at most one and a half intervals without one.
//
// The acks go out under the lock, and a message is let go of under it
// before it is settled, so none follows its message's nak on the wire: it
// would restart the nak's redelivery delay as a full ack wait.
func (h *heldMessages) keepAlive(interval time.Duration, done <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			h.mu.Lock()
			for m, since := range h.since {
				if now.Sub(since) >= interval/2 {
					_ = m.InProgress()
					h.since[m] = now
				}
			}
			h.mu.Unlock()
		}
	}
}

// workQueue holds one worker's messages in arrival order. Adding never
// waits: the subscriber's held bytes bound it.
type workQueue struct {
	mu    sync.Mutex
	items []item
	// ready holds a signal while items may not be empty.
	ready chan struct{}
}

func newWorkQueue() *workQueue { return &workQueue{ready: make(chan struct{}, 1)} }

func (q *workQueue) push(it item) {
	q.mu.Lock()
	q.items = append(q.items, it)
	q.mu.Unlock()
	q.signal()
}

func (q *workQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take moves the oldest items to batch, up to limit items in batch,
// without waiting.
func (q *workQueue) take(batch []item, limit int) []item {
	q.mu.Lock()
	n := min(max(limit-len(batch), 0), len(q.items))
	batch = append(batch, q.items[:n]...)
	clear(q.items[:n])
	if n == len(q.items) {
		q.items = q.items[:0] // keeps the array for what comes next
	} else {
		q.items = q.items[n:]
	}
	left := len(q.items)
	q.mu.Unlock()
	if left > 0 {
		q.signal()
	}
	return batch
}
