package jsrt

import (
	"encoding/json"
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

// eventObject is the event as policies see it: the fields of the wire
// format.
func (v *vm) eventObject(ev *events.Event) *goja.Object {
	obj := v.rt.NewObject()
	for k, raw := range ev.Extra {
		_ = obj.Set(k, v.toJS(raw))
	}
	_ = obj.Set("pk", ev.PK)
	_ = obj.Set("action", ev.Action)
	_ = obj.Set("app", ev.App)
	_ = obj.Set("user", v.toJS(orEmpty(ev.User)))
	_ = obj.Set("context", v.toJS(orEmpty(ev.Context)))
	if ev.ClientIP == "" {
		_ = obj.Set("client_ip", goja.Null())
	} else {
		_ = obj.Set("client_ip", ev.ClientIP)
	}
	_ = obj.Set("created", ev.Created.UTC().Format(time.RFC3339Nano))
	_ = obj.Set("brand", v.toJS(orEmpty(ev.Brand)))
	return obj
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
	r := v.rt.NewObject()
	_ = r.Set("user", v.userObject(req.User))
	_ = r.Set("context", c)
	_ = r.Set("obj", ev)
	_ = r.Set("debug", req.Scope == nil)
	return r
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}
