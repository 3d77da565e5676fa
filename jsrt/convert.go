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
	case *rules.User: // a model object, as request.user
		return v.userObject(t)
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
	obj := v.newLazy(keys, func(key string) goja.Value {
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
	setShort(obj, modelShorts["Event"])
	return obj
}

// userObject is a users row as a model object (with save), or the anonymous
// user (without save).
func (v *vm) userObject(u *rules.User) *goja.Object {
	var obj *goja.Object
	if u == nil {
		obj = v.newLazy(anonymousKeys, func(key string) goja.Value {
			switch key {
			case "pk":
				return goja.Null()
			case "username":
				return v.rt.ToValue("AnonymousUser")
			case "name", "email":
				return v.rt.ToValue("")
			case "is_active", "is_anonymous":
				return v.rt.ToValue(true)
			case "is_superuser":
				return v.rt.ToValue(false)
			}
			return v.rt.NewObject() // attributes
		})
		setShort(obj, func(*lazyObject) any {
			return map[string]any{"username": "AnonymousUser", "pk": nil, "email": "", "is_anonymous": true} // get_user's
		})
		return obj
	}
	// A model object like those of User.objects (it has save()), whose
	// fields are converted when first read: most policies read one or two.
	obj = v.newLazy(userKeys, func(key string) goja.Value {
		switch key {
		case "pk", "id":
			return v.rt.ToValue(u.ID)
		case "uuid":
			return v.rt.ToValue(u.UUID)
		case "username":
			return v.rt.ToValue(u.Username)
		case "name":
			return v.rt.ToValue(u.Name)
		case "email":
			return v.rt.ToValue(u.Email)
		case "is_active":
			return v.rt.ToValue(u.IsActive)
		case "is_superuser":
			return v.rt.ToValue(u.IsSuperuser)
		case "is_anonymous":
			return v.rt.ToValue(false)
		case "attributes":
			return v.toJS(map[string]any(u.Attributes))
		case "last_login":
			return v.toJS(u.LastLogin)
		case "created":
			return v.toJS(u.Created)
		}
		return v.toJS(u.Updated)
	})
	setShort(obj, userShort)
	_ = obj.SetPrototype(v.protos["User"])
	return obj
}

// anonymousKeys are the properties of the anonymous request.user.
var anonymousKeys = []string{"pk", "username", "name", "email", "is_active", "is_superuser", "is_anonymous", "attributes"}

// userKeys are the fields of a user object, in the order policies see them.
var userKeys = []string{"pk", "id", "uuid", "username", "name", "email", "is_active", "is_superuser",
	"is_anonymous", "attributes", "last_login", "created", "updated"}

// requestKeys are the properties of `request`.
var requestKeys = []string{"user", "http_request", "context", "obj", "debug"}

// requestObject builds `request`: {user, http_request, context: {event,
// ...}, obj, debug}. http_request is null: no HTTP request reaches the
// worker, as authentik's notification worker has none (None).
func (v *vm) requestObject(req *rules.PolicyRequest) *goja.Object {
	ev := v.eventObject(req.Event)
	c := v.rt.NewObject()
	for k, x := range req.Context {
		_ = c.Set(k, v.toJS(x))
	}
	_ = c.Set("event", ev)
	return v.newLazy(requestKeys, func(key string) goja.Value {
		switch key {
		case "user":
			return v.userObject(req.User)
		case "http_request":
			return goja.Null()
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
