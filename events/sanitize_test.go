package events

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSanitizeDropsFalsyListItems(t *testing.T) {
	t.Parallel()

	in := []any{
		nil, false, int64(0), 0.0, "", []any{}, map[string]any{}, json.Number("0"), json.Number("0.0"),
		"a", int64(1), true, json.Number("2.5"), []any{"x"}, map[string]any{"k": "v"}, json.Number("7"),
	}
	got := Sanitize(in)
	require.Equal(t, []any{"a", int64(1), true, 2.5, []any{"x"}, map[string]any{"k": "v"}, int64(7)}, got)
}

func TestSanitizeNestedListsInMaps(t *testing.T) {
	t.Parallel()

	in := map[string]any{
		"items": []any{"", map[string]any{"inner": []any{nil, "keep"}}, []any{}},
		// Falsy values are kept when they are map values, not list items.
		"flag":  false,
		"count": json.Number("0"),
		"none":  nil,
	}
	got := Sanitize(in)
	require.Equal(t, map[string]any{
		"items": []any{map[string]any{"inner": []any{"keep"}}},
		"flag":  false,
		"count": int64(0),
		"none":  nil,
	}, got)
	// The input is not changed.
	require.Len(t, in["items"], 3)
}

func TestSanitizeStripsNUL(t *testing.T) {
	t.Parallel()

	got := Sanitize(map[string]any{
		"msg\x00": "a\x00b\x00c",
		"list":    []any{"\x00", "x\x00"},
		"nested":  map[string]any{"s": "\x00only"},
	})
	require.Equal(t, map[string]any{
		"msg": "abc",
		// "\x00" becomes "", which is falsy, so it is dropped from the list.
		"list":   []any{"x"},
		"nested": map[string]any{"s": "only"},
	}, got)
}

func TestSanitizeNumbers(t *testing.T) {
	t.Parallel()

	require.Equal(t, int64(42), Sanitize(json.Number("42")))
	require.Equal(t, int64(-3), Sanitize(json.Number("-3")))
	require.Equal(t, 52.37, Sanitize(json.Number("52.37")))
	require.Equal(t, 1e300, Sanitize(json.Number("1e300")))
	require.Nil(t, Sanitize(nil))
}

func TestCleanse(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name string
		key  string
		val  any
		want any
	}{
		// Hidden: the key contains API, AUTH, TOKEN, KEY, SECRET, PASS,
		// SIGNATURE or HTTP_COOKIE anywhere, in any case.
		{name: "Password", key: "password", val: "hunter2", want: CleansedValue},
		{name: "PasswordUpper", key: "PASSWORD", val: "hunter2", want: CleansedValue},
		{name: "APIKey", key: "api_key", val: "abc", want: CleansedValue},
		{name: "Token", key: "Token", val: "abc", want: CleansedValue},
		{name: "ClientSecret", key: "client_secret", val: "abc", want: CleansedValue},
		{name: "Signature", key: "signature", val: "abc", want: CleansedValue},
		{name: "HTTPCookie", key: "HTTP_COOKIE", val: "a=b", want: CleansedValue},
		{name: "AuthorSubstring", key: "author", val: "Jane", want: CleansedValue},
		{name: "MonkeySubstring", key: "monkey", val: "George", want: CleansedValue},
		{name: "CompassSubstring", key: "compass", val: "north", want: CleansedValue},
		{name: "CapitalSubstring", key: "capital", val: "Paris", want: CleansedValue},
		{name: "NumberValue", key: "pin_key", val: int64(1234), want: CleansedValue},
		{name: "BoolValue", key: "secret", val: true, want: CleansedValue},
		{name: "NullValue", key: "password", val: nil, want: CleansedValue},
		{name: "ListUnderSecretKey", key: "tokens", val: []any{"a", "b"}, want: []any{CleansedValue, CleansedValue}},
		// A map under a secret key is cleansed by its own keys.
		{name: "MapUnderSecretKey", key: "auth", val: map[string]any{"name": "x", "token": "y"}, want: map[string]any{"name": "x", "token": CleansedValue}},
		{name: "MapsInListUnderSecretKey", key: "keys", val: []any{map[string]any{"name": "x"}}, want: []any{map[string]any{"name": "x"}}},
		// authentik's ALLOWED_SPECIAL_KEYS.
		{name: "Passing", key: "passing", val: false, want: false},
		{name: "PasswordChangeDate", key: "password_change_date", val: "2026-04-20T10:20:00Z", want: "2026-04-20T10:20:00Z"},
		{name: "AuthMethod", key: "auth_method", val: "password", want: "password"},
		{name: "AuthMethodArgs", key: "auth_method_args", val: "x", want: "x"},
		{name: "AuthMethodUpper", key: "AUTH_METHOD", val: "password", want: "password"},
		// auth_method(_args) is anchored; passing and password_change_date are not.
		{name: "PrefixedAuthMethod", key: "my_auth_method", val: "password", want: CleansedValue},
		{name: "AuthMethodSuffix", key: "auth_method_argsx", val: "x", want: CleansedValue},
		{name: "PasswordChangeDateInside", key: "last_password_change_date", val: "d", want: "d"},
		// Keys that are not secret.
		{name: "Username", key: "username", val: "jane", want: "jane"},
		{name: "Message", key: "message", val: "hello", want: "hello"},
		{name: "List", key: "groups", val: []any{"a", "b"}, want: []any{"a", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := Cleanse(map[string]any{tt.key: tt.val, "other": "kept"})
			require.Equal(t, map[string]any{tt.key: tt.want, "other": "kept"}, got)
		})
	}
}

func TestCleanseRecursesIntoNestedMaps(t *testing.T) {
	t.Parallel()

	in := map[string]any{
		"model": map[string]any{"app": "authentik_core", "model_name": "user", "pk": int64(12)},
		"diff": map[string]any{
			"password":             map[string]any{"previous_value": "old", "new_value": "new"},
			"password_change_date": map[string]any{"previous_value": nil, "new_value": "2026-04-20T10:20:00Z"},
			"attributes": map[string]any{
				"settings": map[string]any{"api_token": "abc", "theme": "dark"},
			},
		},
		"http_request": map[string]any{
			"args": map[string]any{"token": "t", "next": "/"},
		},
	}
	got := Cleanse(in)
	require.Equal(t, map[string]any{
		"model": map[string]any{"app": "authentik_core", "model_name": "user", "pk": int64(12)},
		"diff": map[string]any{
			// The value under "password" is a map, so it is recursed into and
			// its own keys decide.
			"password":             map[string]any{"previous_value": "old", "new_value": "new"},
			"password_change_date": map[string]any{"previous_value": nil, "new_value": "2026-04-20T10:20:00Z"},
			"attributes": map[string]any{
				"settings": map[string]any{"api_token": CleansedValue, "theme": "dark"},
			},
		},
		"http_request": map[string]any{
			"args": map[string]any{"token": CleansedValue, "next": "/"},
		},
	}, got)

	// The input is not changed.
	require.Equal(t, "t", in["http_request"].(map[string]any)["args"].(map[string]any)["token"])
	require.Equal(t, "abc", in["diff"].(map[string]any)["attributes"].(map[string]any)["settings"].(map[string]any)["api_token"])
}

func BenchmarkCleanse(b *testing.B) {
	ev, err := Decode([]byte(loginPayload))
	if err != nil {
		b.Fatal(err)
	}
	ctx := ev.Context
	ctx["diff"] = map[string]any{
		"password":  map[string]any{"previous_value": "old", "new_value": "new"},
		"api_token": "abc",
		"groups":    map[string]any{"add": []any{int64(1), int64(2), int64(3)}},
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = Cleanse(ctx)
	}
}

// Secret keys are matched as Python's re with re.I matches them: the
// dotless ı is an i, and $ also matches before a final newline.
func TestCleanseKeysAsPython(t *testing.T) {
	t.Parallel()
	for key, hidden := range map[string]bool{
		"apı": true, "sıgnature": true, "auth_method\n": false, "auth_method_args\n": false,
		"\u212aey": true, "paſs": true, "AUTH_METHOD": false, "Author": true,
		"password_change_date": false, "passing": false, "auth_methods": true,
	} {
		kj, err := json.Marshal(key)
		require.NoError(t, err)
		ev, err := Decode([]byte(`{"pk": "0b470dce-99b5-4960-9eb1-a3af15ea6973", "action": "login",
"context": {` + string(kj) + `: "v", "l": [{` + string(kj) + `: "v"}]}}`))
		require.NoError(t, err)
		want := any("v")
		if hidden {
			want = CleansedValue
		}
		require.Equal(t, want, ev.Context[key], "%q", key)
		require.Equal(t, want, ev.Context["l"].([]any)[0].(map[string]any)[key], "%q in a list", key)
	}
}

// Keys that become one once NUL is removed give the same object on every
// decode (the key that had no NUL is kept), in the context as in the user
// and brand.
func TestKeysThatCollideWithoutNULDecodeTheSame(t *testing.T) {
	t.Parallel()
	for _, field := range []string{"context", "user", "brand"} {
		payload := []byte(`{"pk": "0b470dce-99b5-4960-9eb1-a3af15ea6973", "action": "login", "` + field +
			`": {"a\u0000b": "first", "ab": "second", "c\u0000": 1, "x\u0000": 3, "\u0000x": 4, "d": [2]}}`)
		for range 100 {
			ev, err := Decode(payload)
			require.NoError(t, err)
			m := map[string]map[string]any{"context": ev.Context, "user": ev.User, "brand": ev.Brand}[field]
			require.Equal(t, map[string]any{"ab": "second", "c": int64(1), "x": int64(4), "d": []any{int64(2)}}, m, field)
		}
	}
}
