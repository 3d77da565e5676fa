package jsrt

import (
	"fmt"
	"slices"
	"time"

	"github.com/dop251/goja"
)

// Limits of JSON.stringify (see [vm.installJSON]).
const (
	// maxJSONDepth bounds the nesting JSON.stringify serializes. goja's
	// stringify recurses in Go, whose stack overflow is fatal to the
	// worker; a thousand Go frames per level is far from that.
	maxJSONDepth = 10_000
	// maxJSONValues bounds the values one JSON.stringify serializes:
	// shared sub-objects are serialized each time they are reached, in Go,
	// where the policy's timeout cannot stop it.
	maxJSONValues = 1_000_000
)

// installJSON adjusts the JSON built-in before the shared globals are
// frozen: JSON.stringify throws a RangeError for a value nested deeper
// than maxJSONDepth or larger than maxJSONValues, instead of overflowing
// the Go stack (a fatal error) or running past the policy's timeout. It
// also keeps the runtime's RangeError constructor for host functions.
//
// The depth is measured during the serialization itself, by a replacer
// that goja's stringify calls for every value it is about to serialize
// (after toJSON, and after the policy's own replacer): a walk of the value
// beforehand would not see what getters, toJSON and replacers return, or
// would run them twice. The output is the original's: a replacer array
// (a property list) is applied by the guard instead, which orders keys
// as a plain object does (integer-like keys first).
func (v *vm) installJSON() {
	rangeError, ok := goja.AssertConstructor(v.rt.Get("RangeError"))
	if !ok {
		panic("jsrt: no RangeError constructor")
	}
	v.rangeError = rangeError
	array, _ := v.rt.Get("Array").(*goja.Object)
	if v.isArray, ok = goja.AssertFunction(array.Get("isArray")); !ok {
		panic("jsrt: no Array.isArray")
	}

	wrap, err := v.rt.RunString(`(function (stringify, guard) {
	"use strict";
	return {
		stringify(value, replacer, space) {
			const g = guard(replacer);
			if (typeof replacer !== "function") return stringify(value, g, space);
			return stringify(value, function (key, val) { return g.call(this, key, replacer.call(this, key, val)); }, space);
		},
	}.stringify;
})`)
	if err != nil {
		panic(fmt.Sprintf("jsrt: install JSON.stringify: %v", err))
	}
	makeWrapper, _ := goja.AssertFunction(wrap)
	jsonObj, _ := v.rt.Get("JSON").(*goja.Object)
	if jsonObj == nil {
		panic("jsrt: no JSON object")
	}
	wrapped, err := makeWrapper(goja.Undefined(), jsonObj.Get("stringify"), v.rt.ToValue(v.jsonGuard))
	if err != nil {
		panic(fmt.Sprintf("jsrt: install JSON.stringify: %v", err))
	}
	if err := jsonObj.Set("stringify", wrapped); err != nil {
		panic(fmt.Sprintf("jsrt: install JSON.stringify: %v", err))
	}
}

// jsonGuard returns the replacer of one JSON.stringify call (see
// [vm.installJSON]); call's argument is the policy's replacer.
func (v *vm) jsonGuard(call goja.FunctionCall) goja.Value {
	g := &stringifyGuard{v: v}
	if list, ok := call.Argument(0).(*goja.Object); ok && v.arrayLike(list) {
		g.keys, g.hasKeys = propertyList(list), true
	}
	return v.rt.ToValue(g.replace)
}

// stringifyGuard follows one JSON.stringify: stringify serializes depth
// first, and calls the replacer with the holder of each value as this, so
// the holder is on the stack of objects entered, and its position is the
// depth.
type stringifyGuard struct {
	v      *vm
	stack  []*goja.Object
	values int
	// keys is the replacer's property list, when it is an array; origs
	// then holds, for each object of stack, the object it copies.
	keys    []string
	hasKeys bool
	origs   []*goja.Object
}

func (g *stringifyGuard) replace(call goja.FunctionCall) goja.Value {
	holder, _ := call.This.(*goja.Object)
	depth := 0 // the holder of the value itself, which stringify makes
	for i := len(g.stack) - 1; i >= 0; i-- {
		if g.stack[i] == holder {
			depth = i + 1
			break
		}
	}
	g.stack = g.stack[:depth]
	if g.hasKeys {
		g.origs = g.origs[:depth]
	}
	val := call.Argument(1)
	g.values++
	if g.values > maxJSONValues {
		panic(g.v.newRangeError(fmt.Sprintf("JSON.stringify: the value is too large (more than %d values)", maxJSONValues)))
	}
	if g.values%1024 == 0 {
		// stringify runs in Go, where the runtime's interrupt cannot
		// stop it: end it at the policy's deadline.
		if d := g.v.deadline(); !d.IsZero() && !time.Now().Before(d) {
			panic(g.v.newRangeError("JSON.stringify: the policy's time ran out during the serialization"))
		}
	}
	obj, ok := val.(*goja.Object)
	if !ok {
		return val
	}
	if _, isFn := goja.AssertFunction(obj); isFn {
		return val // not serialized
	}
	if depth+1 > maxJSONDepth {
		panic(g.v.newRangeError(fmt.Sprintf("JSON.stringify: the value is nested deeper than %d levels", maxJSONDepth)))
	}
	if g.hasKeys {
		orig := obj
		switch obj.ClassName() {
		case "String", "Number", "Boolean", "BigInt":
		default:
			if g.v.arrayLike(obj) {
				break
			}
			// The property list: only its keys, in its order, each read
			// once, from a copy (whose cycles stringify cannot see).
			if slices.Contains(g.origs, obj) {
				panic(g.v.rt.NewTypeError("Converting circular structure to JSON"))
			}
			cp := g.v.rt.NewObject()
			for _, k := range g.keys {
				if x := obj.Get(k); x != nil {
					_ = cp.Set(k, x)
				}
			}
			obj = cp
		}
		g.origs = append(g.origs, orig)
	}
	g.stack = append(g.stack, obj)
	return obj
}

// propertyList is the property list of a replacer array, as
// JSON.stringify makes it: its strings and numbers (also wrapped) as
// strings, each once, in order.
func propertyList(list *goja.Object) []string {
	n := list.Get("length").ToInteger()
	keys := make([]string, 0, min(n, 1024))
	seen := make(map[string]bool)
	for i := range n {
		x := list.Get(indexKey(int(i)))
		var k string
		switch t := x.(type) {
		case *goja.Object:
			if c := t.ClassName(); c != "String" && c != "Number" {
				continue
			}
			k = t.String()
		default:
			if x == nil || x.ExportType() == nil {
				continue
			}
			switch x.Export().(type) {
			case string, int64, float64:
				k = x.String()
			default:
				continue
			}
		}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	return keys
}

// arrayLike reports whether JavaScript's Array.isArray holds for obj (an
// array, also behind a Proxy).
func (v *vm) arrayLike(obj *goja.Object) bool {
	res, err := v.isArray(goja.Undefined(), obj)
	return err == nil && res.ToBoolean()
}
