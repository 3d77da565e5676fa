package jsrt

import (
	"context"
	"time"

	"github.com/dop251/goja"
)

// bounds are the deadline of an outermost evaluation, shared by the
// policies it calls (ak_call_policy). The deadline becomes a context only
// when a host function needs one (a query, a DNS lookup): most policies
// never do, and a context with a timer per evaluation cost about half of
// a simple policy's evaluation.
type bounds struct {
	parent   context.Context
	deadline time.Time
	// cancelsQueries: the policy's queries run under its deadline (see
	// [rules.Scope.CancelsQueries]); otherwise under parent alone, as SQL
	// timeouts bound them.
	cancelsQueries bool
	ctx            context.Context
	cancel         context.CancelFunc
}

// context is parent, ended at the deadline with [ErrTimeout] as its cause.
func (b *bounds) context() context.Context {
	if b.ctx == nil {
		b.ctx, b.cancel = context.WithDeadlineCause(b.parent, b.deadline, ErrTimeout)
	}
	return b.ctx
}

// end is when the evaluation must stop: its deadline, or the parent's
// when that comes first. Host functions that cannot be interrupted (a
// regular expression's match) bound themselves by it.
func (b *bounds) end() time.Time {
	if d, ok := b.parent.Deadline(); ok && d.Before(b.deadline) {
		return d
	}
	return b.deadline
}

// queries is the context of the policy's queries.
func (b *bounds) queries() context.Context {
	if b.cancelsQueries {
		return b.context()
	}
	return b.parent
}

func (b *bounds) release() {
	if b.cancel != nil {
		b.cancel()
	}
}

// watchdog interrupts a runtime's outermost evaluation at its deadline.
// One timer per runtime serves all its evaluations.
type watchdog struct {
	timer *time.Timer
	fired chan struct{}
}

func newWatchdog(rt *goja.Runtime) *watchdog {
	w := &watchdog{fired: make(chan struct{}, 1)}
	w.timer = time.AfterFunc(time.Hour, func() {
		rt.Interrupt(ErrTimeout)
		w.fired <- struct{}{}
	})
	w.timer.Stop()
	return w
}

// arm starts the countdown of an evaluation.
func (w *watchdog) arm(d time.Duration) { w.timer.Reset(d) }

// disarm stops the countdown and reports whether it ran out, in which case
// its interrupt has landed on the runtime.
func (w *watchdog) disarm() bool {
	if w.timer.Stop() {
		return false
	}
	<-w.fired
	return true
}

// watchParent interrupts the runtime's evaluations once ctx ends (the
// batch is cancelled), until stop is called; stop leaves the runtime
// without a pending interrupt.
func (v *vm) watchParent(ctx context.Context) (stop func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	landed := make(chan struct{})
	stopWatch := context.AfterFunc(ctx, func() {
		v.rt.Interrupt(context.Cause(ctx))
		close(landed)
	})
	return func() {
		if !stopWatch() {
			<-landed
			v.rt.ClearInterrupt()
		}
	}
}
