package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
)

// TestBatchSizeDoesNotChangeResults runs the bench's standard workload
// through the worker at batch size 1 and at batch size 500: the same events
// give the same notifications.
func TestBatchSizeDoesNotChangeResults(t *testing.T) {
	t.Parallel()
	const n = 800
	results := map[int][]string{}
	for _, size := range []int{1, 500} {
		s := newStack(t)
		s.env["HERALD_BATCH_SIZE"] = strconv.Itoa(size)
		s.env["HERALD_CONCURRENCY"] = "2"
		b := &bench{n: n, rules: 10, users: 200, progress: io.Discard}
		require.NoError(t, b.seed(t.Context(), s.db.DB))
		evs := b.workload()
		_, err := events.EnsureStream(t.Context(), s.js, events.StreamConfig{Name: s.names.Name, SubjectPrefix: s.names.SubjectPrefix})
		require.NoError(t, err)
		require.NoError(t, publishAll(t.Context(), s.js, s.names.SubjectPrefix, evs, time.Now))
		s.start(t)
		s.waitCount(t, n, `SELECT count(*) FROM events`)
		s.settle(t)
		var rows []string
		require.NoError(t, s.db.Select(&rows, `SELECT n.event_id || ' ' || r.name || ' ' || n.user_id
			FROM notifications n JOIN notification_rules r ON r.id = n.rule_id`))
		sort.Strings(rows)
		results[size] = rows
		// Each group's history entries without their timestamps: events
		// of one group may commit in another order on another worker.
		var history []string
		require.NoError(t, s.db.Select(&history, `SELECT id || ' ' || string_agg(entry, ',' ORDER BY entry) FROM (
			SELECT g.id, regexp_replace(h, '^\S+ - ', '') AS entry FROM groups g, jsonb_array_elements_text(g.attributes->'UserAddedHistory') h) x
			GROUP BY id ORDER BY id`))
		results[-size] = history
		s.stop(t)
	}
	require.NotEmpty(t, results[1])
	require.Equal(t, results[1], results[500], "notifications differ between batch sizes 1 and 500")
	require.NotEmpty(t, results[-1])
	require.Equal(t, results[-1], results[-500], "group history entries differ between batch sizes 1 and 500")
}

// The bench's rate publisher sends the workload's events, each stamped with
// the time it went out and otherwise as encoded.
func TestRatePublisherStampsEachEventAsItGoesOut(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	_, js, names := testinfra.JetStream(t)
	_, err := events.EnsureStream(ctx, js, events.StreamConfig{Name: names.Name, SubjectPrefix: names.SubjectPrefix})
	require.NoError(t, err)
	b := &bench{n: 50, rules: 10, users: 10, progress: io.Discard}
	evs := b.workload()
	pub, err := newRatePublisher(names.SubjectPrefix, evs)
	require.NoError(t, err)

	start := time.Now()
	require.NoError(t, pub.run(ctx, js, 1000))
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		t.Fatal("publish acks did not arrive")
	}
	end := time.Now()
	require.GreaterOrEqual(t, end.Sub(start), 45*time.Millisecond, "50 events at 1000/s take about 50 ms")

	cons, err := js.OrderedConsumer(ctx, names.Name, jetstream.OrderedConsumerConfig{})
	require.NoError(t, err)
	batch, err := cons.Fetch(len(evs), jetstream.FetchMaxWait(5*time.Second))
	require.NoError(t, err)
	var got []events.Event
	for m := range batch.Messages() {
		ev, err := events.Decode(m.Data())
		require.NoError(t, err)
		require.Equal(t, events.Subject(names.SubjectPrefix, ev.Action), m.Subject())
		require.Equal(t, ev.PK, m.Headers().Get(jetstream.MsgIDHeader))
		got = append(got, ev)
	}
	require.Len(t, got, len(evs))
	for i, ev := range got {
		require.Equal(t, evs[i].PK, ev.PK)
		require.Equal(t, evs[i].Action, ev.Action)
		require.Equal(t, evs[i].ClientIP, ev.ClientIP)
		require.False(t, ev.Created.Before(start.Truncate(time.Microsecond)), "event %d stamped before the run", i)
		require.False(t, ev.Created.After(end), "event %d stamped after the run", i)
		if i > 0 {
			require.False(t, ev.Created.Before(got[i-1].Created), "stamps go forward")
		}
	}
}

// TestMain lets the test binary be the bench's publisher process, which
// the bench starts as `<its own binary> bench-publish`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "bench-publish" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// benchFor is a bench of n events against the test's services, with a
// schema and stream of its own.
func benchFor(t *testing.T, s *stack, n int, rate float64) *bench {
	t.Helper()
	cfg, err := loadConfig(s.getenv, nil, nil)
	require.NoError(t, err)
	return &bench{cfg: cfg, n: n, rules: 10, users: 50, rate: rate, progress: io.Discard,
		id: fmt.Sprintf("bench_t%d", time.Now().UnixNano()%1e9)}
}

// A bench at a rate publishes from a process of its own and ends with its
// figures, leaving neither schema nor stream behind.
func TestBenchAtARate(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	b := benchFor(t, s, 300, 1000)
	res, err := b.run(t.Context(), false)
	require.NoError(t, err)
	require.Equal(t, 300, res.Events)
	require.Positive(t, res.Rate)
	require.Positive(t, res.LatencyP99)
	require.Positive(t, res.FloorJetStream)
	require.Positive(t, res.FloorInsert)
	require.Positive(t, res.Notified, "about one event in five fires a rule")
	require.Zero(t, s.count(t, `SELECT count(*) FROM pg_namespace WHERE nspname IN ($1::text, $1::text || '_floor')`, b.id))
	_, err = s.js.Stream(t.Context(), b.cfg.Stream)
	require.Error(t, err, "the bench's stream is deleted")
}

// A worker that cannot start ends a bench at a rate with its error.
func TestBenchAtARateWhenTheWorkerCannotStart(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	b := benchFor(t, s, 100, 1000)
	b.cfg.MailFrom = "not an address"
	_, err := b.run(t.Context(), false)
	require.ErrorContains(t, err, "not an address")
}
