package jsrt_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/jsrt"
)

// The event's data is converted on first access; it must behave like
// ordinary objects and arrays, and changes must not reach the event.
func TestEventDataBehavesLikePlainObjects(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	req := request("lazy", `const c = request.context.event.context;
c.list = undefined; // assignment works
const l = ["b", "a"];
const devices = (c.auth_method_args.mfa_devices || []);
const arr = request.context.event.context.tags;
return {
  keys: Object.keys(c).sort(),
  isArray: Array.isArray(arr),
  len: arr.length,
  mapped: arr.map(x => x.toUpperCase()),
  filtered: arr.filter(x => x !== "b"),
  iter: (() => { const out = []; for (const x of arr) out.push(x); return out; })(),
  spread: [...arr, "z"],
  json: JSON.parse(JSON.stringify(c.auth_method_args)),
  has: "auth_method" in c,
  devices: devices.length,
  nested: c.nested.deep.value,
};`)
	req.Event.Context["tags"] = []any{"a", "b", "c"}
	req.Event.Context["nested"] = map[string]any{"deep": map[string]any{"value": int64(7)}}
	res := evaluate(t, pool, req)
	require.Nil(t, res.Err)
	got := res.Raw.(map[string]any)
	require.Equal(t, true, got["isArray"])
	require.EqualValues(t, 3, got["len"])
	require.Equal(t, []any{"A", "B", "C"}, got["mapped"])
	require.Equal(t, []any{"a", "c"}, got["filtered"])
	require.Equal(t, []any{"a", "b", "c"}, got["iter"])
	require.Equal(t, []any{"a", "b", "c", "z"}, got["spread"])
	require.Equal(t, true, got["has"])
	require.EqualValues(t, 7, got["nested"])
	require.Contains(t, got["keys"], "auth_method_args")

	// Writes to arrays and objects stay in the policy.
	req = request("lazy-writes", `const c = request.context.event.context;
c.tags.push("d");
c.tags[0] = "x";
c.tags.length = 2;
delete c.nested;
c.added = 1;
return {tags: c.tags, nested: "nested" in c, added: c.added};`)
	req.Event.Context["tags"] = []any{"a", "b", "c"}
	req.Event.Context["nested"] = map[string]any{"deep": true}
	res = evaluate(t, pool, req)
	require.Nil(t, res.Err)
	got = res.Raw.(map[string]any)
	require.Equal(t, []any{"x", "b"}, got["tags"])
	require.Equal(t, false, got["nested"])
	require.EqualValues(t, 1, got["added"])
	require.Equal(t, []any{"a", "b", "c"}, req.Event.Context["tags"], "the event's own data is unchanged")
	require.Contains(t, req.Event.Context, "nested")
}

func TestResolveAndReverseDNS(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	res := evaluate(t, pool, request("dns", `return {
  any: resolve_dns("localhost"),
  v4: resolve_dns("localhost", 4),
  none: resolve_dns("does-not-exist.invalid"),
  name: reverse_dns("127.0.0.1"),
  bad: reverse_dns("not-an-ip"),
};`))
	require.Nil(t, res.Err)
	got := res.Raw.(map[string]any)
	require.Contains(t, got["v4"], "127.0.0.1")
	for _, a := range got["v4"].([]any) {
		require.NotContains(t, a, ":", "version 4 gives IPv4 addresses only")
	}
	require.NotEmpty(t, got["any"])
	require.Empty(t, got["none"])
	require.NotEmpty(t, got["name"])
	require.Equal(t, "not-an-ip", got["bad"], "an address without a name gives itself back")
}

func TestAkIsSSOFlowIsFalse(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	res := evaluate(t, pool, request("sso", `return ak_is_sso_flow === false ? "yes" : "no";`))
	require.Nil(t, res.Err)
	require.Equal(t, "yes", res.Raw)
}

// Each script gives the same result on the event's data as on a plain copy
// of it: key order after deletes and re-adds and with array-index keys,
// undefined values, defineProperty, spreading, for…in while changing keys.
func TestEventDataBehavesLikeItsPlainCopy(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	scripts := map[string]string{
		"deleteReadd":         `delete c.a; c.a = 9; return Object.keys(c).join(",");`,
		"deleteReaddJSON":     `delete c.a; c.a = 9; return JSON.stringify(c);`,
		"assignUndef":         `c.zz = undefined; return [("zz" in c), Object.keys(c).join(","), JSON.stringify(c), c.hasOwnProperty("zz")].join("|");`,
		"assignUndefExisting": `c.a = undefined; return [("a" in c), Object.keys(c).join(","), JSON.stringify(c), String(c.a)].join("|");`,
		"deleteMissing":       `return String(delete c.nope) + Object.keys(c).join(",");`,
		"spreadAfterDel":      `delete c.b; return JSON.stringify({...c});`,
		"assign":              `delete c.b; c.q = 1; return JSON.stringify(Object.assign({}, c));`,
		"forinDelete":         `const out=[]; for (const k in c) { out.push(k); delete c.b; } return out.join(",");`,
		"forinAdd":            `const out=[]; for (const k in c) { out.push(k); c["n"+out.length] = 1; } return out.join(",");`,
		"hasOwn":              `delete c.a; return [c.hasOwnProperty("a"), "a" in c, c.a === undefined, Object.entries(c).length].join(",");`,
		"entries":             `delete c.a; c.x = 2; return JSON.stringify(Object.entries(c));`,
		"deleteTwice":         `delete c.a; delete c.a; c.a = 1; delete c.a; return [Object.keys(c).join(","), "a" in c].join("|");`,
		"addDeleteAdd":        `c.x = 1; delete c.x; c.y = 2; c.x = 3; return Object.keys(c).join(",");`,
		"arrayIndexKeys":      `return Object.keys(c.num).join(",");`,
		"defineKeeps":         `Object.defineProperty(c, "a", {enumerable: true}); return String(c.a);`,
		"defineNew":           `Object.defineProperty(c, "dn", {value: 5, enumerable: true, writable: true, configurable: true}); return String(c.dn) + Object.keys(c).join(",");`,
		"sameObject":          `return String(c.nest === c.nest);`,
		"null":                `return [c.n === null, "n" in c, JSON.stringify(c.n)].join(",");`,
		"ownNames":            `delete c.b; return Object.getOwnPropertyNames(c).join(",");`,
		"replaced":            `c.b = {x: 1}; delete c.a; c.a = [1]; return JSON.stringify(c);`,
	}
	for name, body := range scripts {
		run := func(copied bool) any {
			pre := `const c = request.context.event.context;`
			if copied {
				pre = `const c = JSON.parse(JSON.stringify(request.context.event.context));`
			}
			req := request(name, pre+body)
			req.Event.Context = map[string]any{"a": int64(1), "b": "two", "c": true, "n": nil,
				"nest": map[string]any{"x": int64(1)}, "num": map[string]any{"b": int64(1), "10": int64(2), "9": int64(3), "09": int64(4)}}
			res := evaluate(t, pool, req)
			require.Nil(t, res.Err, name)
			return res.Raw
		}
		require.Equal(t, run(true), run(false), name)
	}
}
