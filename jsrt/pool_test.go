package jsrt_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func newPool(t testing.TB, cfg jsrt.Config) *jsrt.Pool {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	return jsrt.New(cfg)
}

// loginEvent is authentik's login event (authentik-semantics.md §5.3).
func loginEvent() *events.Event {
	return &events.Event{
		PK:     "3f0a8f0e-3a4e-4f6f-9a55-0c9f7f3b2a11",
		Action: "login",
		App:    "authentik.events.signals",
		User:   map[string]any{"pk": int64(12), "email": "jane@example.com", "username": "jane"},
		Context: map[string]any{
			"auth_method":      "password",
			"auth_method_args": map[string]any{"known_device": false},
			"http_request":     map[string]any{"path": "/api/v3/flows/executor/default-authentication-flow/", "method": "GET"},
			"geo":              map[string]any{"country": "NL", "lat": 52.37},
		},
		ClientIP: "198.51.100.23",
		Created:  time.Date(2026, 4, 20, 10, 15, 30, 123456000, time.UTC),
		Brand:    map[string]any{"app": "authentik_brands", "model_name": "brand", "name": "Default brand"},
	}
}

// request is a policy request without side effects (Scope nil) for expr.
func request(name, expr string) *rules.PolicyRequest {
	return &rules.PolicyRequest{
		Policy:  &rules.Policy{Name: name, Kind: rules.KindExpression, Expression: expr},
		Event:   loginEvent(),
		Timeout: 5 * time.Second,
	}
}

func evaluate(t *testing.T, pool *jsrt.Pool, req *rules.PolicyRequest) rules.PolicyResult {
	t.Helper()
	return pool.Evaluate(t.Context(), req)
}

// mustPass evaluates expr and requires it to run without a policy error.
func mustRun(t *testing.T, pool *jsrt.Pool, expr string) rules.PolicyResult {
	t.Helper()
	res := evaluate(t, pool, request(t.Name(), expr))
	require.Nil(t, res.Err, "policy error")
	return res
}

func TestEvaluateReturnSemantics(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 2})

	tests := []struct {
		name    string
		expr    string
		passing bool
		raw     any
	}{
		{name: "True", expr: `return true;`, passing: true, raw: true},
		{name: "False", expr: `return false;`, passing: false, raw: false},
		{name: "NoReturn", expr: `const x = 1;`, passing: false, raw: nil},
		// An expression is a function body: a bare expression is not returned.
		{name: "BareExpressionIsNotReturned", expr: `true`, passing: false, raw: nil},
		{name: "EmptyReturn", expr: `return;`, passing: false, raw: nil},
		{name: "Undefined", expr: `return undefined;`, passing: false, raw: nil},
		{name: "Null", expr: `return null;`, passing: false, raw: nil},
		{name: "Zero", expr: `return 0;`, passing: false, raw: int64(0)},
		{name: "EmptyString", expr: `return "";`, passing: false, raw: ""},
		{name: "NaN", expr: `return NaN;`, passing: false},
		{name: "StringFalseIsTruthy", expr: `return "false";`, passing: true, raw: "false"},
		{name: "StringZeroIsTruthy", expr: `return "0";`, passing: true, raw: "0"},
		{name: "One", expr: `return 1;`, passing: true, raw: int64(1)},
		{name: "Object", expr: `return {a: 1};`, passing: true, raw: map[string]any{"a": int64(1)}},
		{name: "MultiLine", expr: "if (request.context.event.action !== \"login\") {\n  return false;\n}\nreturn \"yes\";", passing: true, raw: "yes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := mustRun(t, pool, tt.expr)
			require.Equal(t, tt.passing, res.Passing)
			if tt.name != "NaN" {
				require.Equal(t, tt.raw, res.Raw)
			}
		})
	}
}

func TestEvaluateRequestUser(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	t.Run("User", func(t *testing.T) {
		t.Parallel()
		req := request("user", `const u = request.user;
return [u.pk, u.username, u.email, u.name, u.is_active, u.is_superuser, u.is_anonymous, u.attributes.team];`)
		req.User = &rules.User{
			ID: 12, UUID: "9d4f1a52-8c0e-4b7e-9b1a-2f0d3c4e5a6b", Username: "jane", Name: "Jane Doe",
			Email: "jane@example.com", IsActive: true, IsSuperuser: true,
			Attributes: rules.JSONMap{"team": "ops"},
		}
		res := evaluate(t, pool, req)
		require.Nil(t, res.Err)
		require.Equal(t, []any{int64(12), "jane", "jane@example.com", "Jane Doe", true, true, false, "ops"}, res.Raw)

		req = request("user-fields", `const u = request.user;
u.name = "Jane D.";
let frozen = "yes";
try { Object.freeze(u); } catch (e) { frozen = "throws"; }
return [Object.keys(u).join(","), typeof u.save, u.name, JSON.stringify(u.attributes), frozen, String(Object.isFrozen(Object.freeze({...u})))];`)
		req.User = &rules.User{ID: 12, Username: "jane", Name: "Jane Doe", Attributes: rules.JSONMap{"team": "ops"}}
		res = evaluate(t, pool, req)
		require.Nil(t, res.Err)
		require.Equal(t, []any{"pk,id,uuid,username,name,email,is_active,is_superuser,is_anonymous,attributes,last_login,created,updated",
			"function", "Jane D.", `{"team":"ops"}`, "throws", "true"}, res.Raw)
	})

	t.Run("Anonymous", func(t *testing.T) {
		t.Parallel()
		req := request("anonymous", `const u = request.user;
return [u.pk, u.username, u.is_anonymous];`)
		req.User = nil
		res := evaluate(t, pool, req)
		require.Nil(t, res.Err)
		require.Equal(t, []any{nil, "AnonymousUser", true}, res.Raw)
	})
}

func TestEvaluateRequestContextEvent(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	res := mustRun(t, pool, `const e = request.context.event;
return {
  same_context: context === request.context,
  same_event: context.event === e,
  pk: e.pk, action: e.action, app: e.app,
  user: e.user.username, user_pk: e.user.pk,
  auth_method: e.context.auth_method,
  known_device: e.context.auth_method_args.known_device,
  lat: e.context.geo.lat,
  client_ip: e.client_ip,
  created: e.created,
  brand: e.brand.name,
};`)
	require.Equal(t, map[string]any{
		"same_context": true,
		"same_event":   true,
		"pk":           "3f0a8f0e-3a4e-4f6f-9a55-0c9f7f3b2a11",
		"action":       "login",
		"app":          "authentik.events.signals",
		"user":         "jane",
		"user_pk":      int64(12),
		"auth_method":  "password",
		"known_device": false,
		"lat":          52.37,
		"client_ip":    "198.51.100.23",
		"created":      "2026-04-20T10:15:30.123456Z",
		"brand":        "Default brand",
	}, res.Raw)

	t.Run("NoClientIP", func(t *testing.T) {
		t.Parallel()
		req := request("no-client-ip", `return request.context.event.client_ip === null;`)
		req.Event.ClientIP = ""
		res := evaluate(t, pool, req)
		require.Nil(t, res.Err)
		require.True(t, res.Passing)
	})

	t.Run("ExtraContextKeys", func(t *testing.T) {
		t.Parallel()
		req := request("extra-context", `return [request.context.foo, context.foo, context.event.action];`)
		req.Context = map[string]any{"foo": "bar"}
		res := evaluate(t, pool, req)
		require.Nil(t, res.Err)
		require.Equal(t, []any{"bar", "bar", "login"}, res.Raw)
	})
}

func TestEvaluateAkMessage(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	res := mustRun(t, pool, `ak_message("first");
ak_message("second " + request.context.event.action);
return false;`)
	require.False(t, res.Passing)
	require.Equal(t, []string{"first", "second login"}, res.Messages)

	// Messages belong to one evaluation: the next one starts empty.
	res = mustRun(t, pool, `return true;`)
	require.Empty(t, res.Messages)
}

func TestEvaluateAkLogger(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	res := mustRun(t, pool, `ak_logger.info("checking", {user: request.context.event.user.username, n: 2});
ak_logger.warning("careful");
ak_logger.debug("details");
ak_logger.error("bad");
return true;`)
	require.True(t, res.Passing)
	require.Equal(t, []rules.LogLine{
		{Level: "info", Message: "checking", Fields: map[string]any{"user": "jane", "n": int64(2)}},
		{Level: "warning", Message: "careful"},
		{Level: "debug", Message: "details"},
		{Level: "error", Message: "bad"},
	}, res.Logs)

	res = mustRun(t, pool, `return true;`)
	require.Empty(t, res.Logs)
}

func TestEvaluateRegexMatch(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 2})

	tests := []struct {
		name, value, re string
		want            bool
	}{
		{name: "UnanchoredSearch", value: "hello world", re: `wor`, want: true},
		{name: "AnchorsStillWork", value: "abc", re: `^b`, want: false},
		{name: "AnchoredMatch", value: "abc", re: `^a.c$`, want: true},
		{name: "NoMatch", value: "abc", re: `x`, want: false},
		{name: "Lookahead", value: "foobar", re: `foo(?=bar)`, want: true},
		{name: "LookaheadFails", value: "foobaz", re: `foo(?=bar)`, want: false},
		{name: "NegativeLookahead", value: "foobaz", re: `foo(?!bar)`, want: true},
		{name: "Backreference", value: "xaay", re: `(a)\1`, want: true},
		{name: "PythonNamedGroup", value: "2024-01", re: `(?P<year>\d{4})-(?P<month>\d{2})`, want: true},
		{name: "PythonNamedGroupNoMatch", value: "24-01", re: `^(?P<year>\d{4})-`, want: false},
		{name: "CaseInsensitiveFlag", value: "ADMIN", re: `(?i)admin`, want: true},
		// As Python 3's re: \w and \d are Unicode, (?P=name) is a
		// backreference, \Z is the very end and $ also matches before a
		// final newline, and a class is taken as it is.
		{name: "UnicodeWord", value: "José", re: `^\w+$`, want: true},
		{name: "UnicodeDigit", value: "٣", re: `^\d$`, want: true},
		{name: "PythonNamedBackreference", value: "xx", re: `(?P<a>x)(?P=a)`, want: true},
		{name: "EndOfInput", value: "a\n", re: `a\Z`, want: false},
		{name: "DollarBeforeFinalNewline", value: "a\n", re: `a$`, want: true},
		{name: "ClassTakenAsItIs", value: "(x", re: `[(?P<]+x`, want: true},
		{name: "CommentTakenAsItIs", value: "xx", re: `(?#a [ in a comment)(?P<a>x)(?P=a)`, want: true},
		{name: "UpToN", value: "a", re: `^a{,2}$`, want: true},
		{name: "UpToNIsNoMore", value: "aaa", re: `^a{,2}$`, want: false},
		{name: "UpToNInAClassIsLiteral", value: "{", re: `^[{,2}]$`, want: true},
		{name: "FromZeroUnbounded", value: "aaaa", re: `^a{,}$`, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := request("regex-match", `return regex_match(context.value, context.re);`)
			req.Context = map[string]any{"value": tt.value, "re": tt.re}
			res := evaluate(t, pool, req)
			require.Nil(t, res.Err)
			require.Equal(t, tt.want, res.Raw)
		})
	}

	t.Run("InvalidRegexThrows", func(t *testing.T) {
		t.Parallel()
		res := evaluate(t, pool, request("regex-invalid", `return regex_match("a", "(");`))
		require.NotNil(t, res.Err)
		require.Equal(t, "exception", res.Err.Kind)
		require.Contains(t, res.Err.Message, "regex_match")
	})
}

func TestEvaluateRegexReplace(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 2})

	tests := []struct {
		name, value, re, repl, want string
	}{
		{name: "Numbered", value: "John Smith", re: `(\w+) (\w+)`, repl: `\2, \1`, want: "Smith, John"},
		{name: "Named", value: "2024-01-31", re: `(?P<y>\d+)-(?P<m>\d+)-(?P<d>\d+)`, repl: `\g<d>/\g<m>/\g<y>`, want: "31/01/2024"},
		{name: "NumberedInG", value: "ab", re: `(a)(b)`, repl: `\g<2>\g<1>`, want: "ba"},
		{name: "EveryMatch", value: "a1b22c333", re: `\d+`, repl: `#`, want: "a#b#c#"},
		{name: "NoMatchUnchanged", value: "abc", re: `x`, repl: `y`, want: "abc"},
		{name: "EscapedBackslash", value: "a", re: `a`, repl: `\\`, want: `\`},
		{name: "NewlineEscape", value: "a b", re: ` `, repl: `\n`, want: "a\nb"},
		{name: "DollarIsLiteral", value: "a", re: `(a)`, repl: `$1`, want: "$1"},
		// Groups are numbered left to right, named or not, as in Python.
		{name: "NamedAndUnnumberedInOrder", value: "jane@example", re: `(?P<u>\w+)@(\w+)`, repl: `\2/\1`, want: "example/jane"},
		// Python's template escapes: \0 and three octal digits are
		// characters, other escaped punctuation stays as it is.
		{name: "OctalZero", value: "abc", re: `b`, repl: `[\0]`, want: "a[\x00]c"},
		{name: "OctalThreeDigits", value: "abc", re: `b`, repl: `\101`, want: "aAc"},
		{name: "GroupZero", value: "abc", re: `b`, repl: `<\g<0>>`, want: "a<b>c"},
		{name: "TwoDigitGroup", value: "abcdefghijk", re: `(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)`, repl: `\11\10`, want: "kj"},
		{name: "EscapedPunctuationKept", value: "a", re: `a`, repl: `\.`, want: `\.`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := request("regex-replace", `return regex_replace(context.value, context.re, context.repl);`)
			req.Context = map[string]any{"value": tt.value, "re": tt.re, "repl": tt.repl}
			res := evaluate(t, pool, req)
			require.Nil(t, res.Err)
			require.Equal(t, tt.want, res.Raw)
		})
	}

	for name, repl := range map[string]string{"BadEscape": `\\d`, "TrailingBackslash": `x\\`, "OctalOutOfRange": `\\477`,
		"MissingGroup": `\\1`, "MissingGroupName": `\\g<nope>`} {
		t.Run(name+"Throws", func(t *testing.T) {
			t.Parallel()
			// It throws without a match, as Python checks the template first.
			res := evaluate(t, pool, request("regex-replace-"+name, `return regex_replace("abc", "x", "`+repl+`");`))
			require.NotNil(t, res.Err, "%+v", res)
			require.Equal(t, "exception", res.Err.Kind)
		})
	}

	t.Run("UnknownGroupThrows", func(t *testing.T) {
		t.Parallel()
		res := evaluate(t, pool, request("regex-replace-bad", `return regex_replace("a", "(a)", "\\g<nope>");`))
		require.NotNil(t, res.Err)
		require.Equal(t, "exception", res.Err.Kind)
	})
}

func TestEvaluateListFlatten(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	res := mustRun(t, pool, `return {
  empty_is_null: list_flatten([]) === null,
  first: list_flatten([1, 2]),
  first_object: list_flatten([{a: "b"}]).a,
  string: list_flatten("x"),
  number: list_flatten(5),
  null_stays: list_flatten(null) === null,
};`)
	require.Equal(t, map[string]any{
		"empty_is_null": true,
		"first":         int64(1),
		"first_object":  "b",
		"string":        "x",
		"number":        int64(5),
		"null_stays":    true,
	}, res.Raw)
}

func TestEvaluateSyntaxError(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	tests := []struct {
		name         string
		expr         string
		line, column int
	}{
		// Parse errors.
		{name: "ParseErrorLine2", expr: "const a = 1;\nreturn (;", line: 2, column: 9},
		{name: "ParseErrorLine3", expr: "const a = 1;\nconst b = 2;\nreturn a +* b;", line: 3, column: 11},
		// On the first line the column must not count the function wrapper.
		{name: "ParseErrorLine1", expr: "return (;", line: 1, column: 9},
		// An early error found by the compiler rather than the parser.
		{name: "RedeclarationLine2", expr: "let a = 1;\nlet a = 2;\nreturn a;", line: 2, column: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := request("syntax-"+tt.name, tt.expr)
			res := evaluate(t, pool, req)
			require.NotNil(t, res.Err)
			require.False(t, res.Passing)
			require.Equal(t, "syntax", res.Err.Kind)
			require.Equal(t, "syntax-"+tt.name, res.Err.Policy)
			require.Equal(t, tt.line, res.Err.Line, "line of the syntax error within the expression: %s", res.Err)
			require.Equal(t, tt.column, res.Err.Column, "column of the syntax error within the expression: %s", res.Err)

			// Check reports the same error without evaluating.
			err := pool.Check(req.Policy)
			var perr *rules.PolicyError
			require.ErrorAs(t, err, &perr)
			require.Equal(t, "syntax", perr.Kind)
		})
	}

	// An empty expression would never pass: it is an error, reported as
	// any policy that does not compile is.
	t.Run("EmptyExpression", func(t *testing.T) {
		t.Parallel()
		for _, expr := range []string{"", " \n\t"} {
			res := evaluate(t, pool, request("empty", expr))
			require.NotNil(t, res.Err)
			require.Equal(t, "syntax", res.Err.Kind)
			require.Contains(t, res.Err.Message, "the expression is empty")
			require.ErrorContains(t, pool.Check(&rules.Policy{Name: "empty", Expression: expr}), "kind = 'event_matcher'")
		}
	})

	t.Run("CheckAcceptsValidPolicy", func(t *testing.T) {
		t.Parallel()
		require.NoError(t, pool.Check(&rules.Policy{Name: "valid", Expression: "return true;"}))
	})
}

func TestEvaluateThrownError(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	tests := []struct {
		name         string
		expr         string
		message      string
		line, column int
	}{
		{name: "ErrorOnLine2", expr: "const a = 1;\n  throw new Error(\"boom\");", message: "Error: boom", line: 2, column: 9},
		{name: "ErrorOnLine1", expr: `throw new Error("boom");`, message: "Error: boom", line: 1, column: 7},
		{name: "TypeError", expr: "const e = request.context.event;\nreturn e.context.missing.deeper;", message: "TypeError", line: 2, column: 26},
		{name: "ThrowString", expr: "\n\nthrow \"plain\";", message: "plain", line: 3, column: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := evaluate(t, pool, request("throws-"+tt.name, tt.expr))
			require.NotNil(t, res.Err)
			require.False(t, res.Passing)
			require.Equal(t, "exception", res.Err.Kind)
			require.Contains(t, res.Err.Message, tt.message)
			require.Equal(t, tt.line, res.Err.Line, "line: %s", res.Err)
			require.Equal(t, tt.column, res.Err.Column, "column: %s", res.Err)
		})
	}

	t.Run("MessagesBeforeTheThrowAreKept", func(t *testing.T) {
		t.Parallel()
		res := evaluate(t, pool, request("throws-after-message", "ak_message(\"before\");\nthrow new Error(\"boom\");"))
		require.NotNil(t, res.Err)
		require.Equal(t, []string{"before"}, res.Messages)
	})
}

func TestEvaluateTimeout(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	req := request("infinite-loop", `while (true) {}`)
	req.Timeout = 200 * time.Millisecond
	start := time.Now()
	res := evaluate(t, pool, req)
	took := time.Since(start)
	require.NotNil(t, res.Err)
	require.Equal(t, "timeout", res.Err.Kind)
	require.False(t, res.Passing)
	require.GreaterOrEqual(t, took, 200*time.Millisecond)
	require.Less(t, took, 5*time.Second)

	// The only runtime of the pool is usable again: no interrupt is left over.
	for range 3 {
		res = mustRun(t, pool, `let n = 0; for (let i = 0; i < 1000; i++) { n += i; } return n;`)
		require.True(t, res.Passing)
		require.Equal(t, int64(499500), res.Raw)
	}
}

// A policy ends at its timeout on a runtime bound to a batch too, and
// when the batch's context ends before it (the worker is stopping), on a
// bound runtime or not. The runtime is usable again afterwards.
func TestEvaluateEndsWithItsContext(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	loop := func(timeout time.Duration) *rules.PolicyRequest {
		req := request("infinite-loop", `while (true) {}`)
		req.Timeout = timeout
		return req
	}

	bound, release := pool.Bind(t.Context())
	for range 2 {
		res := pool.Evaluate(bound, loop(100*time.Millisecond))
		require.NotNil(t, res.Err)
		require.Equal(t, "policy timed out", res.Err.Message)
	}
	res := pool.Evaluate(bound, request("after-timeout", `return 1 + 1;`))
	require.Nil(t, res.Err, "no interrupt is left over")
	require.Equal(t, int64(2), res.Raw)
	release()

	for _, pinned := range []bool{false, true} {
		ctx, cancel := context.WithCancel(t.Context())
		release := func() {}
		if pinned {
			ctx, release = pool.Bind(ctx)
		}
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		res := pool.Evaluate(ctx, loop(time.Minute))
		require.NotNil(t, res.Err, "pinned: %v", pinned)
		require.Equal(t, "policy interrupted: context canceled", res.Err.Message)
		require.Less(t, time.Since(start), 5*time.Second)
		release()
		res = pool.Evaluate(t.Context(), request("after-cancel", `return 2 + 2;`))
		require.Nil(t, res.Err, "pinned: %v: no interrupt is left over", pinned)
		require.Equal(t, int64(4), res.Raw)
	}
}

func TestEvaluateStackOverflow(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	res := evaluate(t, pool, request("recursion", "function f(n) { return f(n + 1) + 1; }\nreturn f(0);"))
	require.NotNil(t, res.Err)
	require.Equal(t, "stack_overflow", res.Err.Kind)
	require.False(t, res.Passing)

	// Bounded recursion still works, and the runtime is reusable.
	res = mustRun(t, pool, "function f(n) { return n === 0 ? 0 : 1 + f(n - 1); }\nreturn f(100);")
	require.Equal(t, int64(100), res.Raw)
}

func TestEvaluateConcurrent(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 2})

	const n = 50
	results := make([]rules.PolicyResult, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req := request(fmt.Sprintf("concurrent-%d", i%5), `const n = request.context.event.context.n;
ak_message("m" + n);
ak_logger.info("log", {n: n});
if (!regex_match("value-" + n, "^value-(?P<n>\\d+)$")) return false;
return regex_replace("n=" + n, "n=(\\d+)", "\\1") * 2;`)
			req.Event.Context = map[string]any{"n": int64(i)}
			results[i] = pool.Evaluate(t.Context(), req)
		})
	}
	wg.Wait()
	for i, res := range results {
		require.Nil(t, res.Err, "evaluation %d", i)
		require.Equal(t, int64(2*i), res.Raw, "evaluation %d", i)
		require.Equal(t, i != 0, res.Passing, "evaluation %d", i)
		require.Equal(t, []string{fmt.Sprintf("m%d", i)}, res.Messages, "evaluation %d", i)
		require.Len(t, res.Logs, 1, "evaluation %d", i)
		require.Equal(t, int64(i), res.Logs[0].Fields["n"], "evaluation %d", i)
	}
}

// inChildProcess runs body in a child process (this test binary re-run
// with only the current top-level test), so that a fatal error, such as a
// Go stack overflow, fails this test instead of killing the test binary.
func inChildProcess(t *testing.T, body func(t *testing.T)) {
	t.Helper()
	const env = "HERALD_TEST_CHILD"
	if os.Getenv(env) == t.Name() {
		debug.SetMaxStack(64 << 20) // crash sooner than at the default 1 GB
		body(t)
		return
	}
	testinfra.RunInChild(t, env+"="+t.Name())
}

// A policy can hand ak_logger a cyclic object (here directly; logging
// globalThis does the same). The evaluation must end with a result or a
// policy error, never take the whole process down.
func TestEvaluateCyclicLogFieldsDoNotCrash(t *testing.T) {
	t.Parallel()
	inChildProcess(t, func(t *testing.T) {
		pool := newPool(t, jsrt.Config{Size: 1})
		res := evaluate(t, pool, request("cyclic-log", `const o = {name: "loop"};
o.self = o;
ak_logger.info("cyclic", {o: o});
return true;`))
		if res.Err != nil {
			require.Equal(t, "exception", res.Err.Kind)
		} else {
			require.True(t, res.Passing)
		}
	})
}

// unknownDevicePolicy is the unknown-device login alert of DESIGN.md §7.
const unknownDevicePolicy = `const event = request.context.event;
if (!event || event.action !== "login") return false;
return (event.context.auth_method_args || {}).known_device === false;`

func TestEvaluateUnknownDevicePolicy(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})

	req := request("unknown-device-login", unknownDevicePolicy)
	res := evaluate(t, pool, req)
	require.Nil(t, res.Err)
	require.True(t, res.Passing)

	req = request("unknown-device-login", unknownDevicePolicy)
	req.Event.Context["auth_method_args"] = map[string]any{"known_device": true}
	res = evaluate(t, pool, req)
	require.Nil(t, res.Err)
	require.False(t, res.Passing)

	req = request("unknown-device-login", unknownDevicePolicy)
	req.Event.Action = "logout"
	res = evaluate(t, pool, req)
	require.Nil(t, res.Err)
	require.False(t, res.Passing)
}

func BenchmarkEvaluate(b *testing.B) {
	benchmarkPolicy(b, unknownDevicePolicy)
}

// An expression cannot close its function to run code outside it.
func TestEvaluateExpressionThatClosesItsFunction(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	for _, src := range []string{"return false;\n}); (function () {\nreturn true;", "return false;\n}), (function () {\nreturn true;"} {
		res := evaluate(t, pool, request("escape", src))
		require.NotNil(t, res.Err, "%q", src)
		require.Equal(t, "syntax", res.Err.Kind)
		require.False(t, res.Passing)
	}
}

// Policies evaluated on one runtime cannot change what the others share:
// built-in objects, Herald's helpers and their prototypes are frozen.
func TestPoliciesCannotChangeSharedObjects(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1}) // every evaluation on one runtime
	for name, src := range map[string]string{
		"array-prototype":  `Array.prototype.includes = () => true; return true;`,
		"object-prototype": `Object.prototype.polluted = 1; return true;`,
		"json":             `JSON.parse = () => ({}); return true;`,
		"helper":           `ip_network.prototype = null; return true;`,
		"logger":           `ak_logger.info = () => {}; return true;`,
	} {
		res := evaluate(t, pool, request(name, src))
		require.NotNil(t, res.Err, "%s: the change was allowed", name)
		require.Contains(t, res.Err.Message, "TypeError", name)
	}
	res := evaluate(t, pool, request("later", `return [1].includes(2) || ({}).polluted !== undefined || typeof JSON.parse("{}") !== "object";`))
	require.Nil(t, res.Err)
	require.False(t, res.Passing, "a later policy saw a change")
	res = evaluate(t, pool, request("globals", `globalThis.mine = 1; return request.context.event.action === "login";`))
	require.Nil(t, res.Err, "global variables stay assignable")
	require.True(t, res.Passing)

	// What inherits from the prototypes still takes own properties of
	// their names: data keys, and the name of an Error subclass.
	req := request("own-properties", `class Oops extends Error { constructor(m) { super(m); this.name = "Oops"; } }
const copy = Object.assign({}, context.data);
const e = new Oops("x");
return {keys: Object.keys(context.data).sort().join(","), copy: copy.constructor, error: e.name + ": " + e.message,
        in_error: e instanceof Error};`)
	req.Context = map[string]any{"data": map[string]any{"constructor": "c", "toString": "t", "valueOf": 1}}
	res = evaluate(t, pool, req)
	require.Nil(t, res.Err)
	require.Equal(t, map[string]any{"keys": "constructor,toString,valueOf", "copy": "c", "error": "Oops: x", "in_error": true}, res.Raw)
}
