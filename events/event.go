package events

import (
	"bytes"
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
func Decode(data []byte) (Event, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return Event{}, decodeErr("invalid JSON: %v", err)
	}
	if raw == nil {
		return Event{}, decodeErr("payload is null, want a JSON object")
	}
	if dec.More() {
		return Event{}, decodeErr("trailing data after the JSON object")
	}

	var ev Event
	var pk string
	if err := field(raw, "pk", &pk); err != nil {
		return Event{}, err
	}
	if pk == "" {
		return Event{}, decodeErr(`missing "pk"`)
	}
	canon, err := CanonicalUUID(pk)
	if err != nil {
		return Event{}, decodeErr(`"pk": %v`, err)
	}
	ev.PK = canon
	if err := field(raw, "action", &ev.Action); err != nil {
		return Event{}, err
	}
	ev.Action = stripNUL(ev.Action)
	if strings.TrimSpace(ev.Action) == "" {
		return Event{}, decodeErr(`missing "action"`)
	}
	if err := field(raw, "app", &ev.App); err != nil {
		return Event{}, err
	}
	ev.App = stripNUL(ev.App)
	for _, obj := range []struct {
		key string
		dst *map[string]any
	}{{"user", &ev.User}, {"context", &ev.Context}, {"brand", &ev.Brand}} {
		if err := objectField(raw, obj.key, obj.dst); err != nil {
			return Event{}, err
		}
	}
	ev.Context = sanitizeAndCleanse(ev.Context)
	ev.User = Sanitize(ev.User).(map[string]any)
	ev.Brand = Sanitize(ev.Brand).(map[string]any)

	var ip *string
	if err := field(raw, "client_ip", &ip); err != nil {
		return Event{}, err
	}
	if ip != nil && *ip != "" {
		addr, err := netip.ParseAddr(*ip)
		if err != nil {
			return Event{}, decodeErr(`"client_ip": %q is not an IP address`, *ip)
		}
		ev.ClientIP = addr.WithZone("").String() // PostgreSQL's inet has no zones
	}
	var created string
	if err := field(raw, "created", &created); err != nil {
		return Event{}, err
	}
	if created == "" {
		ev.Created = time.Now().UTC()
	} else if ev.Created, err = time.Parse(time.RFC3339Nano, created); err != nil {
		return Event{}, decodeErr(`"created": %q is not an RFC 3339 time`, created)
	}
	ev.Created = ev.Created.UTC()
	for k, v := range raw {
		if known[k] {
			continue
		}
		// Kept, sanitised like the rest: valid UTF-8, no NUL.
		var x any
		dec := json.NewDecoder(bytes.NewReader(v))
		dec.UseNumber()
		if err := dec.Decode(&x); err != nil {
			return Event{}, decodeErr("%q: %v", k, err)
		}
		clean, err := json.Marshal(Sanitize(x))
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

// field decodes raw[key] into dst; a missing key or null leaves dst alone.
func field(raw map[string]json.RawMessage, key string, dst any) error {
	v, ok := raw[key]
	if !ok || string(v) == "null" {
		return nil
	}
	if err := json.Unmarshal(v, dst); err != nil {
		return decodeErr("%q: %s", key, typeProblem(err))
	}
	return nil
}

func objectField(raw map[string]json.RawMessage, key string, dst *map[string]any) error {
	*dst = map[string]any{}
	v, ok := raw[key]
	if !ok || string(v) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return decodeErr("%q: %s", key, typeProblem(err))
	}
	*dst = m
	return nil
}

func typeProblem(err error) string {
	var ute *json.UnmarshalTypeError
	if errors.As(err, &ute) {
		return fmt.Sprintf("got a JSON %s, want %s", ute.Value, ute.Type)
	}
	return err.Error()
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
