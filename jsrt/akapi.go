package jsrt

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/big"
	"reflect"
	"slices"
	"strconv"
	"strings"
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
	filters, ok := v.exportStrict("ak_user_by", call.Argument(0)).(map[string]any)
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
		if filters, ok = v.exportStrict("ak_is_group_member", f).(map[string]any); !ok {
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
		if kwargs, ok = v.exportStrict("ak_call_policy kwargs", k).(map[string]any); !ok {
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
	if request, ok := v.requestGlobal.(*goja.Object); ok {
		if live, ok := request.Get("context").(*goja.Object); ok {
			for _, k := range live.Keys() {
				if k != "event" {
					c[k] = v.exportLenient("ak_call_policy: request.context."+k, live.Get(k), false)
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
		if kwargs, ok = v.exportLenient("ak_create_event kwargs", k, true).(map[string]any); !ok {
			v.throw("ak_create_event: kwargs must be an object")
		}
	}
	p := v.cur.req.Policy
	v.db() // the policy's savepoint, bounded by its deadline
	ev, err := v.cur.req.Scope.CreateEvent(v.cur.bounds.queries(), "custom_"+action, p.Name, map[string]any{}, kwargs, p)
	v.check(err)
	return v.rt.ToValue(ev.PK)
}

// ak_send_email(address, subject, {body | template, context, cc, bcc}):
// queues an email in the outbox; it is sent after the event commits.
func (v *vm) akSendEmail(call goja.FunctionCall) goja.Value {
	const fn = "ak_send_email"
	to := v.addresses(fn, "address", v.exportStrict(fn+" address", call.Argument(0)), true)
	subject := v.stringArg(fn, call, 1, "subject")
	opts := map[string]any{}
	if o := call.Argument(2); !goja.IsUndefined(o) && !goja.IsNull(o) {
		var ok bool
		if opts, ok = v.exportStrict(fn+" options", o).(map[string]any); !ok {
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
		Cc:       v.addresses(fn, "cc", opts["cc"], false),
		Bcc:      v.addresses(fn, "bcc", opts["bcc"], false),
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
		maps.Copy(c, tplContext)
		e.Context = c
	}
	v.check(scope.QueueEmail(v.cur.bounds.queries(), e, v.cur.req.Policy))
	return v.rt.ToValue(true)
}

// addresses reads a string or an array of strings, as exported data.
func (v *vm) addresses(fn, what string, val any, required bool) []string {
	if val == nil {
		if required {
			v.throw("%s: missing %s", fn, what)
		}
		return nil
	}
	switch x := val.(type) {
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

// Limits on data taken out of JavaScript (see [exporter]).
const (
	// maxDataDepth bounds the nesting of data taken out of JavaScript.
	maxDataDepth = 32
	// maxDataNodes bounds the values (objects, arrays and scalars) of one
	// conversion. A sub-object counts each time it is reached, so values
	// that share sub-objects cannot make a conversion grow as 2^depth.
	maxDataNodes = 200_000
	// maxDataBytes bounds the text (strings and keys) of one conversion.
	maxDataBytes = 16 << 20
)

// nestedTooDeep stands, in a lenient conversion, for data nested deeper
// than maxDataDepth and for an object met again inside itself (a cycle).
const nestedTooDeep = "[nested too deep]"

// Export types of the goja objects the exporter walks itself.
var (
	typeLazyObject = reflect.TypeFor[*lazyObject]()
	typeLazyArray  = reflect.TypeFor[*lazyArray]()
	typeJSObject   = reflect.TypeFor[map[string]any]()
	typeJSArray    = reflect.TypeFor[[]any]()
	typeJSDate     = reflect.TypeFor[time.Time]()
	typeJSMap      = reflect.TypeFor[[][2]any]()
	typePromise    = reflect.TypeFor[*goja.Promise]()
)

// dataError is why a value could not be taken out of JavaScript: a limit
// (thrown as a RangeError) or a value JSON cannot hold (a TypeError).
type dataError struct {
	limit bool
	msg   string
}

func (e *dataError) Error() string {
	if e.limit {
		return "RangeError: " + e.msg
	}
	return "TypeError: " + e.msg
}

// pathKey is one step from the root of a conversion to a value: a key,
// or an index when index >= 0.
type pathKey struct {
	key   string
	index int
}

// exporter converts JavaScript values to JSON data (nil, string, bool,
// int64, float64, []any and map[string]any). It walks goja objects itself,
// rather than through goja's Export, which recurses without bound (a
// deeply nested value overflows the Go stack, a fatal error that kills the
// worker) and expands shared sub-objects as a tree: nesting is capped at
// maxDataDepth, an object met again inside itself is cut there, and the
// values and text of one conversion are budgeted (maxDataNodes,
// maxDataBytes), so a conversion takes time and memory in proportion to
// what it returns.
//
// A lenient conversion (a policy's result, log fields, the context of an
// event) drops what JSON cannot hold (functions, symbols, Maps) and puts
// nestedTooDeep where nesting is too deep or a cycle closes. A strict one
// (filters, kwargs, values to save, email options) refuses both, because a
// dropped filter would match more than asked. Either stops at a limit.
type exporter struct {
	// what names the conversion in errors, e.g. "User.objects.filter";
	// root, when set, names the value converted (a field to save).
	what, root string
	strict     bool
	// short: objects with a short form (see [lazyObject.short]) take it.
	short        bool
	nodes, bytes int
	// deadline, when set, is the policy's: the conversion, which the
	// runtime's interrupt cannot stop, ends there too.
	deadline time.Time
	// stack holds the objects being converted, outermost first.
	stack []*goja.Object
	// path holds the steps to the value being converted, for errors.
	path []pathKey
	err  *dataError
}

// run converts val.
func (e *exporter) run(val goja.Value) (any, *dataError) {
	out, ok := e.value(val, 0)
	if e.err != nil {
		return nil, e.err
	}
	if !ok {
		return nil, nil
	}
	return out, nil
}

// fail records the first error: msg is about the value at the current
// path when at is set, about the whole conversion otherwise.
func (e *exporter) fail(limit, at bool, format string, args ...any) {
	if e.err != nil {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if at {
		msg = e.pathString() + " " + msg
	}
	e.err = &dataError{limit: limit, msg: e.what + ": " + msg}
}

// pathString names the value at the current path: "attributes.tags[2]".
func (e *exporter) pathString() string {
	var b strings.Builder
	b.WriteString(e.root)
	for _, p := range e.path {
		if p.index >= 0 {
			fmt.Fprintf(&b, "[%d]", p.index)
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(p.key)
	}
	if b.Len() == 0 {
		return "the value"
	}
	return b.String()
}

// count charges one value to the budget.
func (e *exporter) count() bool {
	e.nodes++
	switch {
	case e.nodes > maxDataNodes:
		e.fail(true, false, "too large (more than %d values)", maxDataNodes)
	case e.nodes%1024 == 0 && !e.deadline.IsZero() && !time.Now().Before(e.deadline):
		e.fail(true, false, "the policy's time ran out during the conversion")
	}
	return e.err == nil
}

// text charges n bytes of text (a string or a key) to the budget.
func (e *exporter) text(n int) bool {
	e.bytes += n
	if e.bytes > maxDataBytes {
		e.fail(true, false, "too large (more than %d MiB of text)", maxDataBytes>>20)
	}
	return e.err == nil
}

// drop handles a value JSON cannot hold, described by kind ("a function"):
// dropped when lenient, an error when strict.
func (e *exporter) drop(kind string) (any, bool) {
	if e.strict {
		e.fail(false, true, "is %s; want JSON data (a string, number, boolean, null, array or object)", kind)
	}
	return nil, false
}

// value converts val at the given depth; false drops it.
func (e *exporter) value(val goja.Value, depth int) (any, bool) {
	if e.err != nil || !e.count() {
		return nil, false
	}
	if depth > maxDataDepth {
		if e.strict {
			e.fail(true, true, "is nested deeper than %d levels", maxDataDepth)
			return nil, false
		}
		return nestedTooDeep, true
	}
	obj, ok := val.(*goja.Object)
	if !ok {
		if _, ok := val.(*goja.Symbol); ok {
			return e.drop("a Symbol") // its Export is its description
		}
		return e.scalar(exportScalar(val))
	}
	if slices.Contains(e.stack, obj) {
		if e.strict {
			e.fail(false, true, "contains itself (a cycle)")
			return nil, false
		}
		return nestedTooDeep, true
	}
	e.stack = append(e.stack, obj)
	out, ok := e.object1(obj, depth)
	e.stack = e.stack[:len(e.stack)-1]
	return out, ok
}

// object1 converts obj, which is on the stack.
func (e *exporter) object1(obj *goja.Object, depth int) (any, bool) {
	switch obj.ExportType() {
	case typeLazyObject:
		o := obj.Export().(*lazyObject)
		if e.short && o.short != nil {
			return e.goData(o.short(o), depth)
		}
		return e.object(o.Keys(), o, depth)
	case typeLazyArray:
		a := obj.Export().(*lazyArray)
		return e.array(int64(a.Len()), a, depth)
	case typeJSObject: // plain objects, class instances, errors, Go maps
		switch obj.ClassName() { // a wrapped primitive: its value
		case "String":
			return e.scalar(obj.String()) // its Export is an empty map
		case "Number", "Boolean":
			return e.scalar(obj.Export())
		}
		return e.object(obj.Keys(), obj, depth)
	case typeJSArray: // arrays, Go slices, and Sets (which have no length)
		n := obj.Get("length")
		if n == nil {
			return e.set(obj, depth)
		}
		return e.array(n.ToInteger(), jsArray{obj}, depth)
	case typeJSMap:
		return e.drop("a Map")
	case typeJSDate:
		t, ok := obj.Export().(time.Time)
		if !ok {
			return nil, true // an invalid date, as Export gave it
		}
		return e.scalar(t)
	}
	if _, ok := goja.AssertFunction(obj); ok {
		return e.drop("a function")
	}
	switch c := obj.ClassName(); c {
	case "Number", "String", "Boolean":
		return e.scalar(obj.Export()) // a wrapped primitive: its value
	default:
		return e.drop(article(c)) // a Promise, a typed array...
	}
}

// article is name with its indefinite article: "a Promise", "an Object".
func article(name string) string {
	if name != "" && strings.ContainsRune("AEIOU", rune(name[0])) {
		return "an " + name
	}
	return "a " + name
}

// scalar converts an exported primitive (or a Date's time).
func (e *exporter) scalar(x any) (any, bool) {
	switch t := x.(type) { // x, not t, is returned: no new boxing
	case nil, bool, int64, float64:
		return x, true
	case int:
		return int64(t), true
	case string:
		return x, e.text(len(t))
	case time.Time:
		return t.UTC().Format(time.RFC3339Nano), true
	case *big.Int:
		if e.strict {
			return e.drop("a BigInt")
		}
		// JavaScript's own number for a BigInt that fits, else its digits:
		// JSON has no BigInt, and Python (authentik) has only one int.
		if t.IsInt64() {
			return t.Int64(), true
		}
		s := t.String()
		return s, e.text(len(s))
	}
	return e.drop(fmt.Sprintf("a %T", x))
}

// keyed is an object the exporter reads by key: a *goja.Object or a
// *lazyObject (an interface, not a method value, which would allocate).
type keyed interface{ Get(key string) goja.Value }

// indexed is an array the exporter reads by index.
type indexed interface{ Get(i int) goja.Value }

// jsArray reads a goja array by index.
type jsArray struct{ obj *goja.Object }

func (a jsArray) Get(i int) goja.Value { return a.obj.Get(indexKey(i)) }

// object converts an object of the given keys.
func (e *exporter) object(keys []string, obj keyed, depth int) (any, bool) {
	out := make(map[string]any, len(keys))
	for _, k := range keys {
		if !e.text(len(k)) {
			return nil, false
		}
		e.path = append(e.path, pathKey{key: k, index: -1})
		x, ok := e.value(obj.Get(k), depth+1)
		e.path = e.path[:len(e.path)-1]
		if e.err != nil {
			return nil, false
		}
		if ok {
			out[k] = x
		}
	}
	return out, true
}

// array converts an array of length n; a hole is null.
func (e *exporter) array(n int64, a indexed, depth int) (any, bool) {
	if n < 0 || n > int64(maxDataNodes-e.nodes) {
		e.fail(true, false, "too large (an array of %d elements; at most %d values)", n, maxDataNodes)
		return nil, false
	}
	out := make([]any, 0, n)
	for i := range int(n) {
		e.path = append(e.path, pathKey{index: i})
		x, ok := e.value(a.Get(i), depth+1)
		e.path = e.path[:len(e.path)-1]
		if e.err != nil {
			return nil, false
		}
		if ok {
			out = append(out, x)
		}
	}
	return out, true
}

// set converts a Set to the array of its values, through its iterator.
func (e *exporter) set(obj *goja.Object, depth int) (any, bool) {
	values, ok := goja.AssertFunction(obj.Get("values"))
	if !ok {
		return e.drop("a Set without values()")
	}
	it, err := values(obj)
	itObj, ok := it.(*goja.Object)
	if err != nil || !ok {
		e.fail(false, true, "is a Set that could not be read: %v", err)
		return nil, false
	}
	next, ok := goja.AssertFunction(itObj.Get("next"))
	if !ok {
		e.fail(false, true, "is a Set that could not be read")
		return nil, false
	}
	out := []any{}
	for i := 0; ; i++ {
		r, err := next(itObj)
		step, ok := r.(*goja.Object)
		if err != nil || !ok {
			e.fail(false, true, "is a Set that could not be read: %v", err)
			return nil, false
		}
		if step.Get("done").ToBoolean() {
			return out, true
		}
		e.path = append(e.path, pathKey{index: i})
		x, ok := e.value(step.Get("value"), depth+1)
		e.path = e.path[:len(e.path)-1]
		if e.err != nil {
			return nil, false
		}
		if ok {
			out = append(out, x)
		}
	}
}

// goData converts Go data of a short form (see [lazyObject.short]), whose
// values may be JavaScript values.
func (e *exporter) goData(x any, depth int) (any, bool) {
	switch t := x.(type) {
	case goja.Value:
		return e.value(t, depth)
	case map[string]any:
		if !e.count() {
			return nil, false
		}
		if depth > maxDataDepth {
			return e.value(nil, depth) // the same cut or error
		}
		out := make(map[string]any, len(t))
		for k, y := range t {
			e.path = append(e.path, pathKey{key: k, index: -1})
			z, ok := e.goData(y, depth+1)
			e.path = e.path[:len(e.path)-1]
			if e.err != nil {
				return nil, false
			}
			if ok {
				out[k] = z
			}
		}
		return out, true
	}
	if !e.count() {
		return nil, false
	}
	return e.scalar(x)
}

// exportScalar is the Go value of val when val is not an object (whose
// Export recurses without bound), else val itself, for an [exporter].
func exportScalar(val goja.Value) any {
	if val == nil {
		return nil
	}
	if _, ok := val.(*goja.Object); ok {
		return val
	}
	return val.Export()
}

// indexKeys are the property names of the first array indexes.
var indexKeys = func() []string {
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
	}
	return keys
}()

// indexKey is the property name of array index i.
func indexKey(i int) string {
	if i < len(indexKeys) {
		return indexKeys[i]
	}
	return strconv.Itoa(i)
}

// exportStrict converts val, an argument of a host function, to JSON data:
// a value JSON cannot hold (a BigInt, a function, a Symbol) throws a
// TypeError that names it, as do a cycle and (a RangeError) data nested
// too deep or too large. what names the argument in errors.
func (v *vm) exportStrict(what string, val goja.Value) any {
	return v.exportOrThrow(&exporter{what: what, strict: true, deadline: v.deadline()}, val)
}

// exportField is exportStrict for the value of field root.
func (v *vm) exportField(what, root string, val goja.Value) any {
	return v.exportOrThrow(&exporter{what: what, root: root, strict: true, deadline: v.deadline()}, val)
}

// exportLenient converts val, an argument of a host function, to JSON data,
// dropping what JSON cannot hold; with short, objects with a short form
// take it. Data too large throws a RangeError.
func (v *vm) exportLenient(what string, val goja.Value, short bool) any {
	return v.exportOrThrow(&exporter{what: what, short: short, deadline: v.deadline()}, val)
}

func (v *vm) exportOrThrow(e *exporter, val goja.Value) any {
	if val == nil || goja.IsUndefined(val) {
		return nil
	}
	out, err := e.run(val)
	if err != nil {
		v.throwData(err)
	}
	return out
}

// deadline is the deadline of the evaluation in progress, if any.
func (v *vm) deadline() time.Time {
	if v.cur == nil {
		return time.Time{}
	}
	return v.cur.bounds.deadline
}

// throwData throws err into the running policy.
func (v *vm) throwData(err *dataError) {
	if err.limit {
		panic(v.newRangeError(err.msg))
	}
	panic(v.rt.NewTypeError(err.msg))
}

// newRangeError is a RangeError with msg.
func (v *vm) newRangeError(msg string) *goja.Object {
	if v.rangeError != nil {
		if obj, err := v.rangeError(nil, v.rt.ToValue(msg)); err == nil {
			return obj
		}
	}
	return v.rt.NewTypeError(msg)
}

// exportResult converts what a policy (or a mapping) returned, as
// authentik's sanitize_item stores it: model objects and addresses in their
// short forms. It runs after the policy, so it returns its error.
func (v *vm) exportResult(what string, val goja.Value) (any, error) {
	if val == nil || goja.IsUndefined(val) {
		return nil, nil
	}
	out, err := (&exporter{what: what, short: true, deadline: v.deadline()}).run(val)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// eventMap is ev in its wire form, as template data.
func eventMap(ev *events.Event) map[string]any {
	var m map[string]any
	if b, err := ev.MarshalJSON(); err == nil && json.Unmarshal(b, &m) == nil {
		return m
	}
	return map[string]any{"pk": ev.PK, "action": ev.Action}
}
