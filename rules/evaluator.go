package rules

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lib/pq"

	"github.com/heraldhq/herald/events"
)

// Evaluator runs expression policies. Package jsrt implements it.
// Implementations are safe for concurrent use.
type Evaluator interface {
	// Evaluate runs req.Policy's expression. It never returns a Go error:
	// a policy that fails to compile, throws or times out is reported in
	// PolicyResult.Err.
	Evaluate(ctx context.Context, req *PolicyRequest) PolicyResult
	// Check compiles p's expression and reports a [*PolicyError] if it
	// does not compile.
	Check(p *Policy) error
}

// Binder is implemented by evaluators that can dedicate a runtime to a
// caller: the engine binds one for each batch, so that the policies of an
// event run on one runtime and share what it built for the event.
type Binder interface {
	Bind(ctx context.Context) (context.Context, func())
}

// PolicyRequest is one evaluation of a policy for an event.
type PolicyRequest struct {
	Policy *Policy
	Event  *events.Event
	// User is the users row of the event's user, or nil for the anonymous user.
	User *User
	// Timeout bounds the evaluation; the runtime is interrupted after it.
	Timeout time.Duration
	// Context holds extra keys of request.context beside "event"
	// (ak_call_policy's kwargs).
	Context map[string]any
	// Scope is what the policy may touch; nil means it runs without side
	// effects (dry runs and unit tests): model saves, created events and
	// emails then throw.
	Scope *Scope
	// Depth counts nested ak_call_policy calls.
	Depth int
	// Globals are extra global variables for this evaluation (a webhook
	// mapping's notification and user).
	Globals map[string]any
}

// LogLine is one ak_logger call of a policy.
type LogLine struct {
	Level   string         `json:"level"`
	Message string         `json:"message"`
	Fields  map[string]any `json:"fields,omitempty"`
}

// PolicyResult is the outcome of one evaluation, before the binding's
// negate and failure_result are applied.
type PolicyResult struct {
	Passing  bool
	Messages []string
	// Raw is the expression's return value, exported from JavaScript.
	Raw any
	// Globals are the request's Globals as the expression left them,
	// exported from JavaScript (a local transport's mapping changes the
	// notification). Set only when the expression ran to completion.
	Globals map[string]any
	Logs    []LogLine
	// Err is set when the policy did not run to completion.
	Err *PolicyError
	// Retry is set when the policy met a transient database conflict (a
	// deadlock, a lock timeout, a concurrent change of an object it saves):
	// the event must be processed again, not recorded as failed.
	Retry error
}

// ErrConflict reports that an object a policy saves was changed by another
// transaction since the policy read it.
var ErrConflict = errors.New("rules: object changed concurrently")

// Transient reports whether err is a database conflict that processing the
// event again can resolve.
func Transient(err error) bool {
	if errors.Is(err, ErrConflict) {
		return true
	}
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		switch pqErr.Code {
		case "40001", "40P01": // serialization failure, deadlock
			return true
		}
	}
	return false
}

// TimedOut reports whether err is PostgreSQL ending a policy's query at the
// policy's timeout (lock_timeout or statement_timeout).
func TimedOut(err error) bool {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return pqErr.Code == "55P03" || pqErr.Code == "57014"
	}
	return false
}

// PolicyError reports a policy that failed to compile, threw, ran past its
// timeout or overflowed its call stack. It is deterministic for a given
// event, so it is recorded (a policy_exception event), never retried.
type PolicyError struct {
	Policy string
	// Kind is "syntax", "exception", "timeout" or "stack_overflow".
	Kind string
	// Line and Column locate the error within the expression (1-based; 0
	// when unknown).
	Line, Column int
	Message      string
	// Stack is the JavaScript stack, when there is one.
	Stack string
}

func (e *PolicyError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("policy %q: %s at line %d, column %d", e.Policy, e.Message, e.Line, e.Column)
	}
	return fmt.Sprintf("policy %q: %s", e.Policy, e.Message)
}
