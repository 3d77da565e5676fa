package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/rules"
	"github.com/heraldhq/herald/schema"
)

// benchResult is what `worker bench` measures. Rates are events per second.
type benchResult struct {
	Machine     string  `json:"machine"`
	Events      int     `json:"events"`
	Rules       int     `json:"rules"`
	BatchSize   int     `json:"batch_size"`
	BatchWait   float64 `json:"batch_wait_ms"`
	Concurrency int     `json:"concurrency"`
	PublishRate float64 `json:"publish_rate"` // 0: the events were a backlog when the worker started
	Seconds     float64 `json:"seconds"`
	Rate        float64 `json:"events_per_second"`
	LatencyP50  float64 `json:"latency_p50_ms"`
	LatencyP95  float64 `json:"latency_p95_ms"`
	LatencyP99  float64 `json:"latency_p99_ms"`
	CPUPerEvent float64 `json:"cpu_us_per_event"`
	// MachineCPUPerEvent counts every process of the machine (PostgreSQL
	// and NATS too, when they run here) while the worker ran.
	MachineCPUPerEvent float64 `json:"machine_cpu_us_per_event"`
	PeakRSSMB          float64 `json:"peak_rss_mb"`
	MeanBatch          float64 `json:"mean_batch"` // events per committed transaction
	Batches            int64   `json:"batches"`
	BatchesRedone      int64   `json:"batches_redone"` // run again with a savepoint per policy
	Fired              int64   `json:"rules_fired"`
	Notified           int64   `json:"notifications"`

	FloorJetStream float64 `json:"floor_jetstream_consume_ack_per_second"`
	FloorInsert    float64 `json:"floor_batched_insert_per_second"`
	Floor          float64 `json:"floor_per_second"`
	RatioToFloor   float64 `json:"ratio_to_floor"`
}

func benchCommand(ctx context.Context, e env, args []string) error {
	fs := e.flags("bench")
	n := fs.Int("n", 20000, "events to publish")
	nRules := fs.Int("rules", 10, "rules in the workload (multiples of the standard 10 repeat it)")
	batch := fs.Int("batch-size", 0, "events per transaction (default HERALD_BATCH_SIZE)")
	conc := fs.Int("concurrency", 0, "batches at once (default HERALD_CONCURRENCY)")
	rate := fs.Float64("rate", 0, "publish at this many events/s while the worker runs (0: publish a backlog first)")
	users := fs.Int("users", 1000, "users in the workload")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	keep := fs.Bool("keep", false, "keep the bench schema and stream")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the worker phase to `FILE`")
	memProfile := fs.String("memprofile", "", "write an allocation profile to `FILE` when the worker phase ends (it counts from the start of the run: set-up is under bench.*)")
	fs.Usage = func() {
		fmt.Fprintln(e.stderr, "usage: worker bench [flags]\n\nMeasures Herald end to end on a fresh schema and stream, with the floor of the same run.")
		fs.PrintDefaults()
	}
	cfg, err := loadConfig(e.getenv, fs, args)
	if err != nil {
		return err
	}
	if *n < 1 {
		return errors.New("bench: -n must be at least 1")
	}
	if *batch > 0 {
		cfg.BatchSize = *batch
	}
	if *conc > 0 {
		cfg.Concurrency = *conc
	}
	b := &bench{cfg: cfg, n: *n, cpuProfile: *cpuProfile, memProfile: *memProfile, rules: *nRules, users: *users, rate: *rate, progress: e.stderr,
		id: fmt.Sprintf("bench_%d", time.Now().UnixNano()%1e9), maxQuiet: time.Minute}
	res, err := b.run(ctx, *keep)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	printBench(e.stdout, res)
	return nil
}

type bench struct {
	cfg      config
	n        int
	rules    int
	users    int
	rate     float64
	id       string
	progress io.Writer
	// publisherNATS is the NATS URL the rate publisher's process uses.
	publisherNATS string
	// maxQuiet is how long each phase waits at most for a quiet machine.
	maxQuiet time.Duration

	cpuProfile string
	memProfile string
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.progress, "bench: "+format+"\n", args...)
}

func (b *bench) run(ctx context.Context, keep bool) (*benchResult, error) {
	logger := slog.New(slog.NewTextHandler(b.progress, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// NATS: the configured server, or an embedded one started here.
	nc, err := connectNATS(b.cfg, true, b.cfg.logger(b.progress))
	if err != nil {
		return nil, err
	}
	defer nc.close()
	// The rate publisher's process reaches the same server: the configured
	// one (with its credentials, through the environment) or this one.
	b.publisherNATS = cmp.Or(b.cfg.NATSURL, nc.nc.ConnectedUrl())
	b.cfg.NATSURL = nc.nc.ConnectedUrl()
	b.cfg.Stream = strings.ToUpper(b.id)
	b.cfg.SubjectPrefix = b.id + ".events"
	b.cfg.Consumer = b.id + "-worker"
	b.cfg.HTTPAddr = ""
	b.cfg.LogLevel = slog.LevelError

	// PostgreSQL: a schema of its own.
	admin, err := openDB(ctx, b.cfg.DatabaseURL, logger)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	benchURL, err := withSearchPath(b.cfg.DatabaseURL, b.id)
	if err != nil {
		return nil, err
	}
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+b.id); err != nil {
		return nil, fmt.Errorf("create bench schema: %w", err)
	}
	b.cfg.DatabaseURL = benchURL
	if !keep {
		defer func() {
			_, _ = admin.ExecContext(context.Background(), "DROP SCHEMA "+b.id+" CASCADE")
			_ = nc.js.DeleteStream(context.Background(), b.cfg.Stream)
		}()
	}
	db, err := openDB(ctx, b.cfg.DatabaseURL, logger)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	if _, err := schema.Migrate(ctx, db); err != nil {
		return nil, err
	}
	if err := b.seed(ctx, db); err != nil {
		return nil, err
	}
	if _, err := events.EnsureStream(ctx, nc.js, events.StreamConfig{Name: b.cfg.Stream, SubjectPrefix: b.cfg.SubjectPrefix}); err != nil {
		return nil, err
	}
	res := &benchResult{
		Machine: machine(), Events: b.n, Rules: b.rules, BatchSize: b.cfg.BatchSize,
		BatchWait:   float64(b.cfg.BatchWait) / float64(time.Millisecond),
		Concurrency: b.cfg.Concurrency, PublishRate: b.rate,
	}
	// The insert floor runs first: after the worker's run, its rows fill
	// PostgreSQL's buffers and a second batch of inserts runs markedly
	// slower, which would flatter the ratio.
	quiet := func() { b.quiesce(ctx, admin) }
	quiet()
	received, err := asReceived(b.workload())
	if err != nil {
		return nil, err
	}
	if res.FloorInsert, err = b.floorInsert(ctx, admin, received); err != nil {
		return nil, err
	}
	received = nil
	if err := b.herald(ctx, nc, db, res, logger, quiet); err != nil {
		return nil, err
	}
	quiet()
	if res.FloorJetStream, err = b.floorJetStream(ctx, nc.js); err != nil {
		return nil, err
	}
	res.Floor = min(res.FloorJetStream, res.FloorInsert)
	res.RatioToFloor = res.Rate / res.Floor
	return res, nil
}

// herald runs the real worker on the events and measures it.
func (b *bench) herald(ctx context.Context, nc *natsConn, db *sqlx.DB, res *benchResult, logger *slog.Logger, quiet func()) error {
	evs := b.workload()
	n := len(evs)
	var (
		committed atomic.Int64
		batches   atomic.Int64
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, n)
	)
	cfg := b.cfg
	var engine *rules.Engine
	cfg.onEngine = func(e *rules.Engine) { engine = e }
	allDone := make(chan struct{})
	cfg.afterCommit = func(batch []events.Event) {
		now := time.Now()
		mu.Lock()
		for i := range batch {
			latencies = append(latencies, now.Sub(batch[i].Created))
		}
		mu.Unlock()
		batches.Add(1)
		if total := committed.Add(int64(len(batch))); total >= int64(n) && total-int64(len(batch)) < int64(n) {
			close(allDone)
		}
	}
	var pub *publisherProcess
	if b.rate == 0 {
		b.logf("publishing %d events", len(evs))
		if err := publishAll(ctx, nc.js, cfg.SubjectPrefix, evs, time.Now); err != nil {
			return err
		}
	} else {
		// A process of its own, so that its CPU and memory are not
		// counted as the worker's.
		var err error
		if pub, err = b.startPublisher(ctx, cfg.SubjectPrefix); err != nil {
			return err
		}
		defer pub.stop()
	}
	// The events live in the stream, or in the publisher, now: drop them
	// here, so that the peak RSS and the garbage collection measured below
	// are the worker's.
	evs = nil
	runtime.GC()
	debug.FreeOSMemory()
	quiet()

	if b.cpuProfile != "" {
		f, err := os.Create(b.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	resetPeakRSS()
	workerCtx, stopWorker := context.WithCancel(ctx)
	defer stopWorker()
	done := make(chan error, 1)
	go func() { done <- run(workerCtx, cfg, logger) }()
	// The clocks start once the worker consumes, as the floors' start
	// after their set-up: connecting, loading and compiling the rules are
	// not the worker's throughput.
	if err := waitForPull(ctx, nc.js, cfg, done); err != nil {
		return err
	}
	cpu0, machine0 := cpuTime(), machineCPUTime()
	start := time.Now()
	pubErr := make(chan error, 1)
	if pub != nil {
		// Publish at the given rate, each event stamped as it goes out.
		if err := pub.start(); err != nil {
			return err
		}
		go func() {
			if err := pub.wait(); err != nil && workerCtx.Err() == nil {
				pubErr <- err
			}
		}()
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var runErr error
wait:
	for committed.Load() < int64(n) {
		select {
		case <-allDone:
			break wait
		case <-tick.C:
			b.logf("%d/%d events committed (%.0f/s)", committed.Load(), n, float64(committed.Load())/time.Since(start).Seconds())
			var dead int
			if err := db.GetContext(ctx, &dead, `SELECT count(*) FROM dead_letters`); err == nil && dead > 0 {
				stopWorker()
				<-done
				return fmt.Errorf("%d events were dead-lettered: they will never commit", dead)
			}
		case runErr = <-done:
			break wait
		case err := <-pubErr:
			stopWorker()
			<-done
			return fmt.Errorf("publish at %.0f/s: %w", b.rate, err)
		case <-ctx.Done():
			stopWorker()
			return ctx.Err()
		}
	}
	elapsed := time.Since(start)
	cpu, machineCPU := cpuTime()-cpu0, machineCPUTime()-machine0
	res.PeakRSSMB = float64(peakRSS()) / (1 << 20)
	stopWorker()
	if runErr == nil {
		runErr = <-done
	}
	if b.memProfile != "" {
		if err := writeAllocProfile(b.memProfile); err != nil {
			return err
		}
	}
	if runErr != nil {
		return fmt.Errorf("worker: %w", runErr)
	}
	res.Seconds = elapsed.Seconds()
	res.Rate = float64(n) / elapsed.Seconds()
	res.CPUPerEvent = float64(cpu.Microseconds()) / float64(n)
	res.MeanBatch = float64(committed.Load()) / float64(max(batches.Load(), 1))
	res.Batches = batches.Load()
	if engine != nil {
		res.BatchesRedone = engine.Stats().BatchesRedone.Load()
	}
	res.MachineCPUPerEvent = float64(machineCPU.Microseconds()) / float64(n)
	slices.Sort(latencies)
	res.LatencyP50 = percentile(latencies, 0.50)
	res.LatencyP95 = percentile(latencies, 0.95)
	res.LatencyP99 = percentile(latencies, 0.99)
	if err := db.GetContext(ctx, &res.Notified, `SELECT count(*) FROM notifications`); err != nil {
		return err
	}
	if err := db.GetContext(ctx, &res.Fired, `SELECT count(DISTINCT (event_id, rule_id)) FROM notifications`); err != nil {
		return err
	}
	b.logf("herald: %d events in %.2fs", n, elapsed.Seconds())
	return nil
}

// publishAll publishes evs asynchronously and waits for the stream's acks.
func publishAll(ctx context.Context, js jetstream.JetStream, prefix string, evs []events.Event, now func() time.Time) error {
	const window = 4000
	futures := make([]jetstream.PubAckFuture, 0, window)
	wait := func() error {
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return fmt.Errorf("publish: %w", err)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		futures = futures[:0]
		return nil
	}
	for i := range evs {
		evs[i].Created = now()
		data, err := evs[i].MarshalJSON()
		if err != nil {
			return err
		}
		f, err := js.PublishAsync(events.Subject(prefix, evs[i].Action), data, jetstream.WithMsgID(evs[i].PK))
		if err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		futures = append(futures, f)
		if len(futures) == window {
			if err := wait(); err != nil {
				return err
			}
		}
	}
	return wait()
}

// asReceived is evs as the worker receives them: stamped, encoded and
// decoded, so that the insert floor stores them as the worker does (the
// objects as they came, not encoded again).
func asReceived(evs []events.Event) ([]events.Event, error) {
	now := time.Now()
	out := make([]events.Event, len(evs))
	for i := range evs {
		ev := evs[i]
		ev.Created = now
		data, err := ev.MarshalJSON()
		if err != nil {
			return nil, err
		}
		if out[i], err = events.Decode(data); err != nil {
			return nil, fmt.Errorf("decode bench event %s: %w", ev.PK, err)
		}
	}
	return out, nil
}

// waitForPull waits until the worker has asked its consumer for messages,
// or has been handed some: it is consuming. It fails when the worker ends,
// ctx ends, or a minute passes.
func waitForPull(ctx context.Context, js jetstream.JetStream, cfg config, done <-chan error) error {
	deadline := time.After(time.Minute)
	for {
		if c, err := js.Consumer(ctx, cfg.Stream, cfg.Consumer); err == nil {
			if info, err := c.Info(ctx); err == nil && (info.NumWaiting > 0 || info.Delivered.Consumer > 0) {
				return nil
			}
		}
		select {
		case err := <-done:
			return fmt.Errorf("worker: %w", cmp.Or(err, errors.New("stopped before it consumed")))
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return errors.New("worker: not consuming a minute after it started")
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// publisherProcess is `worker bench-publish`, the publisher of a bench at
// a rate, in a process of its own.
type publisherProcess struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
}

// startPublisher starts the publisher process and waits until its events
// are encoded and it is connected.
func (b *bench) startPublisher(ctx context.Context, prefix string) (*publisherProcess, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench publisher: %w", err)
	}
	p := &publisherProcess{}
	p.cmd = exec.CommandContext(ctx, self, "bench-publish", "-n", strconv.Itoa(b.n), "-users", strconv.Itoa(b.users),
		"-rate", strconv.FormatFloat(b.rate, 'f', -1, 64), "-subject-prefix", prefix)
	p.cmd.Env = append(os.Environ(), "NATS_URL="+b.publisherNATS)
	p.cmd.Stderr = &p.stderr
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench publisher: %w", err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		p.stop()
		_ = p.cmd.Wait() // its stderr is complete once it has ended
		return nil, fmt.Errorf("bench publisher did not start: %v %s", err, strings.TrimSpace(p.stderr.String()))
	}
	return p, nil
}

// start tells the publisher to begin.
func (p *publisherProcess) start() error {
	_, err := io.WriteString(p.stdin, "go\n")
	return err
}

// wait waits until the publisher has published every event and the
// stream acknowledged them.
func (p *publisherProcess) wait() error {
	if err := p.cmd.Wait(); err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(p.stderr.String()))
	}
	return nil
}

// stop ends the publisher if it still runs.
func (p *publisherProcess) stop() {
	_ = p.stdin.Close()
	_ = p.cmd.Process.Kill() // os.ErrProcessDone when it has ended
}

// benchPublishCommand is the publisher of `worker bench -rate`, run by the
// bench as a child process: it builds the bench's workload, encodes it,
// connects to NATS_URL, prints "ready", and once a line arrives on stdin
// publishes the events at the rate, each stamped as it goes out, and waits
// for the stream's acks.
func benchPublishCommand(ctx context.Context, e env, args []string) error {
	fs := e.flags("bench-publish")
	n := fs.Int("n", 0, "events")
	users := fs.Int("users", 1000, "users in the workload")
	rate := fs.Float64("rate", 0, "events a second")
	cfg, err := loadConfig(e.getenv, fs, args) // -subject-prefix among its flags
	if err != nil {
		return err
	}
	if *n < 1 || *rate <= 0 {
		return errors.New("bench-publish: want -n and -rate")
	}
	pub, err := newRatePublisher(cfg.SubjectPrefix, (&bench{n: *n, users: *users}).workload())
	if err != nil {
		return err
	}
	nc, err := connectNATS(cfg, false, cfg.logger(e.stderr))
	if err != nil {
		return err
	}
	defer nc.close()
	fmt.Fprintln(e.stdout, "ready")
	if _, err := bufio.NewReader(e.stdin).ReadString('\n'); err != nil {
		return fmt.Errorf("bench-publish: no go: %w", err)
	}
	if err := pub.run(ctx, nc.js, *rate); err != nil {
		return err
	}
	select {
	case <-nc.js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ratePublisher publishes encoded events at a steady rate while the worker
// runs, at little cost of its own: each payload is encoded beforehand and
// only its created timestamp is written as it goes out, and it wakes once a
// millisecond to publish the events due by then, not once per event.
type ratePublisher struct {
	subjects []string
	ids      []string // Nats-Msg-Id, as publishers set it
	payloads [][]byte
	stamps   []int // offset of the created timestamp in each payload
}

// benchStampSentinel is the created time events are encoded with: its
// RFC 3339 form has all nine fractional digits, the width of
// benchStampLayout, so that the publisher can overwrite it in place.
var benchStampSentinel = time.Date(2000, 1, 1, 0, 0, 0, 123456789, time.UTC)

const benchStampLayout = "2006-01-02T15:04:05.000000000Z"

func newRatePublisher(prefix string, evs []events.Event) (*ratePublisher, error) {
	p := &ratePublisher{subjects: make([]string, len(evs)), ids: make([]string, len(evs)), payloads: make([][]byte, len(evs)), stamps: make([]int, len(evs))}
	sentinel := []byte(benchStampSentinel.Format(time.RFC3339Nano))
	for i := range evs {
		ev := evs[i]
		ev.Created = benchStampSentinel
		data, err := ev.MarshalJSON()
		if err != nil {
			return nil, err
		}
		at := bytes.Index(data, sentinel)
		if at < 0 || len(sentinel) != len(benchStampLayout) {
			return nil, fmt.Errorf("encode bench event %s: no created timestamp to stamp", ev.PK)
		}
		p.subjects[i], p.ids[i], p.payloads[i], p.stamps[i] = events.Subject(prefix, ev.Action), ev.PK, data, at
	}
	return p, nil
}

// run publishes every payload, rate a second, asynchronously so that it
// keeps the rate however slowly the stream acknowledges. When too many
// acknowledgements are outstanding, it waits for them and tries again.
func (p *ratePublisher) run(ctx context.Context, js jetstream.JetStream, rate float64) error {
	start := time.Now()
	for sent := 0; sent < len(p.payloads); {
		due := min(len(p.payloads), int(time.Since(start).Seconds()*rate)+1)
		for ; sent < due; sent++ {
			data := p.payloads[sent]
			time.Now().UTC().AppendFormat(data[p.stamps[sent]:p.stamps[sent]], benchStampLayout)
			_, err := js.PublishAsync(p.subjects[sent], data, jetstream.WithMsgID(p.ids[sent]))
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				select {
				case <-js.PublishAsyncComplete():
				case <-ctx.Done():
					return ctx.Err()
				}
				_, err = js.PublishAsync(p.subjects[sent], data, jetstream.WithMsgID(p.ids[sent]))
			}
			if err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// floorJetStream consumes the same messages with a consumer of its own and
// acks each: the rate of JetStream alone.
func (b *bench) floorJetStream(ctx context.Context, js jetstream.JetStream) (float64, error) {
	cons, err := js.CreateOrUpdateConsumer(ctx, b.cfg.Stream, jetstream.ConsumerConfig{
		Durable: b.id + "-floor", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 20000,
	})
	if err != nil {
		return 0, fmt.Errorf("floor consumer: %w", err)
	}
	start := time.Now()
	got := 0
	for got < b.n {
		batch, err := cons.Fetch(min(1000, b.n-got), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return 0, fmt.Errorf("floor fetch: %w", err)
		}
		n := 0
		for m := range batch.Messages() {
			_ = m.Ack()
			n++
		}
		if n == 0 {
			return 0, errors.New("floor fetch: stream ran dry before all events were read")
		}
		got += n
	}
	return float64(got) / time.Since(start).Seconds(), nil
}

// floorInsert inserts the same events, in batches of the same size and
// with the same statement the worker uses, into a fresh schema: the rate of
// PostgreSQL alone.
func (b *bench) floorInsert(ctx context.Context, admin *sqlx.DB, evs []events.Event) (float64, error) {
	floorSchema := b.id + "_floor"
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+floorSchema); err != nil {
		return 0, fmt.Errorf("create floor schema: %w", err)
	}
	defer func() { _, _ = admin.ExecContext(context.Background(), "DROP SCHEMA "+floorSchema+" CASCADE") }()
	dsn, err := withSearchPath(b.cfg.DatabaseURL, floorSchema)
	if err != nil {
		return 0, err
	}
	db, err := openDB(ctx, dsn, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return 0, err
	}
	defer db.Close()
	if _, err := schema.Migrate(ctx, db); err != nil {
		return 0, err
	}
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, b.cfg.Concurrency)
	for range b.cfg.Concurrency {
		wg.Go(func() {
			for {
				i := int(next.Add(int64(b.cfg.BatchSize))) - b.cfg.BatchSize
				if i >= len(evs) {
					return
				}
				chunk := evs[i:min(i+b.cfg.BatchSize, len(evs))]
				tx, err := db.BeginTxx(ctx, nil)
				if err == nil {
					if _, err = rules.StoreEvents(ctx, tx, chunk); err == nil {
						err = tx.Commit()
					} else {
						_ = tx.Rollback()
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("floor insert: %w", err)
	}
	return float64(len(evs)) / time.Since(start).Seconds(), nil
}

func withSearchPath(dsn, schemaName string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return "", fmt.Errorf("bench needs DATABASE_URL as a URL: %q", redactDSN(dsn))
	}
	q := u.Query()
	q.Set("search_path", schemaName)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(int(p*float64(len(sorted))), len(sorted)-1)
	return float64(sorted[i].Microseconds()) / 1000
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// quiesce waits, for up to a minute, until PostgreSQL has checkpointed,
// no autovacuum runs and the machine is nearly idle, so that each measured
// phase starts as the others do instead of paying for the writes of the
// one before.
func (b *bench) quiesce(ctx context.Context, admin *sqlx.DB) {
	start := time.Now()
	// CHECKPOINT needs superuser or pg_checkpoint; without them the wait
	// below still covers the checkpointer's work.
	_, _ = admin.ExecContext(ctx, "CHECKPOINT")
	for time.Since(start) < b.maxQuiet && ctx.Err() == nil {
		busy0, t0 := machineCPUTime(), time.Now()
		time.Sleep(250 * time.Millisecond)
		busy := float64(machineCPUTime()-busy0) / float64(time.Since(t0)*time.Duration(runtime.NumCPU()))
		var vacuums int
		_ = admin.GetContext(ctx, &vacuums, `SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'`)
		if busy < 0.1 && vacuums == 0 {
			break
		}
	}
	b.logf("machine quiet after %.1fs", time.Since(start).Seconds())
}

// machineCPUTime is the busy time of all CPUs since boot, from /proc/stat
// (Linux; 0 elsewhere).
func machineCPUTime() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var ticks int64
	for i, f := range fields[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is already counted in user
			break
		}
		var v int64
		fmt.Sscanf(f, "%d", &v)
		ticks += v
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// resetPeakRSS restarts the kernel's peak-RSS count (Linux).
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// peakRSS is the process's peak resident set size in bytes since the last
// resetPeakRSS.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:")), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}

// writeAllocProfile writes the allocations sampled so far to path.
func writeAllocProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		f.Close() //nolint:errcheck,gosec // the write error is the one to report
		return fmt.Errorf("write allocation profile: %w", err)
	}
	return f.Close()
}

func machine() string {
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				model = strings.TrimSpace(line[strings.Index(line, ":")+1:])
				break
			}
		}
	}
	return fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), model)
}

func printBench(w io.Writer, r *benchResult) {
	mode := "backlog"
	if r.PublishRate > 0 {
		mode = fmt.Sprintf("published at %.0f/s", r.PublishRate)
	}
	fmt.Fprintf(w, "machine:      %s\n", r.Machine)
	fmt.Fprintf(w, "workload:     %d events (%s), %d rules, batch %d (%.1f on average, wait %g ms), concurrency %d\n", r.Events, mode, r.Rules, r.BatchSize, r.MeanBatch, r.BatchWait, r.Concurrency)
	fmt.Fprintf(w, "batches:      %d committed, %d of them run again with savepoints\n", r.Batches, r.BatchesRedone)
	fmt.Fprintf(w, "herald:       %.0f events/s end to end (%.2fs); %d rule firings, %d notifications\n", r.Rate, r.Seconds, r.Fired, r.Notified)
	fmt.Fprintf(w, "latency:      publish→commit p50 %.1f ms, p95 %.1f ms, p99 %.1f ms\n", r.LatencyP50, r.LatencyP95, r.LatencyP99)
	fmt.Fprintf(w, "cost:         %.1f µs CPU per event in the worker, %.1f µs in the whole machine; peak RSS %.0f MB\n", r.CPUPerEvent, r.MachineCPUPerEvent, r.PeakRSSMB)
	fmt.Fprintf(w, "floor:        JetStream consume+ack %.0f/s, batched insert %.0f/s\n", r.FloorJetStream, r.FloorInsert)
	fmt.Fprintf(w, "ratio:        herald / floor = %.2f\n", r.RatioToFloor)
}

// workload builds the standard event mix: 40% login, 40% model_updated,
// 20% model_created, about one in five firing a rule.
func (b *bench) workload() []events.Event {
	rng := rand.New(rand.NewPCG(1, 2))
	evs := make([]events.Event, b.n)
	for i := range evs {
		uid := int64(rng.IntN(b.users) + 1)
		user := map[string]any{"pk": uid, "username": fmt.Sprintf("user%d", uid), "email": fmt.Sprintf("user%d@example.com", uid)}
		ev := events.Event{PK: benchUUID(rng), User: user, Brand: map[string]any{}, ClientIP: fmt.Sprintf("10.%d.%d.%d", rng.IntN(256), rng.IntN(256), rng.IntN(254)+1)}
		req := map[string]any{"path": "/api/v3/", "method": "GET", "user_agent": "Mozilla/5.0"}
		switch r := rng.IntN(100); {
		case r < 40:
			ev.Action, ev.App = "login", "authentik.events.signals"
			ev.Context = map[string]any{"auth_method": "password", "auth_method_args": map[string]any{"known_device": rng.IntN(4) != 0}, "http_request": req}
		case r < 80:
			ev.Action, ev.App = "model_updated", "authentik.events.middleware"
			if rng.IntN(4) == 0 {
				gid := benchGroupID(rng.IntN(benchGroups))
				ev.Context = map[string]any{"model": map[string]any{"app": "authentik_core", "model_name": "group", "pk": gid, "name": gid},
					"diff": map[string]any{"users": map[string]any{"add": []any{uid}}}, "http_request": req}
			} else {
				ev.Context = map[string]any{"model": map[string]any{"app": "authentik_core", "model_name": "user", "pk": uid, "name": "User"}, "http_request": req}
			}
		default:
			ev.Action, ev.App = "model_created", "authentik.events.middleware"
			if rng.IntN(2) == 0 {
				ev.Context = map[string]any{"model": map[string]any{"app": "authentik_core", "model_name": "application", "pk": benchUUID(rng), "name": "App"}, "http_request": req}
			} else {
				ev.Context = map[string]any{"model": map[string]any{"app": "authentik_core", "model_name": "user", "pk": uid, "name": "New User"}, "http_request": req}
			}
		}
		evs[i] = ev
	}
	return evs
}

const benchGroups = 50

func benchGroupID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

func benchUUID(rng *rand.Rand) string {
	var b [16]byte
	for i := range b {
		b[i] = byte(rng.IntN(256))
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// benchPolicies are the standard workload's policies: five event matchers
// and five expressions (among them the unknown-device and group-history
// examples).
var benchPolicies = []struct {
	name, kind, expression, matchAction, matchModel string
}{
	{name: "login-failed", kind: rules.KindEventMatcher, matchAction: "login_failed"},
	{name: "application-created", kind: rules.KindEventMatcher, matchAction: "model_created", matchModel: "authentik_core.application"},
	{name: "password-set", kind: rules.KindEventMatcher, matchAction: "password_set"},
	{name: "suspicious-request", kind: rules.KindEventMatcher, matchAction: "suspicious_request"},
	{name: "configuration-error", kind: rules.KindEventMatcher, matchAction: "configuration_error"},
	{name: "unknown-device-login", kind: rules.KindExpression, expression: `const event = request.context.event;
if (!event || event.action !== "login") return false;
return (event.context.auth_method_args || {}).known_device === false;`},
	{name: "group-user-history", kind: rules.KindExpression, expression: mustExampleExpression("group-user-history")},
	{name: "superuser-login", kind: rules.KindExpression, expression: `return request.context.event.action === "login" && request.user.is_superuser;`},
	{name: "outside-network", kind: rules.KindExpression, expression: `if (request.context.event.action !== "login") return false;
return !ip_network("10.0.0.0/8").contains(ak_client_ip);`},
	{name: "admin-named-user-created", kind: rules.KindExpression, expression: `const m = request.context.event.context.model || {};
return request.context.event.action === "model_created" && m.model_name === "user" && regex_match(m.name || "", "^[Aa]dmin");`},
}

// mustExampleExpression is the expression of a shipped example seed file.
func mustExampleExpression(name string) string {
	expression, err := schema.ExampleExpression(name)
	if err != nil {
		panic(err)
	}
	return expression
}

// seed writes the standard workload's users, groups, policies, rules and
// the local transport.
func (b *bench) seed(ctx context.Context, db *sqlx.DB) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	stmts := []string{
		fmt.Sprintf(`INSERT INTO users (id, username, email, is_superuser)
SELECT i, 'user' || i, 'user' || i || '@example.com', i %% 100 = 0 FROM generate_series(1, %d) i`, b.users),
		fmt.Sprintf(`INSERT INTO groups (id, name) SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'group' || i
FROM generate_series(0, %d) i`, benchGroups-1),
		`INSERT INTO notification_transports (name, mode) VALUES ('inbox', 'local')`,
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("seed bench: %w", err)
		}
	}
	for _, p := range benchPolicies {
		if _, err := tx.ExecContext(ctx, `INSERT INTO policies (name, kind, expression, match_action, match_model)
VALUES ($1, $2, $3, NULLIF($4, ''), NULLIF($5, ''))`, p.name, p.kind, p.expression, p.matchAction, p.matchModel); err != nil {
			return fmt.Errorf("seed bench policy %s: %w", p.name, err)
		}
	}
	for i := range b.rules {
		p := benchPolicies[i%len(benchPolicies)]
		rule := fmt.Sprintf("rule-%02d-%s", i, p.name)
		if _, err := tx.ExecContext(ctx, `INSERT INTO notification_rules (name, severity, destination_event_user) VALUES ($1, 'notice', true)`, rule); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO notification_rule_transports (rule_id, transport_id)
SELECT r.id, t.id FROM notification_rules r, notification_transports t WHERE r.name = $1 AND t.name = 'inbox'`, rule); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO policy_bindings (target_rule_id, policy_id, "order")
SELECT r.id, p.id, 0 FROM notification_rules r, policies p WHERE r.name = $1 AND p.name = $2`, rule, p.name); err != nil {
			return err
		}
	}
	return tx.Commit()
}
