package events

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// referenceJSON decodes data with encoding/json as Decode once did: one
// value, numbers as json.Number, nothing but whitespace after it.
func referenceJSON(data []byte) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	rest := data[dec.InputOffset():]
	return v, len(bytes.TrimLeft(rest, " \t\r\n")) == 0
}

var parseSeeds = []string{
	loginPayload,
	`{}`, `[]`, `null`, `true`, `false`, `0`, `-0`, `1.5e-3`, `-12E+4`, `""`,
	`{"a": [1, 2, {"b": null}], "c": "d"}`,
	`{"a": 1, "a": 2}`,
	`"\u00e9\ud83d\ude00\/\b\f\n\r\t\"\\"`,
	`"\ud800"`, `"\udc00\ud800x"`, `"\ud800\u0041"`, "\"\xff\xfe\"", "\"caf\xc3\xa9\"",
	`"a\u0000b"`, `{"k\u0000": 1}`,
	`{"a": 01}`, `{"a": 1.}`, `{"a": .5}`, `{"a": 1e}`, `{"a": -}`, `[1,]`, `{"a":1,}`, `{"a" 1}`,
	"\"tab\there\"", `tru`, `nul`, `{"a": tr}`, `[1] [2]`, `{} x`, ` {"a": [ ] } `,
	`{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", "action": "login", "context": {"password": "x", "list": [0, "", null, 1], "n": 1.0, "token": ["a"]}, "user": {"pk": 1e2}}`,
}

// The parser accepts exactly what encoding/json accepts and gives the same
// values.
func FuzzParseJSON(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, wantOK := referenceJSON(data)
		got, _, err := parseJSON(data)
		if !wantOK {
			require.Error(t, err, "encoding/json rejects %q", data)
			return
		}
		require.NoError(t, err, "encoding/json accepts %q", data)
		require.Equal(t, want, got)
	})
}

// normalJSON decodes JSON text into plain values (float64 numbers), for
// comparing documents whatever their spelling.
func normalJSON(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	require.NoError(t, json.Unmarshal(data, &v), "%s", data)
	return v
}

// The input that Decode keeps for storing an object is the same document
// as the object it decoded, sanitised and cleansed, encoded again.
func FuzzDecodeStoredJSON(f *testing.F) {
	for _, s := range parseSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := Decode(data)
		if err != nil {
			return
		}
		user, context, brand := ev.StoredJSON()
		for _, c := range []struct {
			raw []byte
			obj map[string]any
		}{{user, ev.User}, {context, ev.Context}, {brand, ev.Brand}} {
			if c.raw == nil {
				continue
			}
			encoded, err := json.Marshal(c.obj)
			require.NoError(t, err)
			require.Equal(t, normalJSON(t, encoded), normalJSON(t, c.raw), "input %q", data)
		}
	})
}

func TestDecodeKeepsUnchangedObjectsAsTheyCame(t *testing.T) {
	t.Parallel()
	ev, err := Decode([]byte(loginPayload))
	require.NoError(t, err)
	user, context, brand := ev.StoredJSON()
	require.JSONEq(t, `{"pk": 12, "email": "jane@example.com", "username": "jane"}`, string(user))
	require.Nil(t, context, "the login context has floats (geo), which are encoded again")
	require.NotNil(t, brand)
	require.Equal(t, int64(12), ev.User["pk"], "numbers are still converted")

	ev, err = Decode([]byte(`{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", "action": "login",
		"context": {"auth_method": "password", "auth_method_args": {"known_device": true}, "count": 3},
		"user": {"pk": 1, "password": "hunter2"}}`))
	require.NoError(t, err)
	user, context, brand = ev.StoredJSON()
	require.NotNil(t, context)
	require.NotNil(t, user, "user objects are sanitised, not cleansed")
	require.Nil(t, brand, "absent")

	for _, payload := range []string{
		`{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", "action": "login", "context": {"api_key": "s3cret"}}`,
		`{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", "action": "login", "context": {"list": ["a", ""]}}`,
		`{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", "action": "login", "context": {"s": "a\u0000b"}}`,
		"{\"pk\": \"9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e\", \"action\": \"login\", \"context\": {\"s\": \"\xff\"}}",
		`{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", "action": "login", "context": {"n": 1e2}}`,
		// A dropped duplicate is still in the input, and PostgreSQL rejects it.
		`{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", "action": "login", "context": {"a": "x\u0000", "a": "y"}}`,
		`{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", "action": "login", "context": {"a": {"n": 1e9999999, "n": 1}}}`,
	} {
		ev, err := Decode([]byte(payload))
		require.NoError(t, err)
		_, context, _ := ev.StoredJSON()
		require.Nil(t, context, "%s", payload)
	}
}
