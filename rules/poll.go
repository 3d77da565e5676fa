package rules

import (
	"context"
	"log/slog"
	"time"
)

// wakeup is a non-blocking signal that work may be due.
type wakeup chan struct{}

func newWakeup() wakeup { return make(wakeup, 1) }

// wake signals without blocking; signals that are not consumed yet merge.
func (w wakeup) wake() {
	select {
	case w <- struct{}{}:
	default:
	}
}

// poll runs step until it reports no more work (or fails), then waits for
// a wake-up, the interval or the end of ctx, and starts over.
func poll(ctx context.Context, interval time.Duration, w wakeup, log *slog.Logger, what string, step func() (more bool, err error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for {
			more, err := step()
			if err != nil {
				if ctx.Err() == nil {
					log.WarnContext(ctx, what, slog.Any("error", err))
				}
				break
			}
			if !more {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-w:
		case <-t.C:
		}
	}
}
