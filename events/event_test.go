package events

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// loginPayload is authentik's login event (authentik-semantics.md §5.3) as
// published, with a pk and the stored-row keys expires and expiring, which
// the wire format does not name.
const loginPayload = `{
  "pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e",
  "user": {"pk": 12, "email": "jane@example.com", "username": "jane"},
  "action": "login",
  "app": "authentik.events.signals",
  "context": {
    "auth_method": "password",
    "auth_method_args": {"known_device": false},
    "http_request": {"path": "/api/v3/flows/executor/default-authentication-flow/", "method": "GET",
                     "args": {"next": "/"}, "user_agent": "Mozilla/5.0 ...", "request_id": "9a0c5d2e7b1f4c3a8e6d0f1a2b3c4d5e"},
    "geo": {"continent": "EU", "country": "NL", "lat": 52.37, "long": 4.89, "city": "Amsterdam"},
    "asn": {"asn": 64500, "as_org": "Example ISP", "network": "198.51.100.0/24"}
  },
  "client_ip": "198.51.100.23",
  "created": "2026-04-20T10:15:30.123456Z",
  "expires": "2027-04-20T10:15:30.120001Z",
  "expiring": true,
  "brand": {"app": "authentik_brands", "model_name": "brand", "pk": "0f6f3c6e9b1d4c1f8a2e5d7b9c3a1e4f", "name": "Default brand"}
}`

func TestDecodeAuthentikEvent(t *testing.T) {
	t.Parallel()

	ev, err := Decode([]byte(loginPayload))
	require.NoError(t, err)

	require.Equal(t, "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", ev.PK)
	require.Equal(t, "login", ev.Action)
	require.Equal(t, "authentik.events.signals", ev.App)
	require.Equal(t, map[string]any{"pk": int64(12), "email": "jane@example.com", "username": "jane"}, ev.User)
	pk, ok := ev.UserPK()
	require.True(t, ok)
	require.Equal(t, int64(12), pk)

	require.Equal(t, "password", ev.Context["auth_method"])
	require.Equal(t, map[string]any{"known_device": false}, ev.Context["auth_method_args"])
	httpRequest := ev.Context["http_request"].(map[string]any)
	require.Equal(t, map[string]any{"next": "/"}, httpRequest["args"])
	require.Equal(t, "Mozilla/5.0 ...", httpRequest["user_agent"])
	geo := ev.Context["geo"].(map[string]any)
	require.Equal(t, 52.37, geo["lat"])
	require.Equal(t, int64(64500), ev.Context["asn"].(map[string]any)["asn"])

	require.Equal(t, "198.51.100.23", ev.ClientIP)
	require.True(t, ev.Created.Equal(time.Date(2026, 4, 20, 10, 15, 30, 123456000, time.UTC)), "created: %s", ev.Created)
	require.Equal(t, "Default brand", ev.Brand["name"])

	require.Len(t, ev.Extra, 2)
	require.JSONEq(t, `"2027-04-20T10:15:30.120001Z"`, string(ev.Extra["expires"]))
	require.JSONEq(t, `true`, string(ev.Extra["expiring"]))
}

func TestDecodeMinimalEvent(t *testing.T) {
	t.Parallel()

	before := time.Now()
	ev, err := Decode([]byte(`{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", "action": "custom_thing", "client_ip": null, "user": null}`))
	require.NoError(t, err)
	require.Equal(t, "custom_thing", ev.Action)
	require.Empty(t, ev.ClientIP)
	require.NotNil(t, ev.User)
	require.Empty(t, ev.User)
	require.NotNil(t, ev.Context)
	require.Empty(t, ev.Context)
	require.Empty(t, ev.Extra)
	_, ok := ev.UserPK()
	require.False(t, ok)
	// created defaults to now.
	require.False(t, ev.Created.Before(before.Add(-time.Second)))
	require.False(t, ev.Created.After(time.Now().Add(time.Second)))
}

func TestDecodeCanonicalisesPK(t *testing.T) {
	t.Parallel()

	tests := []struct{ name, pk string }{
		{name: "DashlessHex", pk: "9a0c5d2e7b1f4c3a8e6d0f1a2b3c4d5e"},
		{name: "DashlessUpperHex", pk: "9A0C5D2E7B1F4C3A8E6D0F1A2B3C4D5E"},
		{name: "DashedUpper", pk: "9A0C5D2E-7B1F-4C3A-8E6D-0F1A2B3C4D5E"},
		{name: "Dashed", pk: "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := Decode([]byte(`{"pk": "` + tt.pk + `", "action": "login"}`))
			require.NoError(t, err)
			require.Equal(t, "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", ev.PK)
		})
	}
}

func TestDecodeSanitisesAndCleansesContext(t *testing.T) {
	t.Parallel()

	ev, err := Decode([]byte(`{"pk": "9a0c5d2e7b1f4c3a8e6d0f1a2b3c4d5e", "action": "model_updated",
  "context": {"password": "hunter2", "tags": ["a", "", null, 0, false, "b"], "note": "x\u0000y",
              "diff": {"password_change_date": {"new_value": "2026-04-20T10:20:00Z"}, "api_key": "abc"}}}`))
	require.NoError(t, err)
	require.Equal(t, CleansedValue, ev.Context["password"])
	require.Equal(t, []any{"a", "b"}, ev.Context["tags"])
	require.Equal(t, "xy", ev.Context["note"])
	diff := ev.Context["diff"].(map[string]any)
	require.Equal(t, map[string]any{"new_value": "2026-04-20T10:20:00Z"}, diff["password_change_date"])
	require.Equal(t, CleansedValue, diff["api_key"])

	// A null under a secret key is masked too, as authentik's cleanse_item
	// does, and so is what is stored.
	ev, err = Decode([]byte(`{"pk": "9a0c5d2e7b1f4c3a8e6d0f1a2b3c4d5e", "action": "login", "context": {"password": null, "note": null}}`))
	require.NoError(t, err)
	require.Equal(t, map[string]any{"password": CleansedValue, "note": nil}, ev.Context)
	_, stored, _ := ev.StoredJSON()
	require.Nil(t, stored, "the context changed: it must be encoded again")
}

func TestEventMarshalJSONRoundTrip(t *testing.T) {
	t.Parallel()

	ev, err := Decode([]byte(loginPayload))
	require.NoError(t, err)
	data, err := json.Marshal(ev)
	require.NoError(t, err)

	var wire map[string]any
	require.NoError(t, json.Unmarshal(data, &wire))
	// Unknown keys are written back as they came.
	require.Equal(t, "2027-04-20T10:15:30.120001Z", wire["expires"])
	require.Equal(t, true, wire["expiring"])
	require.Equal(t, "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", wire["pk"])
	require.Equal(t, "login", wire["action"])
	require.Equal(t, "198.51.100.23", wire["client_ip"])
	require.Equal(t, "2026-04-20T10:15:30.123456Z", wire["created"])
	require.Equal(t, "jane", wire["user"].(map[string]any)["username"])
	require.Equal(t, "Default brand", wire["brand"].(map[string]any)["name"])

	again, err := Decode(data)
	require.NoError(t, err)
	require.Equal(t, ev.PK, again.PK)
	require.Equal(t, ev.User, again.User)
	require.Equal(t, ev.Context, again.Context)
	require.Equal(t, ev.Brand, again.Brand)
	require.Equal(t, ev.ClientIP, again.ClientIP)
	require.True(t, ev.Created.Equal(again.Created))
	require.Len(t, again.Extra, 2)
	require.JSONEq(t, string(ev.Extra["expires"]), string(again.Extra["expires"]))
	require.JSONEq(t, string(ev.Extra["expiring"]), string(again.Extra["expiring"]))
}

func TestEventMarshalJSONNullClientIP(t *testing.T) {
	t.Parallel()

	data, err := json.Marshal(Event{PK: "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", Action: "login"})
	require.NoError(t, err)
	var wire map[string]any
	require.NoError(t, json.Unmarshal(data, &wire))
	require.Contains(t, wire, "client_ip")
	require.Nil(t, wire["client_ip"])
	require.Equal(t, map[string]any{}, wire["context"])
	require.Equal(t, map[string]any{}, wire["user"])
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()

	const pk = `"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e"`
	tests := []struct {
		name    string
		payload string
		reason  string // a substring of DecodeError.Reason
	}{
		{name: "InvalidJSON", payload: `{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5e", "action":`, reason: "invalid JSON"},
		{name: "NotJSON", payload: `login`, reason: "invalid JSON"},
		{name: "Empty", payload: ``, reason: "invalid JSON"},
		{name: "JSONArray", payload: `[{` + pk + `, "action": "login"}]`},
		{name: "JSONString", payload: `"login"`},
		{name: "Null", payload: `null`},
		{name: "TrailingData", payload: `{` + pk + `, "action": "login"} {}`, reason: "trailing"},
		{name: "MissingPK", payload: `{"action": "login"}`, reason: `"pk"`},
		{name: "EmptyPK", payload: `{"pk": "", "action": "login"}`, reason: `"pk"`},
		{name: "NullPK", payload: `{"pk": null, "action": "login"}`, reason: `"pk"`},
		{name: "NumericPK", payload: `{"pk": 12, "action": "login"}`, reason: `"pk"`},
		{name: "NonUUIDPK", payload: `{"pk": "not-a-uuid", "action": "login"}`, reason: `"pk"`},
		{name: "NonHexPK", payload: `{"pk": "9a0c5d2e-7b1f-4c3a-8e6d-0f1a2b3c4d5g", "action": "login"}`, reason: `"pk"`},
		{name: "MisplacedDashesPK", payload: `{"pk": "9a0c5d2e7-b1f-4c3a-8e6d-0f1a2b3c4d5e", "action": "login"}`, reason: `"pk"`},
		{name: "ShortPK", payload: `{"pk": "9a0c5d2e7b1f4c3a8e6d0f1a2b3c4d5", "action": "login"}`, reason: `"pk"`},
		{name: "MissingAction", payload: `{` + pk + `}`, reason: `"action"`},
		{name: "EmptyAction", payload: `{` + pk + `, "action": ""}`, reason: `"action"`},
		{name: "BlankAction", payload: `{` + pk + `, "action": "  "}`, reason: `"action"`},
		{name: "NumericAction", payload: `{` + pk + `, "action": 1}`, reason: `"action"`},
		{name: "ContextString", payload: `{` + pk + `, "action": "login", "context": "hello"}`, reason: `"context"`},
		{name: "ContextArray", payload: `{` + pk + `, "action": "login", "context": []}`, reason: `"context"`},
		{name: "UserString", payload: `{` + pk + `, "action": "login", "user": "jane"}`, reason: `"user"`},
		{name: "ClientIPNotIP", payload: `{` + pk + `, "action": "login", "client_ip": "not-an-ip"}`, reason: `"client_ip"`},
		{name: "ClientIPOutOfRange", payload: `{` + pk + `, "action": "login", "client_ip": "256.1.1.1"}`, reason: `"client_ip"`},
		{name: "ClientIPNumber", payload: `{` + pk + `, "action": "login", "client_ip": 1}`, reason: `"client_ip"`},
		{name: "CreatedNotATime", payload: `{` + pk + `, "action": "login", "created": "yesterday"}`, reason: `"created"`},
		// PostgreSQL has no year 0.
		{name: "CreatedInYearZero", payload: `{` + pk + `, "action": "login", "created": "0000-06-01T00:00:00Z"}`, reason: `"created"`},
		{name: "CreatedInYearZeroInUTC", payload: `{` + pk + `, "action": "login", "created": "0001-01-01T00:00:00+01:00"}`, reason: `"created"`},
		{name: "CreatedWithoutZone", payload: `{` + pk + `, "action": "login", "created": "2026-04-20T10:15:30"}`, reason: `"created"`},
		{name: "CreatedNumber", payload: `{` + pk + `, "action": "login", "created": 1776680130}`, reason: `"created"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ev, err := Decode([]byte(tt.payload))
			var derr *DecodeError
			require.ErrorAs(t, err, &derr, "payload %s decoded to %+v", tt.payload, ev)
			require.Contains(t, derr.Reason, tt.reason)
			require.True(t, strings.HasPrefix(err.Error(), "decode event: "), err.Error())
			require.Empty(t, ev.PK)
		})
	}
}

func TestCanonicalUUID(t *testing.T) {
	t.Parallel()

	got, err := CanonicalUUID("C0FFEE00C0FFEE00C0FFEE00C0FFEE00")
	require.NoError(t, err)
	require.Equal(t, "c0ffee00-c0ff-ee00-c0ff-ee00c0ffee00", got)

	for _, bad := range []string{"", "c0ffee00", "c0ffee00-c0ff-ee00-c0ff-ee00c0ffee0", "c0ffee00-c0ffee00-c0ff-ee00c0ffee00", "{c0ffee00-c0ff-ee00-c0ff-ee00c0ffee00}"} {
		_, err := CanonicalUUID(bad)
		require.Error(t, err, "%q", bad)
	}
}

func BenchmarkDecode(b *testing.B) {
	data := []byte(loginPayload)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}
