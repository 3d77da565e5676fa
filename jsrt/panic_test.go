package jsrt

import (
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/rules"
)

func req(expr string) *rules.PolicyRequest {
	return &rules.PolicyRequest{
		Policy:  &rules.Policy{Name: "p", Kind: rules.KindExpression, Expression: expr},
		Event:   &events.Event{PK: "3f0a8f0e-3a4e-4f6f-9a55-0c9f7f3b2a11", Action: "login", Created: time.Now()},
		Timeout: 5 * time.Second,
	}
}

// A Go panic in a helper fails the policy instead of the worker, even when
// the policy catches exceptions or the panic comes from a policy it calls,
// and the runtime it went through is replaced: the pool keeps its size and
// later evaluations, pinned or not, run on sound runtimes.
func TestHelperPanicFailsThePolicyAndReplacesTheRuntime(t *testing.T) {
	t.Parallel()
	p := New(Config{Size: 1, Logger: slog.New(slog.DiscardHandler)})
	broken := <-p.vms
	require.NoError(t, broken.rt.Set("boom", func() { panic("boom") }))
	p.vms <- broken

	ctx, release := p.Bind(t.Context())
	res := p.Evaluate(ctx, req(`try { boom(); } catch (e) { return "caught"; } return "went on";`))
	require.NotNil(t, res.Err)
	require.Contains(t, res.Err.Error(), "internal error in a helper: boom")
	require.False(t, res.Passing)

	res = p.Evaluate(ctx, req(`return typeof boom === "undefined";`))
	require.Nil(t, res.Err)
	require.True(t, res.Passing, "the pinned runtime was replaced")
	release()

	require.Len(t, p.vms, 1, "the pool keeps its size")
	v := <-p.vms
	require.NotSame(t, broken, v)
	require.NoError(t, v.rt.Set("boom", func() { panic("boom") }))
	p.vms <- v
	res = p.Evaluate(t.Context(), req(`return [1].map(() => boom()).length === 1;`))
	require.NotNil(t, res.Err, "a panic under a JavaScript callback")
	require.Len(t, p.vms, 1)
	v2 := <-p.vms
	require.NotSame(t, v, v2, "the runtime of an unpinned evaluation is replaced too")
	p.vms <- v2
	res = p.Evaluate(t.Context(), req(`return true;`))
	require.Nil(t, res.Err)
	require.True(t, res.Passing)
}

// An exception or a helper's panic while the policy's result is read (a
// getter of the returned object) fails the policy too, and the runtime is
// replaced.
func TestPanicWhileTheResultIsReadFailsThePolicy(t *testing.T) {
	t.Parallel()
	p := New(Config{Size: 1, Logger: slog.New(slog.DiscardHandler)})
	for _, expr := range []string{`return {get x() { throw new Error("nope"); }};`, `return {get x() { return boom(); }};`} {
		v := <-p.vms
		require.NoError(t, v.rt.Set("boom", func() { panic("boom") }))
		p.vms <- v
		res := p.Evaluate(t.Context(), req(expr))
		require.NotNil(t, res.Err, expr)
		require.False(t, res.Passing)
		next := <-p.vms
		require.NotSame(t, v, next, "the runtime is replaced")
		p.vms <- next
	}
	res := p.Evaluate(t.Context(), req(`return true;`))
	require.Nil(t, res.Err)
	require.True(t, res.Passing)
}

// A mapping of a notification whose event is gone runs with an empty event.
func TestEvaluateWithoutAnEvent(t *testing.T) {
	t.Parallel()
	p := New(Config{Size: 1, Logger: slog.New(slog.DiscardHandler)})
	r := req(`return request.context.event.action === "" && String(ak_client_ip) === "255.255.255.255";`)
	r.Event = nil
	res := p.Evaluate(t.Context(), r)
	require.Nil(t, res.Err)
	require.True(t, res.Passing)
}
