package events

import (
	"encoding/json"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Sanitize returns v as authentik stores event data (its sanitize_item):
// JSON numbers become int64 or float64, NUL characters are removed from
// strings (PostgreSQL's jsonb cannot hold them), and falsy items (null,
// false, 0, "", [] and {}) are dropped from lists. Maps are rebuilt, never
// changed in place.
func Sanitize(v any) any {
	switch t := v.(type) {
	case nil:
		return nil
	case map[string]any:
		out := make(map[string]any, len(t))
		var withNUL []string
		for k, x := range t {
			if strings.IndexByte(k, 0) >= 0 {
				withNUL = append(withNUL, k)
				continue
			}
			out[k] = Sanitize(x)
		}
		for _, k := range nulKeysInOrder(withNUL) {
			if s := stripNUL(k); !hasKey(out, s) {
				out[s] = Sanitize(t[k])
			}
		}
		return out
	case []any:
		out := make([]any, 0, len(t))
		for _, x := range t {
			if x = Sanitize(x); truthy(x) {
				out = append(out, x)
			}
		}
		return out
	case string:
		return stripNUL(t)
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		f, err := t.Float64()
		if err != nil || math.IsInf(f, 0) {
			return t.String()
		}
		return f
	default:
		return v
	}
}

func stripNUL(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "")
}

// truthy reports Python truthiness of a sanitised JSON value.
func truthy(v any) bool {
	switch t := v.(type) {
	case nil:
		return false
	case bool:
		return t
	case int64:
		return t != 0
	case float64:
		return t != 0
	case string:
		return t != ""
	case []any:
		return len(t) > 0
	case map[string]any:
		return len(t) > 0
	}
	return true
}

// CleansedValue replaces values whose keys look secret.
const CleansedValue = "********************"

var (
	hiddenKey = regexp.MustCompile(`(?i)API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE`)
	// Python's $ also matches before a final newline.
	allowedKey = regexp.MustCompile(`(?i)passing|password_change_date|^auth_method(_args)?\n?$`)
)

// Cleanse returns m with the scalar values of secret-looking keys replaced
// by [CleansedValue], as authentik's cleanse_dict does: a key is secret when
// it contains API, AUTH, TOKEN, KEY, SECRET, PASS, SIGNATURE or HTTP_COOKIE
// (any case, anywhere in the key, so "author" and "monkey" are hidden too)
// unless it matches passing, password_change_date, auth_method or
// auth_method_args. Nested maps are cleansed by their own keys; list items
// by the key that holds the list.
func Cleanse(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = cleanseItem(k, v)
	}
	return out
}

// secretKeys caches hiddenKey decisions: the same keys recur in every event.
var secretKeys sync.Map // string -> bool

func secretKey(key string) bool {
	if v, ok := secretKeys.Load(key); ok {
		return v.(bool)
	}
	// Python's re.I also takes the dotless ı for i, which Go's (?i) does not.
	folded := strings.ReplaceAll(key, "ı", "i")
	secret := hiddenKey.MatchString(folded) && !allowedKey.MatchString(folded)
	if len(key) <= 64 && secretKeysCount.Add(1) <= 10000 {
		secretKeys.Store(key, secret)
	}
	return secret
}

var secretKeysCount atomic.Int64

// sanitizeAndCleanse is Cleanse(Sanitize(m)) in one pass, changing the
// freshly decoded m in place.
func sanitizeAndCleanse(m map[string]any) map[string]any {
	var withNUL []string
	for k, v := range m {
		if strings.IndexByte(k, 0) >= 0 {
			withNUL = append(withNUL, k) // not changed while m is ranged over
			continue
		}
		m[k] = sanitizeCleanseItem(k, v)
	}
	for _, k := range nulKeysInOrder(withNUL) {
		v := m[k]
		delete(m, k)
		if s := stripNUL(k); !hasKey(m, s) {
			m[s] = sanitizeCleanseItem(s, v)
		}
	}
	return m
}

// nulKeysInOrder sorts the keys that hold NUL characters, so that when
// several become the same key once NUL is removed, which one is kept does
// not depend on map order: a key that had no NUL is kept, and among the
// others the first in byte order. (authentik keeps the last in the JSON
// text, an order decoding does not keep.)
func nulKeysInOrder(keys []string) []string {
	slices.Sort(keys)
	return keys
}

func hasKey(m map[string]any, k string) bool {
	_, ok := m[k]
	return ok
}

func sanitizeCleanseItem(key string, v any) any {
	switch t := v.(type) {
	case map[string]any:
		return sanitizeAndCleanse(t)
	case []any:
		// As authentik: falsy items are dropped (sanitising) before
		// secret values are hidden (cleansing).
		out := t[:0]
		for _, x := range t {
			switch x.(type) {
			case map[string]any, []any:
				x = sanitizeCleanseItem(key, x)
				if !truthy(x) {
					continue
				}
			default:
				if x = Sanitize(x); !truthy(x) {
					continue
				}
				if secretKey(key) {
					x = CleansedValue
				}
			}
			out = append(out, x)
		}
		return out
	}
	if secretKey(key) { // a null too, as authentik's cleanse_item
		return CleansedValue
	}
	return Sanitize(v)
}

func cleanseItem(key string, v any) any {
	switch t := v.(type) {
	case map[string]any:
		return Cleanse(t)
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = cleanseItem(key, x)
		}
		return out
	}
	if secretKey(key) {
		return CleansedValue
	}
	return v
}

// sanitizedAsIs reports whether [Sanitize] leaves the decoded value v as
// it is: no NUL characters, numbers that are canonical integers, no falsy
// array elements to drop.
func sanitizedAsIs(v any) bool {
	switch t := v.(type) {
	case nil, bool:
		return true
	case string:
		return strings.IndexByte(t, 0) < 0
	case json.Number:
		i, err := t.Int64()
		return err == nil && strconv.FormatInt(i, 10) == string(t)
	case map[string]any:
		for k, x := range t {
			if strings.IndexByte(k, 0) >= 0 || !sanitizedAsIs(x) {
				return false
			}
		}
		return true
	case []any:
		for _, x := range t {
			if !sanitizedAsIs(x) || !truthyAsIs(x) {
				return false
			}
		}
		return true
	}
	return false
}

// contextAsIs reports whether sanitising and cleansing leave the decoded
// context m as it is (see sanitizeAndCleanse).
func contextAsIs(m map[string]any) bool {
	for k, v := range m {
		if strings.IndexByte(k, 0) >= 0 || !cleansedAsIs(k, v) {
			return false
		}
	}
	return true
}

// cleansedAsIs mirrors sanitizeCleanseItem.
func cleansedAsIs(key string, v any) bool {
	switch t := v.(type) {
	case map[string]any:
		return contextAsIs(t)
	case []any:
		for _, x := range t {
			switch x.(type) {
			case map[string]any, []any:
				if !cleansedAsIs(key, x) || !truthyAsIs(x) {
					return false
				}
			default:
				if !sanitizedAsIs(x) || !truthyAsIs(x) || secretKey(key) {
					return false
				}
			}
		}
		return true
	}
	return !secretKey(key) && sanitizedAsIs(v)
}

// truthyAsIs is truthy for a decoded value that sanitising leaves as it is.
func truthyAsIs(v any) bool {
	if n, ok := v.(json.Number); ok {
		return n != "0"
	}
	return truthy(v)
}

// sanitizeInPlace returns Sanitize(m), reusing m when asIs (as reported by
// sanitizedAsIs): then only its numbers change type.
func sanitizeInPlace(m map[string]any, asIs bool) map[string]any {
	if !asIs {
		return Sanitize(m).(map[string]any)
	}
	numbersToInt64(m)
	return m
}

// numbersToInt64 turns the json.Number values of v, which are canonical
// integers, into int64 in place.
func numbersToInt64(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			switch n := x.(type) {
			case json.Number:
				t[k], _ = n.Int64()
			case map[string]any, []any:
				numbersToInt64(n)
			}
		}
	case []any:
		for i, x := range t {
			switch n := x.(type) {
			case json.Number:
				t[i], _ = n.Int64()
			case map[string]any, []any:
				numbersToInt64(n)
			}
		}
	}
}
