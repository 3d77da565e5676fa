package jsrt_test

// Tests of how values leave JavaScript (a policy's result, log fields,
// filters and kwargs) and of JSON.stringify: depth, size and sharing are
// bounded, so that no value a policy makes can crash the worker or keep it
// busy past the policy's timeout.

import (
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
)

// scopeWith is a scope whose rule set holds pols, for ak_call_policy.
func scopeWith(pols ...*rules.Policy) *rules.Scope {
	m := map[string]*rules.Policy{}
	for _, p := range pols {
		m[p.Name] = p
	}
	return &rules.Scope{Rules: &rules.RuleSet{Policies: m}}
}

// deep builds a value nested n levels deep around the object o.
func deep(n int, wrap string) string {
	return "let o = {}; for (let i = 0; i < " + strconv.Itoa(n) + "; i++) o = " + wrap + "; "
}

// A deeply nested value must never reach goja's Export, whose recursion
// overflows the Go stack (a fatal error, not a panic): a policy's result,
// log fields, filters, kwargs and JSON.stringify each end with a result or
// an error. Run in a child process with a small stack, so a regression
// fails this test instead of killing the test binary.
func TestDeeplyNestedValuesDoNotCrash(t *testing.T) {
	t.Parallel()
	inChildProcess(t, func(t *testing.T) {
		pool := newPool(t, jsrt.Config{Size: 1})
		const n = 1_000_000
		run := func(name, expr string) rules.PolicyResult {
			req := request(name, expr)
			req.Timeout = time.Minute
			req.User = &rules.User{ID: 12, Username: "jane"}
			req.Scope = scopeWith(&rules.Policy{Name: "callee", Kind: rules.KindExpression, Expression: `return true;`})
			start := time.Now()
			res := evaluate(t, pool, req)
			t.Logf("%s: %v, err %v", name, time.Since(start), res.Err)
			return res
		}

		// The result is cut at the depth limit, as before.
		res := run("result", deep(n, "{o}")+`return o;`)
		require.Nil(t, res.Err)
		require.True(t, res.Passing)
		x := res.Raw
		for range 32 {
			x = x.(map[string]any)["o"]
		}
		require.Equal(t, "[nested too deep]", x.(map[string]any)["o"])

		res = run("log", deep(n, "[o]")+`ak_logger.info("x", {o}); return true;`)
		require.Nil(t, res.Err)
		require.Len(t, res.Logs, 1)

		res = run("stringify", deep(n, "{o}")+`return JSON.stringify(o).length;`)
		require.NotNil(t, res.Err)
		require.Contains(t, res.Err.Message, "RangeError: JSON.stringify: the value is nested deeper than")

		res = run("stringify-replacer", deep(n, "{o}")+`return JSON.stringify(o, (k, v) => v).length;`)
		require.NotNil(t, res.Err)
		require.Contains(t, res.Err.Message, "RangeError: JSON.stringify")

		// A toJSON that returns the deep value is seen too.
		res = run("stringify-tojson", deep(n, "{o}")+`return JSON.stringify({toJSON: () => o}).length;`)
		require.NotNil(t, res.Err)
		require.Contains(t, res.Err.Message, "RangeError: JSON.stringify")

		// Strict conversions refuse a value nested too deep.
		res = run("filter", deep(n, "{o}")+`return User.objects.filter({username: o});`)
		require.NotNil(t, res.Err)
		require.Contains(t, res.Err.Message, "RangeError: User.objects.filter: username.o.o")
		require.Contains(t, res.Err.Message, "is nested deeper than 32 levels")

		res = run("kwargs", deep(n, "{o}")+`return ak_call_policy("callee", {o});`)
		require.NotNil(t, res.Err)
		require.Contains(t, res.Err.Message, "RangeError: ak_call_policy kwargs: o.o.o")

		// A user object with a deep value in a field of its short form.
		res = run("short", deep(n, "{o}")+`const u = request.user; u.username = o; return [u];`)
		require.Nil(t, res.Err)
		require.Equal(t, int64(12), res.Raw.([]any)[0].(map[string]any)["pk"])
	})
}

// As TestDeeplyNestedValuesDoNotCrash, with Go's default stack (the
// worker's) and a deeper value: the conversion stops at the depth limit
// at once.
func TestDeeplyNestedResultWithDefaultStack(t *testing.T) {
	t.Parallel()
	if raceEnabled {
		t.Skip("building the value takes minutes under the race detector; TestDeeplyNestedValuesDoNotCrash covers this with a small stack")
	}
	const env = "HERALD_VALUES_CHILD"
	if os.Getenv(env) != t.Name() {
		testinfra.RunInChild(t, env+"="+t.Name())
		return
	}
	pool := newPool(t, jsrt.Config{Size: 1})
	req := request("deep-result", deep(4_000_000, "{o}")+`return o;`)
	req.Timeout = time.Minute
	res := evaluate(t, pool, req)
	require.Nil(t, res.Err)
	require.True(t, res.Passing)
}

// Values that share sub-objects, and cycles with several edges, are walked
// within a budget: the conversion ends quickly, with an error when the
// value, expanded as JSON would, is too large.
func TestSharedSubobjectsAndCyclesAreBounded(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	run := func(name, expr string) rules.PolicyResult {
		t.Helper()
		req := request(name, expr)
		req.Timeout = 100 * time.Millisecond
		start := time.Now()
		res := evaluate(t, pool, req)
		took := time.Since(start)
		t.Logf("%s: %v, err %v", name, took, res.Err)
		require.Less(t, took, time.Second, "%s: a 100ms policy ran past its timeout in Go", name)
		return res
	}

	// The conversion ends at the policy's deadline, or past maxDataNodes.
	res := run("dag-result", `let o = {}; for (let i = 0; i < 21; i++) o = {a: o, b: o}; return o;`)
	require.NotNil(t, res.Err)
	if res.Err.Kind != "timeout" {
		require.Contains(t, res.Err.Message, "RangeError: policy result: too large (more than 200000 values)")
	}
	req := request("dag-result-long", `let o = {}; for (let i = 0; i < 21; i++) o = {a: o, b: o}; return o;`)
	req.Timeout = time.Minute
	res = evaluate(t, pool, req)
	require.NotNil(t, res.Err)
	require.Equal(t, "exception", res.Err.Kind)
	require.Contains(t, res.Err.Message, "RangeError: policy result: too large (more than 200000 values)")

	// (The walk may end past the 100ms: then the policy times out.)
	res = run("dag-log", `let o = {}; for (let i = 0; i < 40; i++) o = {a: o, b: o}; ak_logger.info("x", {o}); return true;`)
	if res.Err != nil {
		require.Equal(t, "timeout", res.Err.Kind)
	}

	// JSON.stringify ends at the policy's deadline, or past maxJSONValues.
	res = run("dag-stringify", `let o = {}; for (let i = 0; i < 40; i++) o = {a: o, b: o}; return JSON.stringify(o).length;`)
	require.NotNil(t, res.Err)
	require.Equal(t, "timeout", res.Err.Kind)
	req = request("dag-stringify-long", `let o = {}; for (let i = 0; i < 40; i++) o = {a: o, b: o}; return JSON.stringify(o).length;`)
	req.Timeout = time.Minute
	res = evaluate(t, pool, req)
	require.NotNil(t, res.Err)
	require.Contains(t, res.Err.Message, "RangeError: JSON.stringify: the value is too large (more than 1000000 values)")

	// A shared sub-object that stays small is converted in full.
	res = run("dag-small", `const s = {v: 1}; return {a: s, b: [s, s]};`)
	require.Nil(t, res.Err)
	require.Equal(t, map[string]any{"a": map[string]any{"v": int64(1)}, "b": []any{map[string]any{"v": int64(1)}, map[string]any{"v": int64(1)}}}, res.Raw)

	// A cycle is cut where it closes, with the marker that the depth
	// limit put there before; one edge or two.
	res = run("cycle2-log", `const o = {name: "loop"}; o.a = o; o.b = o; ak_logger.info("x", {o}); return o;`)
	require.Nil(t, res.Err)
	cut := map[string]any{"name": "loop", "a": "[nested too deep]", "b": "[nested too deep]"}
	require.Equal(t, cut, res.Raw)
	require.Equal(t, map[string]any{"o": cut}, res.Logs[0].Fields)

	res = run("cycle1", `const o = {name: "loop"}; o.self = [o]; return o;`)
	require.Nil(t, res.Err)
	require.Equal(t, map[string]any{"name": "loop", "self": []any{"[nested too deep]"}}, res.Raw)

	// Text is budgeted too (with a timeout that leaves the budget to act,
	// also under the race detector).
	req = request("text", `const s = "x".repeat(1 << 20); return Array(20).fill(s);`)
	req.Timeout = time.Minute
	res = evaluate(t, pool, req)
	require.NotNil(t, res.Err)
	require.Contains(t, res.Err.Message, "RangeError: policy result: too large (more than 16 MiB of text)")

	// A sparse array as long as an array can be.
	req = request("sparse", `const a = [1]; a.length = 2 ** 32 - 1; return {a};`)
	req.Timeout = time.Minute
	res = evaluate(t, pool, req)
	require.NotNil(t, res.Err)
	require.Contains(t, res.Err.Message, "RangeError: policy result: too large (an array of 4294967295 elements")
}

// Growing an array of the event cannot allocate without bound: past
// 65,536 elements (or its own length) it throws, where it used to allocate
// every slot at once (1e8 slots: 1.7 GB).
func TestEventArrayGrowthIsBounded(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	run := func(expr string) rules.PolicyResult {
		t.Helper()
		req := request(t.Name(), expr)
		req.Event.Context["list"] = []any{int64(1), int64(2)}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		res := evaluate(t, pool, req)
		runtime.ReadMemStats(&after)
		require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(50<<20), "%s allocated more than 50 MB", expr)
		return res
	}
	for _, expr := range []string{
		`const a = request.context.event.context.list; a.length = 1e8; return a.length;`,
		`const a = request.context.event.context.list; a[1e8] = 1; return a.length;`,
		`const a = request.context.event.context.list; a.length = 2 ** 31; return a.length;`,
	} {
		res := run(expr)
		require.NotNil(t, res.Err, expr)
		require.Contains(t, res.Err.Message, "RangeError: an array of the event cannot grow to", expr)
		require.Contains(t, res.Err.Message, "[...array]", expr)
	}

	// Growing within the bound works as before, and a copy grows freely.
	res := run(`const a = request.context.event.context.list; a.length = 4; a.push(5); a[9] = 10;
const b = [...a]; b.length = 1e8;
return [a.length, a[0], a[1], a[2] === undefined, a[4], a[9], b.length];`)
	require.Nil(t, res.Err)
	require.Equal(t, []any{int64(10), int64(1), int64(2), true, int64(5), int64(10), int64(1e8)}, res.Raw)

	res = run(`const a = request.context.event.context.list; a.length = 65536; return a.length;`)
	require.Nil(t, res.Err)
	require.Equal(t, int64(65536), res.Raw)
}

// Filters, kwargs and other strict arguments refuse what JSON cannot hold
// (a BigInt, a function, a Symbol) with a TypeError that names the key:
// dropping it would make a filter match more than asked. These throw
// before any query, so they need no database.
func TestStrictArgumentsRefuseNonJSON(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	for name, tt := range map[string]struct{ expr, want string }{
		"bigint":        {`return User.objects.filter({username: 10n}).count();`, "TypeError: User.objects.filter: username is a BigInt"},
		"function":      {`return User.objects.filter({username: () => "bob"}).count();`, "TypeError: User.objects.filter: username is a function"},
		"symbol":        {`return User.objects.filter({pk: Symbol("x")}).first();`, "TypeError: User.objects.filter: pk is a Symbol"},
		"nested":        {`return Group.objects.filter({pk__in: ["a", 1n]}).exists();`, "TypeError: Group.objects.filter: pk__in[1] is a BigInt"},
		"get":           {`return User.objects.get({email: Symbol.iterator});`, "TypeError: User.objects.filter: email is a Symbol"},
		"member":        {`return ak_is_group_member(request.user, {name: 1n});`, "TypeError: ak_is_group_member: name is a BigInt"},
		"member-fn":     {`return ak_is_group_member(request.user, {name: "x", pk: () => "admins"});`, "TypeError: ak_is_group_member: pk is a function"},
		"user-by":       {`return ak_user_by({username: Symbol("bob")});`, "TypeError: ak_user_by: username is a Symbol"},
		"kwargs":        {`return ak_call_policy("callee", {n: 1n});`, "TypeError: ak_call_policy kwargs: n is a BigInt"},
		"cycle":         {`const o = {}; o.o = o; return User.objects.filter({username: o}).count();`, "TypeError: User.objects.filter: username.o contains itself (a cycle)"},
		"map":           {`return ak_user_by({username: new Map()});`, "TypeError: ak_user_by: username is a Map"},
		"email-options": {`return ak_send_email("a@example.com", "s", {body: "b", cc: ["c@example.com", 1n]});`, "TypeError: ak_send_email options: cc[1] is a BigInt"},
	} {
		req := request(name, tt.expr)
		req.User = &rules.User{ID: 12, Username: "jane"}
		req.Scope = scopeWith(&rules.Policy{Name: "callee", Kind: rules.KindExpression, Expression: `return true;`})
		res := evaluate(t, pool, req)
		require.NotNil(t, res.Err, "%s: ran (raw %v) instead of throwing", name, res.Raw)
		require.Contains(t, res.Err.Message, tt.want, name)
	}

	// Catchable, as any TypeError.
	req := request("caught", `try { User.objects.filter({username: 10n}); } catch (e) { return e instanceof TypeError; } return false;`)
	res := evaluate(t, pool, req)
	require.Nil(t, res.Err)
	require.True(t, res.Passing)
}

// A policy that returns a Promise (an async function's result) fails: it
// cannot be awaited, and an object would pass. A BigInt passes by
// JavaScript truthiness, with its value as raw_result. request.http_request
// is null, as authentik's None.
func TestOddResults(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	for name, expr := range map[string]string{
		"async":    `return (async () => false)();`,
		"promise":  `return Promise.resolve(true);`,
		"thenable": `return {then(resolve) { resolve(false); }};`,
	} {
		res := evaluate(t, pool, request(name, expr))
		require.NotNil(t, res.Err, name)
		require.Equal(t, "exception", res.Err.Kind, name)
		require.Contains(t, res.Err.Message, "policy returned a Promise; policies run synchronously", name)
		require.False(t, res.Passing, name)
	}

	for _, tt := range []struct {
		expr    string
		passing bool
		raw     any
	}{
		{`return 10n;`, true, int64(10)},
		{`return 0n;`, false, int64(0)},
		{`return 2n ** 70n;`, true, "1180591620717411303424"},
		{`return {n: 10n, list: [1n]};`, true, map[string]any{"n": int64(10), "list": []any{int64(1)}}},
		{`return request.http_request === null && "http_request" in request;`, true, true},
		{`return {then: 1};`, true, map[string]any{"then": int64(1)}},
	} {
		res := evaluate(t, pool, request("odd", tt.expr))
		require.Nil(t, res.Err, tt.expr)
		require.Equal(t, tt.passing, res.Passing, tt.expr)
		require.Equal(t, tt.raw, res.Raw, tt.expr)
	}
}

// Ordinary values convert as they did through goja's Export: dates as
// RFC 3339 text, holes as null, undefined properties as null, functions
// and symbols dropped, Sets as arrays, wrapped primitives as their value.
func TestResultConversion(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	res := evaluate(t, pool, request("values", `class P { constructor() { this.x = 1; } get y() { return 2; } }
return {date: new Date(0), hole: [1, , 3], undef: undefined, fn: () => 1, sym: Symbol("s"), set: new Set([1, "a"]),
        num: new Number(4), str: new String("s"), bool: new Boolean(false), arr: [1, () => 2, 3], cls: new P(), err: new Error("x"), re: /x/,
        nan: NaN, float: 1.5, neg: -0, big: 9007199254740993n, user: request.context.event.user};`))
	require.Nil(t, res.Err)
	raw := res.Raw.(map[string]any)
	require.Equal(t, "1970-01-01T00:00:00Z", raw["date"])
	require.Equal(t, []any{int64(1), nil, int64(3)}, raw["hole"])
	require.Contains(t, raw, "undef")
	require.Nil(t, raw["undef"])
	require.NotContains(t, raw, "fn")
	require.NotContains(t, raw, "sym")
	require.Equal(t, []any{int64(1), "a"}, raw["set"])
	require.Equal(t, int64(4), raw["num"])
	require.Equal(t, "s", raw["str"])
	require.Equal(t, false, raw["bool"])
	require.Equal(t, []any{int64(1), int64(3)}, raw["arr"])
	require.Equal(t, map[string]any{"x": int64(1)}, raw["cls"])
	require.Equal(t, map[string]any{}, raw["err"])
	require.Equal(t, 1.5, raw["float"])
	require.Equal(t, int64(9007199254740993), raw["big"])
	require.Equal(t, map[string]any{"pk": int64(12), "email": "jane@example.com", "username": "jane"}, raw["user"])
}

// JSON.stringify gives what goja's own gives, with the guard in place:
// replacer functions and arrays, space, toJSON, and its errors.
func TestJSONStringifyUnchanged(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	for expr, want := range map[string]any{
		`JSON.stringify({b: 1, a: [1, "x", null, undefined, () => 1], c: {d: new Date(0)}})`:                  `{"b":1,"a":[1,"x",null,null,null],"c":{"d":"1970-01-01T00:00:00.000Z"}}`,
		`JSON.stringify({a: 1, b: {c: 2}}, null, 2)`:                                                          "{\n  \"a\": 1,\n  \"b\": {\n    \"c\": 2\n  }\n}",
		`JSON.stringify({a: 1, b: 2, c: {a: 3, d: 4}}, ["c", "a"])`:                                           `{"c":{"a":3},"a":1}`,
		`JSON.stringify([{a: 1, b: 2}], ["b"])`:                                                               `[{"b":2}]`,
		`JSON.stringify({a: 1, b: "x"}, function (k, v) { return typeof v === "number" ? v * 10 : v; })`:      `{"a":10,"b":"x"}`,
		`JSON.stringify({a: {toJSON(k) { return "to:" + k; }}})`:                                              `{"a":"to:a"}`,
		`JSON.stringify(undefined)`:                                                                           nil,
		`JSON.stringify("s")`:                                                                                 `"s"`,
		`JSON.stringify({a: [new Number(1), new String("s"), new Boolean(false)]})`:                           `{"a":[1,"s",false]}`,
		`JSON.stringify(request.context.event.context.geo)`:                                                   `{"country":"NL","lat":52.37}`,
		`(() => { const o = {}; o.o = o; try { JSON.stringify(o); } catch (e) { return e.name; } })()`:        "TypeError",
		`(() => { try { JSON.stringify({n: 1n}); } catch (e) { return e.name; } })()`:                         "TypeError",
		`(() => { const o = {}; o.o = o; try { JSON.stringify(o, ["o"]); } catch (e) { return e.name; } })()`: "TypeError",
		`JSON.stringify.name + JSON.stringify.length`:                                                         "stringify3",
		`JSON.stringify(new Proxy([1, 2], {}), ["b"])`:                                                        `[1,2]`,
		`JSON.stringify({p: new Proxy([1, {a: 1, b: 2}], {})}, ["p", "a"])`:                                   `{"p":[1,{"a":1}]}`,
		`(() => { let o = 1; for (let i = 0; i < 5000; i++) o = [o]; return JSON.stringify(o).length; })()`:   int64(10001),
	} {
		res := evaluate(t, pool, request("json", "return "+expr+";"))
		require.Nil(t, res.Err, expr)
		require.Equal(t, want, res.Raw, expr)
	}
	req := request("too-deep", deep(20_000, "[o]")+`try { JSON.stringify(o); } catch (e) { return e instanceof RangeError && e.message; }`)
	req.Timeout = time.Minute
	res := evaluate(t, pool, req)
	require.Nil(t, res.Err)
	require.Equal(t, "JSON.stringify: the value is nested deeper than 10000 levels", res.Raw)
}
