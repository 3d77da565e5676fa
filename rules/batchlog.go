package rules

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// BatchLogger returns l with records logged while a batch of events is
// processed held until the batch ends: they are written when it commits or
// finally fails, and dropped when it runs again (see [Engine.HandleEvents]),
// whose second run logs them anew. So a batch that runs twice logs each
// rule firing and each ak_logger line once. Records logged outside a batch
// are written at once. The engine holds its own records; an [Evaluator]'s
// logger needs this wrapper for its policies' log lines.
func BatchLogger(l *slog.Logger) *slog.Logger {
	if _, ok := l.Handler().(*batchLogHandler); ok {
		return l
	}
	return slog.New(&batchLogHandler{h: l.Handler()})
}

// maxHeldRecords bounds the records a batch holds, so that a policy
// logging in a loop cannot grow memory without bound: past it, records are
// dropped, and a warning says how many when the batch ends.
const maxHeldRecords = 10000

type batchLogHandler struct{ h slog.Handler }

func (b *batchLogHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return b.h.Enabled(ctx, level)
}

func (b *batchLogHandler) Handle(ctx context.Context, r slog.Record) error {
	if held, ok := ctx.Value(batchLogsKey{}).(*batchLogs); ok {
		held.hold(ctx, b.h, r)
		return nil
	}
	return b.h.Handle(ctx, r)
}

func (b *batchLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &batchLogHandler{h: b.h.WithAttrs(attrs)}
}

func (b *batchLogHandler) WithGroup(name string) slog.Handler {
	return &batchLogHandler{h: b.h.WithGroup(name)}
}

type batchLogsKey struct{}

// batchLogs are the records held for one batch, with the handler and the
// context each was logged with; dropped counts those past maxHeldRecords.
type batchLogs struct {
	mu      sync.Mutex
	records []heldRecord
	dropped int
	// last is the handler of the latest record, for the dropped warning.
	last slog.Handler
}

type heldRecord struct {
	ctx context.Context
	h   slog.Handler
	r   slog.Record
}

func withBatchLogs(ctx context.Context, logs *batchLogs) context.Context {
	return context.WithValue(ctx, batchLogsKey{}, logs)
}

func (l *batchLogs) hold(ctx context.Context, h slog.Handler, r slog.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.last = h
	if len(l.records) >= maxHeldRecords {
		l.dropped++
		return
	}
	l.records = append(l.records, heldRecord{ctx: ctx, h: h, r: r.Clone()})
}

// write writes the held records, with their original times and contexts,
// and forgets them.
func (l *batchLogs) write(ctx context.Context) {
	l.mu.Lock()
	records, dropped, last := l.records, l.dropped, l.last
	l.records, l.dropped = nil, 0
	l.mu.Unlock()
	for _, hr := range records {
		_ = hr.h.Handle(hr.ctx, hr.r)
	}
	if dropped > 0 {
		r := slog.NewRecord(time.Now(), slog.LevelWarn, "log records of a batch dropped", 0)
		r.AddAttrs(slog.Int("dropped", dropped), slog.Int("limit", maxHeldRecords))
		_ = last.Handle(ctx, r)
	}
}

// drop forgets the held records.
func (l *batchLogs) drop() {
	l.mu.Lock()
	l.records, l.dropped = nil, 0
	l.mu.Unlock()
}
