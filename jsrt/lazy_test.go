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
