package jsrt

import (
	"encoding/json"
	"slices"
	"time"

	"github.com/dop251/goja"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/rules"
)

// toJS converts decoded JSON data into native JavaScript values (plain
// objects and arrays, not wrappers around Go maps), so policies can change
// them like any object.
func (v *vm) toJS(x any) goja.Value {
	switch t := x.(type) {
	case nil:
		return goja.Null()
	case map[string]any:
		obj := v.rt.NewObject()
		for k, e := range t {
			_ = obj.Set(k, v.toJS(e))
		}
		return obj
	case rules.JSONMap:
		return v.toJS(map[string]any(t))
	case []any:
		items := make([]any, len(t))
		for i, e := range t {
			items[i] = v.toJS(e)
		}
		return v.rt.NewArray(items...)
	case json.RawMessage:
		var d any
		if err := json.Unmarshal(t, &d); err != nil {
			return goja.Null()
		}
		return v.toJS(d)
	case json.Number:
		return v.toJS(events.Sanitize(t))
	case time.Time:
		return v.rt.ToValue(t.UTC().Format(time.RFC3339Nano))
	case *time.Time:
		if t == nil {
			return goja.Null()
		}
		return v.toJS(*t)
	default:
		return v.rt.ToValue(t)
	}
}

// eventKeys are the properties of an event object, in wire order.
var eventKeys = []string{"pk", "action", "app", "user", "context", "client_ip", "created", "brand"}

// eventObject is the event as policies see it: the fields of the wire
// format (and any unknown top-level keys), built on first access.
func (v *vm) eventObject(ev *events.Event) *goja.Object {
	keys := eventKeys
	if len(ev.Extra) > 0 {
		keys = slices.Clone(eventKeys)
		for k := range ev.Extra {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	return v.newLazy(keys, func(key string) goja.Value {
		switch key {
		case "pk":
			return v.rt.ToValue(ev.PK)
		case "action":
			return v.rt.ToValue(ev.Action)
		case "app":
			return v.rt.ToValue(ev.App)
		case "user":
			return v.lazyJS(orEmpty(ev.User))
		case "context":
			return v.lazyJS(orEmpty(ev.Context))
		case "client_ip":
			if ev.ClientIP == "" {
				return goja.Null()
			}
			return v.rt.ToValue(ev.ClientIP)
		case "created":
			return v.rt.ToValue(ev.Created.UTC().Format(time.RFC3339Nano))
		case "brand":
			return v.lazyJS(orEmpty(ev.Brand))
		}
		return v.toJS(ev.Extra[key])
	})
}

// userObject is a users row as a model object (with save), or the anonymous
// user (a plain object).
func (v *vm) userObject(u *rules.User) *goja.Object {
	obj := v.rt.NewObject()
	if u == nil {
		_ = obj.Set("pk", goja.Null())
		_ = obj.Set("username", "AnonymousUser")
		_ = obj.Set("name", "")
		_ = obj.Set("email", "")
		_ = obj.Set("is_active", true)
		_ = obj.Set("is_superuser", false)
		_ = obj.Set("is_anonymous", true)
		_ = obj.Set("attributes", v.rt.NewObject())
		return obj
	}
	// A model object like those of User.objects: it has save().
	_ = obj.SetPrototype(v.protos["User"])
	_ = obj.Set("pk", u.ID)
	_ = obj.Set("id", u.ID)
	_ = obj.Set("uuid", u.UUID)
	_ = obj.Set("username", u.Username)
	_ = obj.Set("name", u.Name)
	_ = obj.Set("email", u.Email)
	_ = obj.Set("is_active", u.IsActive)
	_ = obj.Set("is_superuser", u.IsSuperuser)
	_ = obj.Set("is_anonymous", false)
	_ = obj.Set("attributes", v.toJS(map[string]any(u.Attributes)))
	_ = obj.Set("last_login", v.toJS(u.LastLogin))
	_ = obj.Set("created", v.toJS(u.Created))
	_ = obj.Set("updated", v.toJS(u.Updated))
	return obj
}

// requestObject builds `request`: {user, context: {event, ...}, obj, debug}.
func (v *vm) requestObject(req *rules.PolicyRequest) *goja.Object {
	ev := v.eventObject(req.Event)
	c := v.rt.NewObject()
	for k, x := range req.Context {
		_ = c.Set(k, v.toJS(x))
	}
	_ = c.Set("event", ev)
	return v.newLazy([]string{"user", "context", "obj", "debug"}, func(key string) goja.Value {
		switch key {
		case "user":
			return v.userObject(req.User)
		case "context":
			return c
		case "obj":
			return ev
		}
		return v.rt.ToValue(req.Scope == nil)
	})
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}
