package events

import (
	"encoding/json"
	"math"
	"regexp"
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
		for k, x := range t {
			out[stripNUL(k)] = Sanitize(x)
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
	hiddenKey  = regexp.MustCompile(`(?i)API|AUTH|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE`)
	allowedKey = regexp.MustCompile(`(?i)passing|password_change_date|^auth_method(_args)?$`)
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
	secret := hiddenKey.MatchString(key) && !allowedKey.MatchString(key)
	if len(key) <= 64 && secretKeysCount.Add(1) <= 10000 {
		secretKeys.Store(key, secret)
	}
	return secret
}

var secretKeysCount atomic.Int64

// sanitizeAndCleanse is Cleanse(Sanitize(m)) in one pass, changing the
// freshly decoded m in place.
func sanitizeAndCleanse(m map[string]any) map[string]any {
	for k, v := range m {
		if strings.IndexByte(k, 0) >= 0 {
			delete(m, k)
			k = stripNUL(k)
		}
		m[k] = sanitizeCleanseItem(k, v)
	}
	return m
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
	case nil:
		return nil
	}
	if secretKey(key) {
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
