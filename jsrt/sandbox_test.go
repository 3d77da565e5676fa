package jsrt_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
)

// Tests of the sandbox: what a policy cannot do to the policies evaluated
// after it on the same runtime, and how far past its timeout it can run.
// Every pool here has one runtime, so that consecutive evaluations share it.

// requireTypeError requires res to have failed with a TypeError.
func requireTypeError(t *testing.T, res rules.PolicyResult, msgAndArgs ...any) {
	t.Helper()
	require.NotNil(t, res.Err, msgAndArgs...)
	require.Equal(t, "exception", res.Err.Kind, msgAndArgs...)
	require.Contains(t, res.Err.Message, "TypeError", msgAndArgs...)
}

// requireTimedOut requires res to have failed with a timeout within limit
// of start.
func requireTimedOut(t *testing.T, res rules.PolicyResult, start time.Time, limit time.Duration) {
	t.Helper()
	took := time.Since(start)
	t.Logf("took %v, err %v", took, res.Err)
	require.NotNil(t, res.Err)
	require.Equal(t, "timeout", res.Err.Kind)
	require.Less(t, took, limit, "the policy ran far past its timeout")
}

// A catastrophic JavaScript regular expression that goja runs on regexp2
// (a lookahead and a backreference) is cut short, so the policy times out
// about a second after its deadline at worst (it took 7.5 s with a 200 ms
// timeout before regexp2.DefaultMatchTimeout was set).
func TestSandboxJSRegExpStopsAfterTimeout(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	req := request("redos", `return /^(?=a)(a|aa)+\1?$/.test("a".repeat(34) + "!");`)
	req.Timeout = 200 * time.Millisecond
	start := time.Now()
	res := evaluate(t, pool, req)
	requireTimedOut(t, res, start, 3*time.Second)

	// The runtime works on, and so do such expressions that are not slow.
	res = evaluate(t, pool, request("lookaround", `return /(?<=a)b/.test("ab") && /^(a)\1$/.test("aa") && !/^(?=a)(a|aa)+\1?$/.test("b");`))
	require.Nil(t, res.Err)
	require.True(t, res.Passing)
}

// regex_match's match is bounded by what the evaluation has left, not by a
// second of its own: policies with a 100 ms timeout each end well within a
// second (each took 1.15 s before).
func TestSandboxRegexMatchStopsAtTimeout(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	const policies = 6
	start := time.Now()
	for range policies {
		req := request("redos-match", `let n = 0;
for (let i = 0; i < 5; i++) { try { regex_match("a".repeat(40) + "!", "^(a|aa)+$"); } catch (e) { n++; } }
return n;`)
		req.Timeout = 100 * time.Millisecond
		res := evaluate(t, pool, req)
		require.NotNil(t, res.Err)
		require.Equal(t, "timeout", res.Err.Kind)
	}
	took := time.Since(start)
	t.Logf("%d policies took %v", policies, took)
	require.Less(t, took, 3500*time.Millisecond, "regex_match ran past the policies' timeouts")

	// Runtimes that bound the same cached expression at once each bound
	// their own use of it (run with -race).
	pool = newPool(t, jsrt.Config{Size: 2})
	var wg sync.WaitGroup
	results := make([]rules.PolicyResult, 2)
	for i := range results {
		wg.Go(func() {
			req := request("redos-match", `return regex_match("a".repeat(40) + "!", "^(a|aa)+$");`)
			req.Timeout = time.Duration(100+100*i) * time.Millisecond
			results[i] = pool.Evaluate(t.Context(), req)
		})
	}
	wg.Wait()
	for _, res := range results {
		require.NotNil(t, res.Err)
		require.Equal(t, "timeout", res.Err.Kind)
	}
}

// regex_replace checks the deadline between matches: twenty slow matches
// no longer get a second each (they took 10 s with a 200 ms timeout).
func TestSandboxRegexReplaceStopsAtTimeout(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	const expr = `return regex_replace(("a".repeat(27) + "!").repeat(20), "(a|aa)+b|!", "-").length;`

	req := request("redos-sub", expr)
	req.Timeout = 200 * time.Millisecond
	start := time.Now()
	requireTimedOut(t, evaluate(t, pool, req), start, 3*time.Second)

	// The batch's deadline bounds it too, when it comes first.
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	req = request("redos-sub-batch", expr)
	req.Timeout = time.Minute
	start = time.Now()
	res := pool.Evaluate(ctx, req)
	took := time.Since(start)
	t.Logf("under a batch deadline: took %v, err %v", took, res.Err)
	require.NotNil(t, res.Err)
	require.Less(t, took, 3*time.Second, "regex_replace ran past the batch's deadline")

	// What is not slow is replaced as before, groups and all.
	res = evaluate(t, pool, request("sub", `return regex_replace("a1b22c333", "(?P<d>\\d+)", "<\\g<d>>") + regex_replace("xyz", "q", "-") + regex_replace("ab", "", "-");`))
	require.Nil(t, res.Err)
	require.Equal(t, "a<1>b<22>c<333>xyz-a-b-", res.Raw)
}

// The prototypes of model objects are frozen: a policy cannot give every
// user object a new save or a new field, but the objects' own fields stay
// writable.
func TestSandboxModelPrototypeIsFrozen(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	for name, src := range map[string]string{
		"replace-save":  `Object.getPrototypeOf(request.user).save = function () { return "hijacked"; }; return true;`,
		"add-field":     `Object.getPrototypeOf(request.user).is_staff = true; return true;`,
		"delete-save":   `delete Object.getPrototypeOf(request.user).save; return true;`,
		"instance-save": `request.user.save = () => "hijacked"; return true;`, // a frozen prototype's method is not overridden by assignment
	} {
		req := request(name, src)
		req.User = &rules.User{ID: 12, Username: "jane"}
		requireTypeError(t, evaluate(t, pool, req), name)
	}

	req := request("victim", `const p = Object.getPrototypeOf(request.user);
return [request.user.is_staff === undefined, typeof p.save, String(p.save).includes("hijacked"), Object.isFrozen(p)];`)
	req.User = &rules.User{ID: 13, Username: "bob"}
	res := evaluate(t, pool, req)
	require.Nil(t, res.Err)
	require.Equal(t, []any{true, "function", false, true}, res.Raw)

	req = request("own-fields", `const u = request.user;
u.is_active = false; u.nickname = "bobby"; delete u.email;
return [u.is_active, u.nickname, "email" in u, typeof u.save, {...u}.username];`)
	req.User = &rules.User{ID: 13, Username: "bob", Email: "bob@example.com", IsActive: true}
	res = evaluate(t, pool, req)
	require.Nil(t, res.Err)
	require.Equal(t, []any{false, "bobby", false, "function", "bob"}, res.Raw)
}

// The prototypes of ip_address and ip_network objects are frozen.
func TestSandboxIPPrototypesAreFrozen(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	for name, src := range map[string]string{
		"network-contains": `Object.getPrototypeOf(ip_network("10.0.0.0/8")).contains = () => true; return true;`,
		"address-toString": `Object.getPrototypeOf(ip_address("10.0.0.1")).toString = () => "10.0.0.1"; return true;`,
		"client-ip":        `Object.getPrototypeOf(ak_client_ip).toJSON = () => "x"; return true;`,
	} {
		requireTypeError(t, evaluate(t, pool, request(name, src)), name)
	}

	res := evaluate(t, pool, request("victim", `return [ip_network("10.0.0.0/8").contains(ip_address("8.8.8.8")),
String(ip_address("192.0.2.1")), JSON.stringify(ak_client_ip)];`))
	require.Nil(t, res.Err)
	require.Equal(t, []any{false, "192.0.2.1", `"198.51.100.23"`}, res.Raw)

	res = evaluate(t, pool, request("own-fields", `const a = ip_address("10.0.0.1"); a.note = "x"; a.version = 9; return [a.note, a.version];`))
	require.Nil(t, res.Err)
	require.Equal(t, []any{"x", int64(9)}, res.Raw)
}

// The built-in and helper globals are read-only bindings: reassigning or
// deleting one throws (policies run in strict mode), and later policies
// see the originals. A policy's own declarations of those names, new
// global variables and the per-evaluation globals still work.
func TestSandboxGlobalsAreReadOnly(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	for name, src := range map[string]string{
		"helper":         `regex_match = () => true; return true;`,
		"json":           `JSON = {parse: () => "evil"}; return true;`,
		"ak-message":     `ak_message = () => {}; return true;`,
		"sso-flow":       `ak_is_sso_flow = true; return true;`,
		"model":          `User = {objects: null}; return true;`,
		"through-global": `globalThis.Array = null; return true;`,
		"delete":         `delete globalThis.ak_logger; return true;`,
		"redefine":       `Object.defineProperty(globalThis, "list_flatten", {value: () => "evil"}); return true;`,
	} {
		requireTypeError(t, evaluate(t, pool, request(name, src)), name)
	}
	// Sloppy-mode code cannot reassign one either: it is silently ignored.
	res := evaluate(t, pool, request("sloppy", `return new Function('regex_match = () => true; return typeof ak_logger;')();`))
	require.Nil(t, res.Err)
	require.Equal(t, "object", res.Raw)

	res = evaluate(t, pool, request("victim", `ak_message("hello");
return [regex_match("abc", "^z$"), JSON.parse("{}"), ak_is_sso_flow, typeof User.objects, Array.isArray([]),
        typeof ak_logger.info, list_flatten([1])];`))
	require.Nil(t, res.Err)
	require.Equal(t, []string{"hello"}, res.Messages)
	require.Equal(t, []any{false, map[string]any{}, false, "object", true, "function", int64(1)}, res.Raw)

	res = evaluate(t, pool, request("shadows", `const regex_match = () => "mine"; let JSON = 1; var ak_message = 2;
function list_flatten() { return "own"; }
globalThis.mine = (globalThis.mine || 0) + 1;
return [regex_match(), JSON, ak_message, list_flatten(), mine, request.context.event.action];`))
	require.Nil(t, res.Err)
	require.Equal(t, []any{"mine", int64(1), int64(2), "own", int64(1), "login"}, res.Raw)

	// request and context are set anew for each evaluation.
	req := request("next-event", `return [request.context.event.action, context.event.action];`)
	req.Event.Action = "logout"
	res = evaluate(t, pool, req)
	require.Nil(t, res.Err)
	require.Equal(t, []any{"logout", "logout"}, res.Raw)
}

// A policy cannot fix the global request or context to a value of its own
// (non-writable, or an accessor), which later policies on the runtime
// would read: they cannot be redefined, or assigned.
func TestSandboxPerEvaluationGlobalsCannotBeFixed(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	planted := `{user: {username: "planted"}, context: {event: {action: "planted"}}}`
	const read = `return request.user.username + "/" + request.context.event.action + "/" + context.event.action;`
	want := evaluate(t, pool, request("reader", read)).Raw
	require.NotContains(t, want, "planted")
	for name, expr := range map[string]string{
		"value":    `Object.defineProperty(globalThis, "request", {value: ` + planted + `, writable: false, configurable: false}); return true;`,
		"accessor": `Object.defineProperty(globalThis, "request", {get() { return ` + planted + `; }, set(v) {}, configurable: false}); return true;`,
		"context":  `Object.defineProperty(globalThis, "context", {value: {event: {action: "planted"}}, writable: false, configurable: false}); return true;`,
		"throwing": `Object.defineProperty(globalThis, "context", {get() { throw new Error("no"); }, configurable: false}); return true;`,
		// An accessor that answers the value last set to the first read
		// after each set (a check) and its own to the others.
		"adaptive":       `let fresh = false, last; Object.defineProperty(globalThis, "request", {get() { const f = fresh; fresh = false; return f ? last : ` + planted + `; }, set(v) { last = v; fresh = true; }, configurable: true}); return true;`,
		"adaptive-fixed": `let fresh = false, last; Object.defineProperty(globalThis, "request", {get() { const f = fresh; fresh = false; return f ? last : ` + planted + `; }, set(v) { last = v; fresh = true; }, configurable: false}); return true;`,
		"assigned":       `request = ` + planted + `; return true;`,
	} {
		res := evaluate(t, pool, request("planter-"+name, expr))
		require.NotNil(t, res.Err, name)
		require.Contains(t, res.Err.Message, "TypeError: Cannot ", name)
		for range 2 {
			res = evaluate(t, pool, request("reader", read))
			require.Nil(t, res.Err, name)
			require.Equal(t, want, res.Raw, "%s: a later policy read the planted value", name)
		}
	}
}

// ak_message requires its message, as the other helpers require theirs.
func TestSandboxAkMessageRequiresAMessage(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	for _, src := range []string{`ak_message(); return true;`, `ak_message(undefined); return true;`, `ak_message(null); return true;`} {
		res := evaluate(t, pool, request("no-message", src))
		requireTypeError(t, res, src)
		require.True(t, strings.Contains(res.Err.Message, "ak_message"), "the error names the function: %s", res.Err.Message)
		require.Empty(t, res.Messages, src)
	}
	res := evaluate(t, pool, request("messages", `ak_message("text"); ak_message(42); return true;`))
	require.Nil(t, res.Err)
	require.Equal(t, []string{"text", "42"}, res.Messages)
}

// The helpers and built-ins a typical policy calls, read through their
// read-only global bindings, and the per-call bound of regex_match and
// regex_replace.
func BenchmarkEvaluateHelpers(b *testing.B) {
	benchmarkPolicy(b, `const e = request.context.event;
if (!regex_match(e.context.auth_method, "^pass(word)?$")) return false;
const path = regex_replace(e.context.http_request.path, "/(?P<seg>[a-z]+)/", "<\\g<seg>>");
return ip_network("198.51.100.0/24").contains(ak_client_ip) && path.length > 0 && /(?<=\/)flows/.test(e.context.http_request.path)
  && JSON.stringify(list_flatten([e.action])) === '"login"';`)
}

// A mapping that fixes its notification global to a value of its own
// (non-configurable, so it cannot be reset) does not reach later mappings:
// its runtime is replaced.
func TestSandboxMappingGlobalsCannotBeFixed(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	mapping := func(name, expr, body string) any {
		res, err := pool.EvaluateMapping(t.Context(), rules.MappingRequest{Name: name, Expression: expr,
			Notification: map[string]any{"body": body}, User: &rules.User{ID: 12, Username: "jane"}, Event: loginEvent(), Timeout: time.Second})
		require.NoError(t, err)
		return res.Value
	}
	for _, configurable := range []string{"true", "false"} {
		mapping("fixer", `Object.defineProperty(globalThis, "notification", {get() { return {body: "planted"}; }, configurable: `+configurable+`}); return null;`, "first")
		require.Equal(t, "second", mapping("reader", `return notification.body;`, "second"), "configurable: %s", configurable)
	}
}
