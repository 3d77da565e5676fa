package jsrt

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/dop251/goja"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/rules"
)

// maxCallDepth bounds ak_call_policy nesting (a policy calling itself).
const maxCallDepth = 8

// ak_user_by(filters): the first matching user or null. An unknown field
// gives null, as in authentik; other bad filters throw.
func (v *vm) akUserBy(call goja.FunctionCall) goja.Value {
	filters, ok := exportJSON(call.Argument(0)).(map[string]any)
	if !ok {
		v.throw("ak_user_by: want an object of field lookups")
	}
	m := rules.Models["User"]
	rows, err := rules.Find(v.cur.bounds.queries(), v.db(), rules.Query{Model: m, Filters: filters}, 1, true)
	var me *rules.ModelError
	if errors.As(err, &me) && me.UnknownField {
		return goja.Null()
	}
	v.check(err)
	if len(rows) == 0 {
		return goja.Null()
	}
	return v.modelObject(m, rows[0])
}

// ak_is_group_member(user, filters): whether user belongs to a group
// matching filters, directly or through a descendant group.
func (v *vm) akIsGroupMember(call goja.FunctionCall) goja.Value {
	pk, ok := userPK(call.Argument(0))
	if !ok {
		return v.rt.ToValue(false)
	}
	filters := map[string]any{}
	if f := call.Argument(1); !goja.IsUndefined(f) && !goja.IsNull(f) {
		if filters, ok = exportJSON(f).(map[string]any); !ok {
			v.throw("ak_is_group_member: want an object of group field lookups, e.g. {name: \"admins\"}")
		}
	}
	tx := v.db()
	groups, err := rules.UserGroupIDs(v.cur.bounds.queries(), tx, pk)
	v.check(err)
	if len(groups) == 0 {
		return v.rt.ToValue(false)
	}
	ids := make([]string, 0, len(groups))
	for id := range groups {
		ids = append(ids, id)
	}
	q := rules.Query{Model: rules.Models["Group"], Filters: filters, Within: ids}
	n, err := rules.Count(v.cur.bounds.queries(), tx, q)
	v.check(err)
	return v.rt.ToValue(n > 0)
}

// ak_user_has_authenticator(user, kind?): a confirmed device (of kind).
func (v *vm) akUserHasAuthenticator(call goja.FunctionCall) goja.Value {
	pk, ok := userPK(call.Argument(0))
	if !ok {
		return v.rt.ToValue(false)
	}
	kind := ""
	if k := call.Argument(1); !goja.IsUndefined(k) && !goja.IsNull(k) {
		kind = k.String()
	}
	has, err := rules.UserHasAuthenticator(v.cur.bounds.queries(), v.db(), pk, kind)
	v.check(err)
	return v.rt.ToValue(has)
}

// ak_call_policy(name, kwargs?): runs another policy with kwargs merged
// into a copy of the context and returns {passing, messages, raw_result}.
func (v *vm) akCallPolicy(call goja.FunctionCall) goja.Value {
	name := v.stringArg("ak_call_policy", call, 0, "policy name")
	outer := v.cur
	scope := outer.req.Scope
	if scope == nil || scope.Rules == nil {
		v.throw("ak_call_policy: no policies to call here (a mapping cannot call one)")
	}
	p := scope.Rules.Policies[name]
	if p == nil {
		panic(v.rt.NewGoError(fmt.Errorf("Policy '%s' not found.", name))) //nolint:staticcheck // authentik's message
	}
	kwargs := map[string]any{}
	if k := call.Argument(1); !goja.IsUndefined(k) && !goja.IsNull(k) {
		var ok bool
		if kwargs, ok = exportJSON(k).(map[string]any); !ok {
			v.throw("ak_call_policy: kwargs must be an object")
		}
	}
	if scope != nil {
		if !scope.EnterCall(maxCallDepth) {
			v.throw("ak_call_policy: calls nested deeper than %d", maxCallDepth)
		}
		defer scope.LeaveCall()
	}
	// The callee sees the caller's request.context as it is now (what the
	// caller added too), with kwargs over it, in a copy.
	c := map[string]any{}
	if request, ok := v.rt.Get("request").(*goja.Object); ok {
		if live, ok := request.Get("context").(*goja.Object); ok {
			for _, k := range live.Keys() {
				if k != "event" {
					c[k] = exportJSON(live.Get(k))
				}
			}
		}
	}
	maps.Copy(c, kwargs)
	req := &rules.PolicyRequest{Policy: p, Event: outer.req.Event, User: outer.req.User, Context: c, Scope: scope, Depth: outer.req.Depth + 1}

	var res rules.PolicyResult
	outer.calleeOut = nil
	if p.Kind == rules.KindEventMatcher {
		res = rules.MatchEvent(p, req.Event)
	} else {
		compiled := v.pool.program(p.Name, p.Expression)
		if compiled.err != nil {
			res.Err = compiled.err
		} else {
			res = v.evaluate(outer.bounds.parent, compiled.prog, req)
		}
	}
	if res.Retry != nil {
		// A conflict in the callee's database work: the caller, which
		// shares its transaction, ends too, and the event runs again.
		panic(v.rt.NewGoError(res.Retry))
	}
	if res.Err != nil {
		if res.Err.Kind == "timeout" {
			// The caller's own time is up: let the interrupt end it too.
			panic(v.rt.NewGoError(errors.New(res.Err.Message)))
		}
		scope.PolicyException(p, res.Err)
		res = rules.PolicyResult{Messages: []string{res.Err.Error()}}
	} else if p.ExecutionLogging {
		scope.PolicyExecution(p, res)
	}
	out := v.rt.NewObject()
	_ = out.Set("passing", res.Passing)
	msgs := make([]any, len(res.Messages))
	for i, m := range res.Messages {
		msgs[i] = m
	}
	_ = out.Set("messages", v.rt.NewArray(msgs...))
	raw := outer.calleeOut // unset when the callee threw
	if raw == nil || goja.IsUndefined(raw) {
		raw = v.rt.ToValue(res.Raw)
	}
	_ = out.Set("raw_result", raw)
	return out
}

// ak_create_event(action, kwargs?): stores custom_<action> with kwargs as
// its context and publishes it after commit.
func (v *vm) akCreateEvent(call goja.FunctionCall) goja.Value {
	action := v.stringArg("ak_create_event", call, 0, "action")
	kwargs := map[string]any{}
	if k := call.Argument(1); !goja.IsUndefined(k) && !goja.IsNull(k) {
		var ok bool
		if kwargs, ok = exportSanitized(k).(map[string]any); !ok {
			v.throw("ak_create_event: kwargs must be an object")
		}
	}
	p := v.cur.req.Policy
	v.db() // the policy's savepoint, bounded by its deadline
	ev, err := v.cur.req.Scope.CreateEvent(v.cur.bounds.queries(), "custom_"+action, p.Name, map[string]any{}, jsonSafe(kwargs), p)
	v.check(err)
	return v.rt.ToValue(ev.PK)
}

// ak_send_email(address, subject, {body | template, context, cc, bcc}):
// queues an email in the outbox; it is sent after the event commits.
func (v *vm) akSendEmail(call goja.FunctionCall) goja.Value {
	const fn = "ak_send_email"
	to := v.addresses(fn, "address", call.Argument(0), true)
	subject := v.stringArg(fn, call, 1, "subject")
	opts := map[string]any{}
	if o := call.Argument(2); !goja.IsUndefined(o) && !goja.IsNull(o) {
		var ok bool
		if opts, ok = exportJSON(o).(map[string]any); !ok {
			v.throw("%s: the third argument must be an object {body | template, context, cc, bcc}", fn)
		}
	}
	body, hasBody := opts["body"].(string)
	template, hasTemplate := opts["template"].(string)
	if _, ok := opts["body"]; ok && !hasBody {
		v.throw("%s: body must be a string", fn)
	}
	if _, ok := opts["template"]; ok && !hasTemplate {
		v.throw("%s: template must be a string", fn)
	}
	// authentik tests them for truth: an empty one is none.
	hasBody, hasTemplate = hasBody && body != "", hasTemplate && template != ""
	switch {
	case hasBody && hasTemplate:
		v.throw("%s: body and template are exclusive; give one", fn)
	case !hasBody && !hasTemplate:
		v.throw("%s: give a body or a template", fn)
	}
	tplContext := map[string]any{}
	if c, ok := opts["context"]; ok && c != nil {
		m, ok := c.(map[string]any)
		if !ok {
			v.throw("%s: context must be an object", fn)
		}
		tplContext = m
	}
	e := rules.Email{
		To:       to,
		Cc:       v.addresses(fn, "cc", v.rt.ToValue(opts["cc"]), false),
		Bcc:      v.addresses(fn, "bcc", v.rt.ToValue(opts["bcc"]), false),
		Subject:  subject,
		Body:     body,
		Template: template,
	}
	scope := v.cur.req.Scope
	v.db() // the policy's savepoint, bounded by its deadline
	if hasTemplate {
		ok, err := scope.EmailTemplateExists(v.cur.bounds.queries(), template)
		v.check(err)
		if !ok {
			panic(v.rt.NewGoError(fmt.Errorf("%s: email template %q does not exist", fn, template)))
		}
		c := map[string]any{
			"event": eventMap(v.cur.req.Event),
			"user":  v.cur.req.User.EventUser(),
		}
		maps.Copy(c, jsonSafe(tplContext))
		e.Context = c
	}
	v.check(scope.QueueEmail(v.cur.bounds.queries(), e, v.cur.req.Policy))
	return v.rt.ToValue(true)
}

// addresses reads a string or an array of strings.
func (v *vm) addresses(fn, what string, val goja.Value, required bool) []string {
	if val == nil || goja.IsUndefined(val) || goja.IsNull(val) {
		if required {
			v.throw("%s: missing %s", fn, what)
		}
		return nil
	}
	switch x := exportJSON(val).(type) {
	case string:
		if x == "" {
			if !required {
				return nil // Python's `if cc:`
			}
			v.throw("%s: %s is empty", fn, what)
		}
		return []string{x}
	case []any:
		if len(x) == 0 && required {
			v.throw("%s: %s is an empty list", fn, what)
		}
		out := make([]string, len(x))
		for i, a := range x {
			s, ok := a.(string)
			if !ok || s == "" {
				v.throw("%s: %s must hold non-empty strings", fn, what)
			}
			out[i] = s
		}
		return out
	}
	v.throw("%s: %s must be a string or an array of strings", fn, what)
	return nil
}

// maxDataDepth bounds the nesting of data taken out of JavaScript, which
// also cuts cycles (an object that contains itself).
const maxDataDepth = 32

// jsonSafe keeps only JSON data of exported JavaScript values: functions
// and other Go values that JSON cannot hold are dropped, and nesting deeper
// than maxDataDepth (a cycle) is cut.
func jsonSafe(m map[string]any) map[string]any {
	out, _ := plainJSON(m, 0, false)
	if mm, ok := out.(map[string]any); ok {
		return mm
	}
	return map[string]any{}
}

// plainJSON returns x as JSON data, and false for a value to drop. With
// short, objects that have a short form (see [lazyObject.short]) take it.
func plainJSON(x any, depth int, short bool) (any, bool) {
	if depth > maxDataDepth {
		return "[nested too deep]", true
	}
	switch t := x.(type) {
	case nil, string, bool, int64, float64, int:
		return t, true
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, e := range t {
			if y, ok := plainJSON(e, depth+1, short); ok {
				out[k] = y
			}
		}
		return out, true
	case []any:
		out := make([]any, 0, len(t))
		for _, e := range t {
			if y, ok := plainJSON(e, depth+1, short); ok {
				out = append(out, y)
			}
		}
		return out, true
	case time.Time:
		return t.UTC().Format(time.RFC3339Nano), true
	case *lazyObject: // an event's data, as a policy sees it
		if short && t.short != nil {
			return t.short(t), true
		}
		out := make(map[string]any, len(t.keys))
		for _, k := range t.Keys() {
			if y, ok := plainJSON(exportValue(t.Get(k)), depth+1, short); ok {
				out[k] = y
			}
		}
		return out, true
	case *lazyArray:
		out := make([]any, 0, t.Len())
		for i := range t.Len() {
			if y, ok := plainJSON(exportValue(t.Get(i)), depth+1, short); ok {
				out = append(out, y)
			}
		}
		return out, true
	}
	return nil, false
}

func exportValue(v goja.Value) any {
	if v == nil {
		return nil
	}
	return v.Export()
}

// exportJSON exports a JavaScript value as JSON data.
func exportJSON(val goja.Value) any {
	if val == nil || goja.IsUndefined(val) {
		return nil
	}
	out, _ := plainJSON(val.Export(), 0, false)
	return out
}

// exportSanitized exports a JavaScript value as JSON data for an event or
// a policy's result, with model objects and addresses in their short forms,
// as authentik's sanitize_item gives them.
func exportSanitized(val goja.Value) any {
	if val == nil || goja.IsUndefined(val) {
		return nil
	}
	out, _ := plainJSON(val.Export(), 0, true)
	return out
}

// eventMap is ev in its wire form, as template data.
func eventMap(ev *events.Event) map[string]any {
	var m map[string]any
	if b, err := ev.MarshalJSON(); err == nil && json.Unmarshal(b, &m) == nil {
		return m
	}
	return map[string]any{"pk": ev.PK, "action": ev.Action}
}
