package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Event is one audit event, in authentik's shape. The zero value of each map
// field is treated as an empty object.
type Event struct {
	// PK is the event's UUID in its canonical dashed form; it is the
	// idempotency key.
	PK     string
	Action string
	App    string
	// User is {"pk": int, "username": str, "email": str} or empty.
	User map[string]any
	// Context is the sanitised and cleansed event context.
	Context map[string]any
	// ClientIP is the client address, or "" when the event has none.
	ClientIP string
	Created  time.Time
	Brand    map[string]any
	// Extra holds top-level keys the contract does not name; they are kept.
	Extra map[string]json.RawMessage

	// stored holds the input of user, context and brand when decoding
	// left them exactly as they came, so that they can be stored without
	// encoding them again (see [Event.StoredJSON]).
	stored *storedJSON
}

// DecodeError reports a message that can never become an event. Messages
// that fail with a DecodeError are dead-lettered, not redelivered.
type DecodeError struct {
	Reason string
}

func (e *DecodeError) Error() string { return "decode event: " + e.Reason }

func decodeErr(format string, args ...any) error {
	return &DecodeError{Reason: fmt.Sprintf(format, args...)}
}

// known lists the keys of the wire format; others go to Event.Extra.
var known = map[string]bool{
	"pk": true, "action": true, "app": true, "user": true, "context": true,
	"client_ip": true, "created": true, "brand": true,
}

// Decode parses one event payload strictly: it must be a single JSON
// object with a UUID "pk" and a non-empty string "action"; "user",
// "context" and "brand" must be objects or null, "client_ip" an IP address
// or null, and "created" an RFC 3339 time (now when missing). The context is
// passed through [Sanitize] and [Cleanse]. Errors are [*DecodeError]s.
func Decode(data []byte) (Event, error) { return decode(data, time.Now) }

// decode is [Decode] with the created time of an event that has none.
func decode(data []byte, createdWhenMissing func() time.Time) (Event, error) {
	top, parsed, err := parseJSON(data)
	if errors.Is(err, errTrailing) {
		return Event{}, decodeErr("trailing data after the JSON object")
	}
	if err != nil {
		return Event{}, decodeErr("invalid JSON: %v", err)
	}
	raw, ok := top.(map[string]any)
	if !ok {
		return Event{}, decodeErr("payload is %s, want a JSON object", jsonType(top))
	}

	var ev Event
	pk, err := stringField(raw, "pk")
	if err != nil {
		return Event{}, err
	}
	if pk == "" {
		return Event{}, decodeErr(`missing "pk"`)
	}
	if ev.PK, err = CanonicalUUID(pk); err != nil {
		return Event{}, decodeErr(`"pk": %v`, err)
	}
	if ev.Action, err = stringField(raw, "action"); err != nil {
		return Event{}, err
	}
	ev.Action = stripNUL(ev.Action)
	if strings.TrimSpace(ev.Action) == "" {
		return Event{}, decodeErr(`missing "action"`)
	}
	if ev.App, err = stringField(raw, "app"); err != nil {
		return Event{}, err
	}
	ev.App = stripNUL(ev.App)
	if ev.User, err = objectField(raw, "user"); err != nil {
		return Event{}, err
	}
	if ev.Context, err = objectField(raw, "context"); err != nil {
		return Event{}, err
	}
	if ev.Brand, err = objectField(raw, "brand"); err != nil {
		return Event{}, err
	}
	userAsIs, brandAsIs := sanitizedAsIs(ev.User), sanitizedAsIs(ev.Brand)
	if !parsed.repaired {
		ev.stored = &storedJSON{
			user:    parsed.member("user", userAsIs),
			context: parsed.member("context", contextAsIs(ev.Context)),
			brand:   parsed.member("brand", brandAsIs),
		}
	}
	ev.Context = sanitizeAndCleanse(ev.Context)
	ev.User = sanitizeInPlace(ev.User, userAsIs)
	ev.Brand = sanitizeInPlace(ev.Brand, brandAsIs)

	ip, err := stringField(raw, "client_ip")
	if err != nil {
		return Event{}, err
	}
	if ip != "" {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			return Event{}, decodeErr(`"client_ip": %q is not an IP address`, ip)
		}
		ev.ClientIP = addr.WithZone("").String() // PostgreSQL's inet has no zones
	}
	created, err := stringField(raw, "created")
	if err != nil {
		return Event{}, err
	}
	if created == "" {
		ev.Created = createdWhenMissing()
	} else if ev.Created, err = time.Parse(time.RFC3339Nano, created); err != nil {
		return Event{}, decodeErr(`"created": %q is not an RFC 3339 time`, created)
	}
	ev.Created = ev.Created.UTC()
	if ev.Created.Year() < 1 {
		return Event{}, decodeErr(`"created": %q is before the year 1`, created)
	}
	for k, v := range raw {
		if known[k] {
			continue
		}
		// Kept, sanitised like the rest: valid UTF-8, no NUL.
		clean, err := json.Marshal(Sanitize(v))
		if err != nil {
			return Event{}, decodeErr("%q: %v", k, err)
		}
		if ev.Extra == nil {
			ev.Extra = make(map[string]json.RawMessage)
		}
		ev.Extra[stripNUL(k)] = clean
	}
	return ev, nil
}

// stringField returns raw[key] as a string; missing or null is "".
// storedJSON is the input of an event's objects that decoding left as
// they came; a nil member was changed (or absent) and must be encoded.
type storedJSON struct {
	user, context, brand []byte
}

// StoredJSON returns the JSON input of the event's user, context and brand
// objects when decoding kept them exactly as they came (nothing to
// sanitise or cleanse), nil for those it changed or that the event did not
// carry, and for events not decoded by [Decode].
func (e *Event) StoredJSON() (user, context, brand []byte) {
	if e.stored == nil {
		return nil, nil, nil
	}
	return e.stored.user, e.stored.context, e.stored.brand
}

func stringField(raw map[string]any, key string) (string, error) {
	switch v := raw[key].(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	default:
		return "", decodeErr("%q: got %s, want a string", key, jsonType(v))
	}
}

// objectField returns raw[key] as an object; missing or null is {}.
func objectField(raw map[string]any, key string) (map[string]any, error) {
	switch v := raw[key].(type) {
	case nil:
		return map[string]any{}, nil
	case map[string]any:
		return v, nil
	default:
		return nil, decodeErr("%q: got %s, want an object", key, jsonType(v))
	}
}

func jsonType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a JSON string"
	case json.Number:
		return "a JSON number"
	case bool:
		return "a JSON boolean"
	case []any:
		return "a JSON array"
	case map[string]any:
		return "a JSON object"
	}
	return fmt.Sprintf("%T", v)
}

// CanonicalUUID accepts a UUID in dashed or authentik's dashless hex form
// (any case) and returns the lower-case dashed form.
func CanonicalUUID(s string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(s, "-", ""))
	if len(h) != 32 || (len(s) != 32 && len(s) != 36) {
		return "", fmt.Errorf("%q is not a UUID", s)
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", fmt.Errorf("%q is not a UUID", s)
		}
	}
	if len(s) == 36 && (s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-') {
		return "", fmt.Errorf("%q is not a UUID", s)
	}
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

// UserPK returns the event user's pk, if the event has one.
func (e *Event) UserPK() (int64, bool) {
	return Int64(e.User["pk"])
}

// Int64 converts a decoded JSON number (int64, float64 or json.Number) to
// an int64, if it is an integer.
func Int64(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case int:
		return int64(n), true
	case float64:
		if n == float64(int64(n)) {
			return int64(n), true
		}
	case json.Number:
		i, err := n.Int64()
		return i, err == nil
	case string:
		i, err := strconv.ParseInt(n, 10, 64)
		return i, err == nil
	}
	return 0, false
}

// wire is the JSON shape of an Event.
func (e Event) wire() map[string]any {
	m := make(map[string]any, len(e.Extra)+8)
	for k, v := range e.Extra {
		m[k] = v
	}
	m["pk"] = e.PK
	m["action"] = e.Action
	m["app"] = e.App
	m["user"] = orEmpty(e.User)
	m["context"] = orEmpty(e.Context)
	m["brand"] = orEmpty(e.Brand)
	if e.ClientIP == "" {
		m["client_ip"] = nil
	} else {
		m["client_ip"] = e.ClientIP
	}
	m["created"] = e.Created.UTC().Format(time.RFC3339Nano)
	return m
}

// MarshalJSON encodes the event in the wire format of DESIGN.md §2.
func (e Event) MarshalJSON() ([]byte, error) {
	return json.Marshal(e.wire())
}

// Clone returns a copy of e whose maps can be changed without touching e.
func (e Event) Clone() Event {
	e.User = deepCopy(orEmpty(e.User)).(map[string]any)
	e.Context = deepCopy(orEmpty(e.Context)).(map[string]any)
	e.Brand = deepCopy(orEmpty(e.Brand)).(map[string]any)
	e.Extra = maps.Clone(e.Extra)
	return e
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

func deepCopy(v any) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			out[k] = deepCopy(x)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = deepCopy(x)
		}
		return out
	default:
		return v
	}
}

// CanonicalIP validates an IP address and returns its canonical form.
func CanonicalIP(s string) (string, error) {
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return "", fmt.Errorf("%q is not an IP address", s)
	}
	return addr.String(), nil
}
