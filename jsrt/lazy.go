package jsrt

import (
	"slices"

	"github.com/dop251/goja"
)

// lazyObject is a JavaScript object whose properties are built from Go data
// on first access and then kept: policies that return early (most check
// the action first) never pay for the parts of an event they do not read.
// Properties can be assigned and deleted like those of a plain object.
type lazyObject struct {
	keys   []string
	build  func(key string) goja.Value
	values map[string]goja.Value
	gone   map[string]bool
}

var _ goja.DynamicObject = (*lazyObject)(nil)

// newLazy returns an object with the given keys, each built by build.
func (v *vm) newLazy(keys []string, build func(key string) goja.Value) *goja.Object {
	return v.rt.NewDynamicObject(&lazyObject{keys: keys, build: build, values: make(map[string]goja.Value, len(keys))})
}

func (o *lazyObject) Get(key string) goja.Value {
	if val, ok := o.values[key]; ok {
		return val
	}
	if o.gone[key] || !slices.Contains(o.keys, key) {
		return nil
	}
	val := o.build(key)
	o.values[key] = val
	return val
}

func (o *lazyObject) Set(key string, val goja.Value) bool {
	if !slices.Contains(o.keys, key) {
		o.keys = append(o.keys, key)
	}
	delete(o.gone, key)
	o.values[key] = val
	return true
}

func (o *lazyObject) Has(key string) bool {
	return !o.gone[key] && slices.Contains(o.keys, key)
}

func (o *lazyObject) Delete(key string) bool {
	if o.gone == nil {
		o.gone = make(map[string]bool)
	}
	o.gone[key] = true
	delete(o.values, key)
	return true
}

func (o *lazyObject) Keys() []string {
	if len(o.gone) == 0 {
		return o.keys
	}
	keys := make([]string, 0, len(o.keys))
	for _, k := range o.keys {
		if !o.gone[k] {
			keys = append(keys, k)
		}
	}
	return keys
}
