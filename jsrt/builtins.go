package jsrt

import (
	"fmt"
	"slices"

	"github.com/dop251/goja"
)

// maxTextDepth bounds the nesting of arrays that Array.prototype.join and
// toLocaleString (and so toString, String(a), `${a}`, a + "") turn into
// text: goja does it in Go, recursing once per level, and a Go stack
// overflow is fatal to the worker.
const maxTextDepth = 10_000

// installBuiltinGuards bounds the built-ins that recurse in Go on data a
// policy makes, before the shared globals are frozen: JSON.parse refuses
// text nested deeper than maxJSONDepth, and the array methods that turn
// nested arrays into text throw a RangeError past maxTextDepth levels.
// Both throw what a policy can catch, rather than overflowing the Go stack.
func (v *vm) installBuiltinGuards() {
	jsonObj, _ := v.rt.Get("JSON").(*goja.Object)
	parse, ok := goja.AssertFunction(jsonObj.Get("parse"))
	if !ok {
		panic("jsrt: no JSON.parse")
	}
	v.replaceMethod(jsonObj, "parse", func(call goja.FunctionCall) goja.Value {
		args := slices.Clone(call.Arguments)
		if len(args) == 0 {
			args = []goja.Value{goja.Undefined()}
		}
		text := args[0].String()
		if jsonTextDepth(text) > maxJSONDepth {
			panic(v.newRangeError(fmt.Sprintf("JSON.parse: the text is nested deeper than %d levels", maxJSONDepth)))
		}
		args[0] = v.rt.ToValue(text) // converted once
		return rethrow(parse(call.This, args...))
	})

	array, _ := v.rt.Get("Array").(*goja.Object)
	proto, _ := array.Get("prototype").(*goja.Object)
	for _, name := range []string{"join", "toLocaleString"} {
		orig, ok := goja.AssertFunction(proto.Get(name))
		if !ok {
			panic("jsrt: no Array.prototype." + name)
		}
		v.replaceMethod(proto, name, func(call goja.FunctionCall) goja.Value {
			if v.textDepth >= maxTextDepth {
				panic(v.newRangeError(fmt.Sprintf("Array.prototype.%s: the array is nested deeper than %d levels", name, maxTextDepth)))
			}
			v.textDepth++
			defer func() { v.textDepth-- }() // also when a timeout unwinds it
			return rethrow(orig(call.This, call.Arguments...))
		})
	}
}

// replaceMethod puts fn in place of obj's method name, with the same
// attributes, name and length.
func (v *vm) replaceMethod(obj *goja.Object, name string, fn func(goja.FunctionCall) goja.Value) {
	old, _ := obj.Get(name).(*goja.Object)
	f, _ := v.rt.ToValue(fn).(*goja.Object)
	if old == nil || f == nil {
		panic("jsrt: no method " + name)
	}
	if err := f.DefineDataProperty("name", v.rt.ToValue(name), goja.FLAG_FALSE, goja.FLAG_TRUE, goja.FLAG_FALSE); err != nil {
		panic(fmt.Sprintf("jsrt: name %s: %v", name, err))
	}
	if err := f.DefineDataProperty("length", old.Get("length"), goja.FLAG_FALSE, goja.FLAG_TRUE, goja.FLAG_FALSE); err != nil {
		panic(fmt.Sprintf("jsrt: length of %s: %v", name, err))
	}
	if err := obj.DefineDataProperty(name, f, goja.FLAG_TRUE, goja.FLAG_TRUE, goja.FLAG_FALSE); err != nil {
		panic(fmt.Sprintf("jsrt: replace %s: %v", name, err))
	}
}

// rethrow returns what a call of a JavaScript function from a host
// function returned, and throws what it threw (an interrupt goes on
// unwinding).
func rethrow(val goja.Value, err error) goja.Value {
	if err != nil {
		panic(err)
	}
	return val
}

// jsonTextDepth is the deepest nesting of arrays and objects in JSON text
// (brackets inside strings do not count); malformed text is measured as
// far as it goes.
func jsonTextDepth(text string) int {
	depth, deepest := 0, 0
	inString, escaped := false, false
	for i := 0; i < len(text); i++ {
		c := text[i]
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			depth++
			deepest = max(deepest, depth)
		case c == ']' || c == '}':
			depth--
		}
	}
	return deepest
}
