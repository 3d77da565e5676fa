package jsrt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/dop251/goja"

	"github.com/heraldhq/herald/rules"
)

// ErrTimeout is the cause with which a policy running past its timeout is
// interrupted.
var ErrTimeout = errors.New("jsrt: policy timed out")

// Config configures a [Pool]. The zero value is usable.
type Config struct {
	// Size is the number of warm runtimes, which is also the most policies
	// evaluated at once. Defaults to GOMAXPROCS.
	Size int
	// MaxCallStackSize bounds JavaScript recursion. Defaults to 256.
	MaxCallStackSize int
	// DefaultTimeout applies when a request has none. Defaults to 30s.
	DefaultTimeout time.Duration
	// Logger receives ak_logger lines; those of a policy evaluated for an
	// engine's batch are held until the batch ends (see [rules.BatchLogger]).
	// Defaults to slog.Default().
	Logger *slog.Logger
	// Resolver answers resolve_dns and reverse_dns. Defaults to
	// net.DefaultResolver.
	Resolver *net.Resolver
}

func (c Config) withDefaults() Config {
	if c.Size <= 0 {
		c.Size = runtime.GOMAXPROCS(0)
	}
	if c.MaxCallStackSize <= 0 {
		c.MaxCallStackSize = 256
	}
	if c.DefaultTimeout <= 0 {
		c.DefaultTimeout = 30 * time.Second
	}
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Pool evaluates policies on a fixed set of warm goja runtimes. It is safe
// for concurrent use; each runtime is used by one goroutine at a time.
type Pool struct {
	cfg      Config
	log      *slog.Logger
	vms      chan *vm
	programs sync.Map // programKey -> *compiled
}

var _ rules.Evaluator = (*Pool)(nil)

// New returns a Pool with cfg.Size runtimes ready.
func New(cfg Config) *Pool {
	cfg = cfg.withDefaults()
	p := &Pool{cfg: cfg, log: rules.BatchLogger(cfg.Logger), vms: make(chan *vm, cfg.Size)}
	for range cfg.Size {
		p.vms <- newVM(p)
	}
	return p
}

type compiled struct {
	prog *goja.Program
	err  *rules.PolicyError
}

// functionPrefix wraps an expression so that it is the body of a function.
// It sits on the expression's first line, so line numbers are the
// expression's own.
const functionPrefix = "(function () {"

// programKey identifies a version of a policy: its name and expression.
type programKey struct{ name, expression string }

// program returns the compiled form of a policy, compiling it on first use.
func (p *Pool) program(name, expression string) *compiled {
	key := programKey{name, expression}
	if c, ok := p.programs.Load(key); ok {
		return c.(*compiled)
	}
	prog, err := goja.Compile(name, functionPrefix+expression+"\n})", true)
	c := &compiled{prog: prog}
	if strings.TrimSpace(expression) == "" {
		// It would never pass; most likely an event matcher written
		// without its kind.
		c.prog, c.err = nil, &rules.PolicyError{Policy: name, Kind: "syntax",
			Message: "the expression is empty (an event matcher needs kind = 'event_matcher')"}
	} else if err != nil {
		c.err = syntaxError(name, err)
	} else if _, err := wrappedFunction(expression); err != nil {
		// "}); (function () {..." would run code outside the policy's function.
		c.prog, c.err = nil, &rules.PolicyError{Policy: name, Kind: "syntax", Message: err.Error()}
	}
	actual, _ := p.programs.LoadOrStore(key, c)
	return actual.(*compiled)
}

// Check implements [rules.Evaluator].
func (p *Pool) Check(pol *rules.Policy) error {
	if c := p.program(pol.Name, pol.Expression); c.err != nil {
		return c.err
	}
	return nil
}

// Forget drops compiled programs that are no longer used by any policy in
// rs, so that edited policies do not accumulate.
func (p *Pool) Forget(rs *rules.RuleSet) {
	keep := make(map[programKey]bool, len(rs.Policies))
	for _, pol := range rs.Policies {
		keep[programKey{pol.Name, pol.Expression}] = true
	}
	p.programs.Range(func(k, _ any) bool {
		if !keep[k.(programKey)] {
			p.programs.Delete(k)
		}
		return true
	})
}

// Evaluate implements [rules.Evaluator].
func (p *Pool) Evaluate(ctx context.Context, req *rules.PolicyRequest) rules.PolicyResult {
	c := p.program(req.Policy.Name, req.Policy.Expression)
	if c.err != nil {
		return rules.PolicyResult{Err: c.err}
	}
	if pn, ok := ctx.Value(pinKey{p}).(*pin); ok {
		if pn.v.broken {
			pn.stop()
			pn.v = p.renew(pn.v)
			pn.stop = pn.v.watchParent(pn.ctx)
		}
		return pn.v.evaluate(ctx, c.prog, req)
	}
	var v *vm
	select {
	case v = <-p.vms:
	case <-ctx.Done():
		return rules.PolicyResult{Err: &rules.PolicyError{Policy: req.Policy.Name, Kind: "timeout",
			Message: fmt.Sprintf("no runtime free: %v", context.Cause(ctx))}}
	}
	stop := v.watchParent(ctx)
	defer func() {
		stop()
		p.vms <- p.renew(v)
	}()
	return v.evaluate(ctx, c.prog, req)
}

// renew is v, or a new runtime in its place when v is broken.
func (p *Pool) renew(v *vm) *vm {
	if v.broken {
		v.watchdog.timer.Stop()
		return newVM(p)
	}
	return v
}

type pinKey struct{ p *Pool }

// pin is the runtime dedicated to a caller by [Pool.Bind], and what stops
// it from watching the caller's context.
type pin struct {
	ctx  context.Context
	v    *vm
	stop func()
}

var _ rules.Binder = (*Pool)(nil)

// Bind implements [rules.Binder]: it dedicates one runtime to the caller
// until release is called. Evaluations with the returned context run on
// it, one after another, and share the per-event objects (request,
// context, ak_client_ip) of consecutive policies of the same event. If
// no runtime is free before ctx ends, evaluations acquire one each.
func (p *Pool) Bind(ctx context.Context) (context.Context, func()) {
	select {
	case v := <-p.vms:
		pn := &pin{ctx: ctx, v: v, stop: v.watchParent(ctx)}
		return context.WithValue(ctx, pinKey{p}, pn), func() {
			pn.stop()
			pn.v.cache = eventCache{}
			p.vms <- p.renew(pn.v)
		}
	case <-ctx.Done():
		return ctx, func() {}
	}
}
