package jsrt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/dop251/goja"
	"github.com/dop251/goja/parser"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/rules"
)

// vm is one warm runtime with the policy API installed.
type vm struct {
	pool *Pool
	rt   *goja.Runtime
	// fns caches the function object of each program on this runtime.
	fns map[*goja.Program]goja.Callable
	// cur is the evaluation in progress; host functions read it.
	cur *evaluation
	// protos holds the prototype (with save) of each model's objects.
	protos map[string]*goja.Object
	// queryMethods are the methods of query sets, by name.
	queryMethods map[string]queryMethod
	// cache holds the objects built for the last event evaluated here.
	cache eventCache
	// ipProto and netProto are the prototypes of ip_address and
	// ip_network objects.
	ipProto, netProto *goja.Object
	// watchdog enforces the timeouts of evaluations here.
	watchdog *watchdog
	// broken is set when a Go panic went through the runtime, which may
	// have left it half-way through a call: it is not used again.
	broken bool
	// rangeError is the runtime's own RangeError constructor, kept before
	// a policy can rebind the global (see [vm.newRangeError]).
	rangeError goja.Constructor
	// isArray is the runtime's Array.isArray.
	isArray goja.Callable
	// requestGlobal and contextGlobal are what the globals request and
	// context give: read-only accessors a policy cannot redefine (see
	// [vm.installRequestGlobals]), so that none can fix them for later
	// policies on the runtime.
	requestGlobal, contextGlobal goja.Value
	// textDepth is how deep the guarded array methods that make text are
	// in one another (see [vm.installBuiltinGuards]).
	textDepth int
}

// eventCache keeps the objects of one event, shared by the policies that
// evaluate it one after another (as authentik shares one request).
type eventCache struct {
	event   *events.Event
	rule    *rules.Rule
	user    *rules.User
	request *goja.Object
	// clientIP is ak_client_ip of clientIPOf, built on first use.
	clientIP   goja.Value
	clientIPOf *events.Event
}

// evaluation is the state of one policy run that host functions touch.
type evaluation struct {
	// bounds are the outermost evaluation's: host functions take their
	// contexts from there.
	bounds   *bounds
	req      *rules.PolicyRequest
	messages []string
	logs     []rules.LogLine
	// dbErr is a database error a host function met; it fails the policy.
	dbErr error
	// calleeOut is what the policy it last called (ak_call_policy)
	// returned, as a JavaScript value.
	calleeOut goja.Value
}

func newVM(p *Pool) *vm {
	rt := goja.New()
	rt.SetMaxCallStackSize(p.cfg.MaxCallStackSize)
	v := &vm{pool: p, rt: rt, fns: make(map[*goja.Program]goja.Callable), watchdog: newWatchdog(rt)}
	v.install()
	return v
}

func (v *vm) function(prog *goja.Program) (goja.Callable, error) {
	if fn, ok := v.fns[prog]; ok {
		return fn, nil
	}
	val, err := v.rt.RunProgram(prog)
	if err != nil {
		return nil, err
	}
	fn, ok := goja.AssertFunction(val)
	if !ok {
		return nil, errors.New("policy did not compile to a function")
	}
	if len(v.fns) > 4096 {
		clear(v.fns)
	}
	v.fns[prog] = fn
	return fn, nil
}

// evaluate runs one policy. The outermost evaluation on a runtime arms the
// timeout; nested ones (ak_call_policy) run under it. ctx is the batch's:
// the caller interrupts the runtime when it ends (see [vm.watchParent]).
func (v *vm) evaluate(ctx context.Context, prog *goja.Program, req *rules.PolicyRequest) (res rules.PolicyResult) {
	outer := v.cur == nil
	if outer {
		// Registered first, so that it runs last, once the deferred
		// restores below have run.
		defer v.recoverPanic(ctx, req.Policy.Name, &res)
	}
	if req.Event == nil {
		// A mapping of a notification whose event is gone.
		r := *req
		r.Event = &events.Event{}
		req = &r
	}
	var b *bounds
	if outer {
		timeout := req.Timeout
		if timeout <= 0 {
			timeout = v.pool.cfg.DefaultTimeout
		}
		b = &bounds{parent: ctx, deadline: time.Now().Add(timeout), cancelsQueries: req.Scope.CancelsQueries()}
		defer b.release()
		v.watchdog.arm(timeout)
		defer func() {
			if v.watchdog.disarm() {
				v.rt.ClearInterrupt()
				if ctx.Err() != nil {
					// The batch ended meanwhile: its interrupt, which
					// the clear may have erased, must stop what follows.
					v.rt.Interrupt(context.Cause(ctx))
				}
			}
		}()
	} else {
		b = v.cur.bounds
	}
	ev := &evaluation{bounds: b, req: req}
	prev := v.cur
	v.cur = ev
	prevRequest, prevContext := v.requestGlobal, v.contextGlobal
	defer func() {
		v.cur = prev
		v.requestGlobal, v.contextGlobal = prevRequest, prevContext
	}()

	// A mapping's globals are set with plain assignments, restored with
	// resetGlobal once the outermost evaluation ends, which undoes what a
	// policy made of them.
	for name, val := range req.Globals {
		prevVal := v.rt.Get(name)
		_ = v.rt.Set(name, v.toJS(val))
		defer func() {
			if outer {
				v.resetGlobal(name, prevVal)
			} else {
				_ = v.rt.Set(name, prevVal)
			}
		}()
	}
	plain := req.Context == nil && req.Globals == nil
	if !plain {
		// A nested call (or a mapping) has a request of its own: the
		// evaluations after it share the one they shared before.
		prevCache := v.cache
		defer func() { v.cache = prevCache }()
	}
	var rule *rules.Rule
	if req.Scope != nil {
		rule = req.Scope.Rule
	}
	// The policies of one rule share the request (as in authentik's policy
	// engine); another rule gets its own.
	if !plain || v.cache.event != req.Event || v.cache.rule != rule || v.cache.user != req.User || v.cache.request == nil {
		c := eventCache{event: req.Event, rule: rule, user: req.User, request: v.requestObject(req)}
		if !plain {
			c.event = nil // not shared with plain evaluations
		}
		v.cache = c
	}
	request := v.cache.request
	v.requestGlobal, v.contextGlobal = request, request.Get("context")
	if req.Globals != nil {
		v.shareGlobals(req, request)
	}

	fn, err := v.function(prog)
	var out goja.Value
	if err == nil {
		out, err = fn(goja.Undefined())
	}
	res.Messages = ev.messages
	res.Logs = ev.logs
	if ev.dbErr != nil && rules.Transient(ev.dbErr) {
		res.Retry = ev.dbErr
		if prev != nil {
			prev.dbErr = ev.dbErr // the transaction is the caller's too
		}
		return res
	}
	if ev.dbErr != nil && rules.TimedOut(ev.dbErr) {
		res.Err = &rules.PolicyError{Policy: req.Policy.Name, Kind: "timeout", Message: "policy timed out waiting for the database: " + ev.dbErr.Error()}
		if prev != nil {
			prev.dbErr = ev.dbErr
		}
		return res
	}
	if err == nil && ev.dbErr != nil {
		err = ev.dbErr
	}
	if prev != nil && ev.dbErr != nil {
		prev.dbErr = ev.dbErr // the transaction is the caller's too
	}
	if err != nil {
		res.Err = runtimeError(req.Policy.Name, err)
		if outer && !time.Now().Before(b.deadline) {
			res.Err = &rules.PolicyError{Policy: req.Policy.Name, Kind: "timeout", Message: "policy timed out"}
		}
		return res
	}
	if out != nil && !goja.IsUndefined(out) && !goja.IsNull(out) {
		if thenable(out) {
			res.Err = &rules.PolicyError{Policy: req.Policy.Name, Kind: "exception",
				Message: "TypeError: policy returned a Promise; policies run synchronously (return a value, not an async function's result or a then()-able)"}
			return res
		}
		raw, err := v.exportResult("policy result", out)
		if err != nil {
			res.Err = resultError(req.Policy.Name, err, outer && !time.Now().Before(b.deadline))
			return res
		}
		res.Raw = raw
		res.Passing = out.ToBoolean()
	}
	if prev != nil {
		prev.calleeOut = out // raw_result is the value itself, as in authentik
	}
	if req.Globals != nil {
		globals, err := v.exportGlobals(req.Globals)
		if err != nil {
			res.Err = resultError(req.Policy.Name, err, outer && !time.Now().Before(b.deadline))
			return res
		}
		res.Globals = globals
	}
	return res
}

// installRequestGlobals defines the globals request and context as
// accessors of requestGlobal and contextGlobal, before the shared globals
// are frozen (which makes them non-configurable): a policy can change the
// objects, not which objects they are.
func (v *vm) installRequestGlobals() {
	for name, field := range map[string]*goja.Value{"request": &v.requestGlobal, "context": &v.contextGlobal} {
		get := v.rt.ToValue(func(goja.FunctionCall) goja.Value {
			if *field == nil {
				return goja.Undefined()
			}
			return *field
		})
		if err := v.rt.GlobalObject().DefineAccessorProperty(name, get, nil, goja.FLAG_TRUE, goja.FLAG_TRUE); err != nil {
			panic(fmt.Sprintf("jsrt: define %s: %v", name, err))
		}
	}
}

// resetGlobal gives the per-evaluation global name back the value val it
// had before the outermost evaluation, as a plain data property (or none,
// as before the first): a policy may have replaced it with one of its own
// (an accessor that answers what it likes), which this removes; one it
// made non-configurable cannot be, and the runtime is then marked broken,
// to be replaced before another policy runs on it.
func (v *vm) resetGlobal(name string, val goja.Value) {
	global := v.rt.GlobalObject()
	var err error
	if val == nil || goja.IsUndefined(val) {
		err = global.Delete(name) // the usual case, and the cheaper
	} else {
		err = global.DefineDataProperty(name, val, goja.FLAG_TRUE, goja.FLAG_TRUE, goja.FLAG_TRUE)
	}
	if err != nil {
		v.broken = true
	}
}

// resultError is the error of a policy whose result could not be
// converted; late: the policy's time ran out.
func resultError(policy string, err error, late bool) *rules.PolicyError {
	if late {
		return &rules.PolicyError{Policy: policy, Kind: "timeout", Message: "policy timed out"}
	}
	return &rules.PolicyError{Policy: policy, Kind: "exception", Message: err.Error()}
}

// thenable reports whether val is a Promise or has a then() method: what
// an async function or a promise chain returns, whose outcome a policy
// (which runs synchronously) cannot wait for.
func thenable(val goja.Value) bool {
	obj, ok := val.(*goja.Object)
	if !ok {
		return false
	}
	if obj.ExportType() == typePromise {
		return true
	}
	_, ok = goja.AssertFunction(obj.Get("then"))
	return ok
}

// recoverPanic turns a panic out of an outermost evaluation into the
// policy's error: a Go panic in a helper, or an exception thrown while the
// result is read (a getter of the returned object). It fails the policy,
// not the worker. The runtime, which the panic may have left half-way
// through a call, is marked broken and replaced (see [Pool.renew]). A
// nested evaluation (ak_call_policy) lets a panic go on to its caller,
// whose runtime state it shares.
func (v *vm) recoverPanic(ctx context.Context, policy string, res *rules.PolicyResult) {
	r := recover()
	if r == nil {
		return
	}
	v.broken = true
	if exc, ok := r.(*goja.Exception); ok {
		*res = rules.PolicyResult{Err: runtimeError(policy, exc)}
		return
	}
	v.pool.cfg.Logger.ErrorContext(ctx, "policy helper panicked; the runtime is replaced",
		slog.String("policy", policy), slog.Any("panic", r), slog.String("stack", string(debug.Stack())))
	*res = rules.PolicyResult{Err: runtimeError(policy, fmt.Errorf("internal error in a helper: %v", r))}
}

// shareGlobals makes a global that is also a key of request.context (a
// mapping's notification) one object in both places, as in authentik.
func (v *vm) shareGlobals(req *rules.PolicyRequest, request *goja.Object) {
	c, ok := request.Get("context").(*goja.Object)
	if !ok {
		return
	}
	for name, val := range req.Globals {
		if cv, ok := req.Context[name]; ok && sameMap(cv, val) {
			_ = c.Set(name, v.rt.Get(name))
		}
	}
}

// sameMap reports whether a and b are the same map[string]any.
func sameMap(a, b any) bool {
	ma, okA := a.(map[string]any)
	mb, okB := b.(map[string]any)
	return okA && okB && reflect.ValueOf(ma).UnsafePointer() == reflect.ValueOf(mb).UnsafePointer()
}

// exportGlobals exports the current values of the globals named in
// globals, as the expression left them.
func (v *vm) exportGlobals(globals map[string]any) (map[string]any, error) {
	out := make(map[string]any, len(globals))
	for name := range globals {
		val := v.rt.Get(name)
		if val == nil || goja.IsUndefined(val) {
			out[name] = nil
			continue
		}
		x, err := (&exporter{what: "global " + name, deadline: v.deadline()}).run(val)
		if err != nil {
			return nil, err
		}
		out[name] = x
	}
	return out, nil
}

var parsePosition = regexp.MustCompile(`Line (\d+):(\d+) (.*?)(?: \(and \d+ more errors?\))?$`)

// syntaxError turns a compile error into a PolicyError with the line and
// column within the expression.
func syntaxError(name string, err error) *rules.PolicyError {
	pe := &rules.PolicyError{Policy: name, Kind: "syntax", Message: err.Error()}
	var (
		se   *goja.CompilerSyntaxError
		list parser.ErrorList
	)
	switch {
	case errors.As(err, &list) && len(list) > 0:
		pe.Message = "SyntaxError: " + list[0].Message
		pe.Line, pe.Column = list[0].Position.Line, list[0].Position.Column
	case errors.As(err, &se):
		pe.Message = "SyntaxError: " + se.Message
		if se.File != nil {
			pos := se.File.Position(se.Offset)
			pe.Line, pe.Column = pos.Line, pos.Column
		} else if m := parsePosition.FindStringSubmatch(se.Message); m != nil {
			// Parse errors arrive as text: "<name>: Line L:C <message>".
			pe.Line, _ = strconv.Atoi(m[1])
			pe.Column, _ = strconv.Atoi(m[2])
			pe.Message = "SyntaxError: " + m[3]
		}
	}
	if pe.Line == 1 {
		pe.Column = max(pe.Column-len(functionPrefix), 1)
	}
	return pe
}

// runtimeError turns an error from running a policy into a PolicyError.
func runtimeError(name string, err error) *rules.PolicyError {
	var (
		exc       *goja.Exception
		interrupt *goja.InterruptedError
		overflow  *goja.StackOverflowError
	)
	switch {
	case errors.As(err, &interrupt):
		cause := interrupt.Unwrap()
		if errors.Is(cause, ErrTimeout) {
			return &rules.PolicyError{Policy: name, Kind: "timeout", Message: "policy timed out"}
		}
		return &rules.PolicyError{Policy: name, Kind: "timeout", Message: fmt.Sprintf("policy interrupted: %v", interrupt.Value())}
	case errors.As(err, &overflow):
		return &rules.PolicyError{Policy: name, Kind: "stack_overflow", Message: "maximum call stack size exceeded"}
	case errors.As(err, &exc):
		pe := &rules.PolicyError{Policy: name, Kind: "exception", Message: exceptionMessage(exc), Stack: exc.String()}
		for _, f := range exc.Stack() {
			if f.SrcName() == name {
				pos := f.Position()
				pe.Line, pe.Column = pos.Line, pos.Column
				if pe.Line == 1 {
					pe.Column = max(pe.Column-len(functionPrefix), 1)
				}
				break
			}
		}
		return pe
	default:
		return &rules.PolicyError{Policy: name, Kind: "exception", Message: err.Error()}
	}
}

func exceptionMessage(exc *goja.Exception) string {
	if val := exc.Value(); val != nil {
		if obj, ok := val.(*goja.Object); ok {
			if m := obj.Get("message"); m != nil && !goja.IsUndefined(m) {
				name := "Error"
				if n := obj.Get("name"); n != nil && !goja.IsUndefined(n) {
					name = n.String()
				}
				return name + ": " + m.String()
			}
		}
		return "Uncaught " + val.String()
	}
	return strings.TrimSpace(exc.Error())
}
