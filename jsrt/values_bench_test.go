package jsrt_test

import (
	"log/slog"
	"testing"

	"github.com/heraldhq/herald/jsrt"
)

// benchmarkPolicy evaluates expr on the login event, which must pass.
func benchmarkPolicy(b *testing.B, expr string) {
	pool := jsrt.New(jsrt.Config{Size: 1, Logger: slog.New(slog.DiscardHandler)})
	req := request(b.Name(), expr)
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		if res := pool.Evaluate(ctx, req); res.Err != nil || !res.Passing {
			b.Fatalf("unexpected result: %+v", res)
		}
	}
}

// A result with the event's data, model objects and arrays, converted for
// the policy_execution event (the path a logged policy takes).
func BenchmarkEvaluateObjectResult(b *testing.B) {
	benchmarkPolicy(b, `const e = request.context.event;
return {action: e.action, user: request.user, context: e.context, list: [1, "two", {three: 3}], at: new Date(0)};`)
}

// ak_logger with fields.
func BenchmarkEvaluateLogFields(b *testing.B) {
	benchmarkPolicy(b, `ak_logger.info("login", {user: request.context.event.user, geo: request.context.event.context.geo, n: 1});
return true;`)
}

// JSON.stringify of the event's context and of a plain value.
func BenchmarkEvaluateJSONStringify(b *testing.B) {
	benchmarkPolicy(b, `const s = JSON.stringify(request.context.event.context) + JSON.stringify({a: [1, 2, 3], b: {c: "d", e: [{f: 1}, {g: 2}]}});
return s.length > 0;`)
}

// JSON.stringify of a larger plain value (1,000 objects).
func BenchmarkEvaluateJSONStringifyLarge(b *testing.B) {
	benchmarkPolicy(b, `const a = [];
for (let i = 0; i < 1000; i++) a.push({i, name: "user" + i, tags: ["a", "b"]});
return JSON.stringify(a).length > 0;`)
}
