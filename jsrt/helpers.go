package jsrt

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/dop251/goja"

	"github.com/heraldhq/herald/rules"
)

// install puts the policy API's globals on the runtime. Per-evaluation
// values (request, context) are set by evaluate.
func (v *vm) install() {
	set := func(name string, fn func(goja.FunctionCall) goja.Value) {
		if err := v.rt.Set(name, fn); err != nil {
			panic(fmt.Sprintf("jsrt: install %s: %v", name, err))
		}
	}
	set("ak_message", v.akMessage)
	set("regex_match", v.regexMatch)
	set("regex_replace", v.regexReplace)
	set("list_flatten", v.listFlatten)

	logger := v.rt.NewObject()
	for _, level := range []string{"debug", "info", "warning", "warn", "error", "exception", "critical"} {
		_ = logger.Set(level, v.logFunc(level))
	}
	_ = v.rt.Set("ak_logger", logger)

	// No flow runs here, as in authentik's notification worker.
	_ = v.rt.Set("ak_is_sso_flow", false)

	v.installModels()
	v.installIP()
	set("ak_user_by", v.akUserBy)
	set("ak_is_group_member", v.akIsGroupMember)
	set("ak_user_has_authenticator", v.akUserHasAuthenticator)
	set("ak_call_policy", v.akCallPolicy)
	set("ak_create_event", v.akCreateEvent)
	set("ak_send_email", v.akSendEmail)
	set("ip_address", v.ipAddress)
	set("ip_network", v.ipNetwork)
	set("resolve_dns", v.resolveDNS)
	set("reverse_dns", v.reverseDNS)
	v.installJSON()
	v.installBuiltinGuards()
	v.installRequestGlobals()
	v.freezeShared()
}

// freezeShared freezes what every policy evaluated on the runtime shares:
// the global functions and objects, built-in and Herald's helpers, and
// their prototypes, so that a policy that changes one (Array.prototype.
// includes, JSON.parse, ak_logger.info) fails with a TypeError instead of
// changing how later policies run. The prototypes of the objects helpers
// return (model objects, ip_address and ip_network objects), which no
// global leads to, are frozen too; the objects themselves keep their own
// fields assignable (user.is_active = false; user.save()).
//
// The global bindings that exist now, all of them built-in or Herald's,
// become read-only and non-configurable: a policy, which runs in strict
// mode, cannot reassign (regex_match = …, JSON = …) or delete one. The
// global request and context are accessors of the vm (see
// [vm.installRequestGlobals]), read-only too. A mapping's notification and
// user do not exist yet, so evaluate can still set them each time (a
// mapping that fixes one gets its runtime replaced, see
// [vm.resetGlobal]), and new global variables (globalThis.x = 1) can
// still be made.
//
// Two objects are only kept from growing, because freezing them would make
// assignments to own properties of the same name fail on every object that
// inherits from them: Object.prototype (data keys such as "constructor" or
// "toString") and the Error prototypes (this.name in an Error subclass).
// Go-backed objects (the model managers, such as User.objects) are not
// frozen.
func (v *vm) freezeShared() {
	protos := make([]goja.Value, 0, len(v.protos)+2)
	for _, name := range slices.Sorted(maps.Keys(v.protos)) {
		protos = append(protos, v.protos[name])
	}
	protos = append(protos, v.ipProto, v.netProto)
	fn, err := v.rt.RunString(`(function (...protos) {
	"use strict";
	const seen = new Set([globalThis]); // frozen below, binding by binding
	const growOnly = (o) => o === Object.prototype || o === Error.prototype || Error.prototype.isPrototypeOf(o);
	const freeze = (o) => {
		if ((typeof o !== "object" && typeof o !== "function") || o === null || seen.has(o)) return;
		seen.add(o);
		try {
			if (growOnly(o)) {
				Object.preventExtensions(o);
			} else {
				Object.freeze(o);
			}
		} catch (e) {
			return; // a Go-backed object
		}
		for (const k of Reflect.ownKeys(o)) {
			const d = Object.getOwnPropertyDescriptor(o, k);
			if ("value" in d) freeze(d.value);
		}
		freeze(Object.getPrototypeOf(o));
	};
	for (const p of protos) freeze(p);
	for (const k of Reflect.ownKeys(globalThis)) {
		const d = Object.getOwnPropertyDescriptor(globalThis, k);
		if ("value" in d) {
			freeze(d.value);
			Object.defineProperty(globalThis, k, {writable: false, configurable: false});
		} else {
			Object.defineProperty(globalThis, k, {configurable: false});
		}
	}
})`)
	if err == nil {
		call, _ := goja.AssertFunction(fn)
		_, err = call(goja.Undefined(), protos...)
	}
	if err != nil {
		panic(fmt.Sprintf("jsrt: freeze shared objects: %v", err))
	}
}

// throw raises a TypeError in the running policy.
func (v *vm) throw(format string, args ...any) {
	panic(v.rt.NewTypeError(fmt.Sprintf(format, args...)))
}

// stringArg returns argument i as a string, throwing if it is missing.
func (v *vm) stringArg(fn string, call goja.FunctionCall, i int, what string) string {
	a := call.Argument(i)
	if goja.IsUndefined(a) || goja.IsNull(a) {
		v.throw("%s: missing %s", fn, what)
	}
	return a.String()
}

// ak_message(msg) adds msg, as text, to the result's messages. Without
// one (or with null) it throws, as the other helpers do for a missing
// argument: authentik's ak_message requires it.
func (v *vm) akMessage(call goja.FunctionCall) goja.Value {
	msg := v.stringArg("ak_message", call, 0, "message")
	v.cur.messages = append(v.cur.messages, msg)
	return goja.Undefined()
}

// logFunc is ak_logger.<level>(msg, fields?).
func (v *vm) logFunc(level string) func(goja.FunctionCall) goja.Value {
	slogLevel := slog.LevelInfo
	switch level {
	case "debug":
		slogLevel = slog.LevelDebug
	case "warning", "warn":
		slogLevel = slog.LevelWarn
	case "error", "exception", "critical":
		slogLevel = slog.LevelError
	}
	return func(call goja.FunctionCall) goja.Value {
		line := rules.LogLine{Level: level, Message: call.Argument(0).String()}
		attrs := []slog.Attr{slog.String("policy", v.cur.req.Policy.Name), slog.String("event", v.cur.req.Event.PK)}
		if f := call.Argument(1); !goja.IsUndefined(f) && !goja.IsNull(f) {
			if m, ok := v.exportLenient("ak_logger fields", f, false).(map[string]any); ok {
				line.Fields = m
				keys := make([]string, 0, len(m))
				for k := range m {
					keys = append(keys, k)
				}
				for _, k := range keys {
					attrs = append(attrs, slog.Any(k, m[k]))
				}
			}
		}
		v.cur.logs = append(v.cur.logs, line)
		v.pool.log.LogAttrs(v.cur.bounds.parent, slogLevel, line.Message, attrs...)
		return goja.Undefined()
	}
}

// list_flatten(v): the first element of an array, null for an empty one,
// anything else unchanged.
func (v *vm) listFlatten(call goja.FunctionCall) goja.Value {
	a := call.Argument(0)
	obj, ok := a.(*goja.Object)
	if !ok || obj.ClassName() != "Array" {
		return a
	}
	if obj.Get("length").ToInteger() == 0 {
		return goja.Null()
	}
	return obj.Get("0")
}

// regex_match(value, regex): an unanchored search with Python's syntax.
func (v *vm) regexMatch(call goja.FunctionCall) goja.Value {
	value := v.stringArg("regex_match", call, 0, "value")
	re := v.regex("regex_match", v.stringArg("regex_match", call, 1, "regex"))
	ok, err := re.MatchString(value)
	if err != nil {
		v.throw("regex_match: %v", err)
	}
	return v.rt.ToValue(ok)
}

// regex_replace(value, regex, repl): Python's re.sub, with \1 and \g<name>
// in repl.
func (v *vm) regexReplace(call goja.FunctionCall) goja.Value {
	value := v.stringArg("regex_replace", call, 0, "value")
	re := v.regex("regex_replace", v.stringArg("regex_replace", call, 1, "regex"))
	repl := v.stringArg("regex_replace", call, 2, "replacement")
	out, err := pythonSub(&re, value, repl)
	if err != nil {
		v.throw("regex_replace: %v", err)
	}
	return v.rt.ToValue(out)
}

// regex compiles pattern (or takes it from the cache) for one call of the
// helper fn, bounded by the evaluation's deadline (see [boundRegex]).
func (v *vm) regex(fn, pattern string) boundedRegex {
	re, err := compileRegex(pattern)
	if err != nil {
		v.throw("%s: invalid regex %q: %s", fn, pattern, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	var deadline time.Time
	if v.cur != nil {
		deadline = v.cur.bounds.end()
	}
	return boundRegex(re, deadline)
}
