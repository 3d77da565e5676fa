package jsrt_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/jsrt"
)

// The built-ins that recurse in Go on data a policy makes (JSON.parse, and
// the array methods that turn nested arrays into text, which String(a),
// `${a}`, a + "", throw a and the helpers' string arguments reach) throw a
// RangeError the policy can catch instead of overflowing the Go stack.
// Run in a child process with a small stack, so a regression fails this
// test instead of killing the test binary.
func TestBuiltinsRecursingInGoAreBounded(t *testing.T) {
	t.Parallel()
	inChildProcess(t, func(t *testing.T) {
		pool := newPool(t, jsrt.Config{Size: 1})
		const nested = `let o = []; for (let i = 0; i < 200000; i++) o = [o]; `
		for name, expr := range map[string]string{
			"String":         nested + `return String(o).length;`,
			"join":           nested + `return o.join(",").length;`,
			"template":       nested + "return `${o}`.length;",
			"concatenation":  nested + `return (o + "").length;`,
			"toLocaleString": nested + `return o.toLocaleString().length;`,
			"regex_match":    nested + `return regex_match(o, "x");`,
			"ak_message":     nested + `ak_message(o); return true;`,
			"throw":          nested + `throw o;`,
			"JSON.parse":     `return JSON.parse("[".repeat(200000) + "]".repeat(200000)) !== null;`,
		} {
			req := request("bounded-"+name, expr)
			req.Timeout = time.Minute
			res := evaluate(t, pool, req)
			require.NotNil(t, res.Err, name)
			require.Contains(t, res.Err.Message, "RangeError", name)
			require.Contains(t, res.Err.Message, "nested deeper than", name)
		}

		res := evaluate(t, pool, request("caught", nested+`try { String(o); } catch (e) { return e instanceof RangeError; } return false;`))
		require.Nil(t, res.Err)
		require.True(t, res.Passing, "the RangeError can be caught")
	})
}

// The guarded built-ins behave as before on ordinary values.
func TestGuardedBuiltinsUnchanged(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	res := evaluate(t, pool, request("unchanged", `return [
	String([1, [2, [3]], null, undefined]), [1, 2].join(), [1, 2].join(" - "), [[1], [2]] + "",
	[1234.5, new Date(0)].toLocaleString().length > 0, [].join.name, [].join.length,
	[].toLocaleString.name, Array.prototype.propertyIsEnumerable("join"),
	JSON.parse('{"a": [1, {"b": "[{"}], "c": "\\"]"}'), JSON.parse("[1, 2]", (k, v) => Array.isArray(v) ? v.length : v * 2),
	JSON.parse.name, JSON.parse.length];`))
	require.Nil(t, res.Err)
	require.Equal(t, []any{
		"1,2,3,,", "1,2", "1 - 2", "1,2",
		true, "join", int64(1),
		"toLocaleString", false,
		map[string]any{"a": []any{int64(1), map[string]any{"b": "[{"}}, "c": `"]`}, int64(2),
		"parse", int64(2),
	}, res.Raw)

	// A syntax error is JSON.parse's own.
	res = evaluate(t, pool, request("parse-error", `try { JSON.parse("{"); } catch (e) { return e instanceof SyntaxError; } return false;`))
	require.Nil(t, res.Err)
	require.True(t, res.Passing)
}
