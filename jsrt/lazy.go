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
	keys []string
	// ownKeys: keys is this object's own slice, not one shared with others.
	ownKeys bool
	build   func(key string) goja.Value
	values  map[string]goja.Value
	gone    map[string]bool
}

var _ goja.DynamicObject = (*lazyObject)(nil)

// newLazy returns an object with the given keys, each built by build. The
// keys may be shared with other objects: the object never changes them.
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
		if !o.ownKeys {
			// Never into a backing array shared with other objects.
			o.keys, o.ownKeys = slices.Clip(o.keys), true
		}
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

// lazyJS wraps decoded JSON data for policies without converting it up
// front: objects and arrays become wrappers that convert an element when it
// is first read. Writes stay in the wrapper, so the Go data (shared by the
// rules of an event) never changes.
func (v *vm) lazyJS(x any) goja.Value {
	switch t := x.(type) {
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return v.newLazy(keys, func(key string) goja.Value { return v.lazyJS(t[key]) })
	case []any:
		return v.rt.NewDynamicArray(&lazyArray{v: v, items: t, vals: make([]goja.Value, len(t))})
	default:
		return v.toJS(x)
	}
}

// lazyArray is the array counterpart of lazyObject.
type lazyArray struct {
	v     *vm
	items []any
	vals  []goja.Value // nil: not read yet
	set   []bool       // assigned by the policy (a nil value means undefined)
}

var _ goja.DynamicArray = (*lazyArray)(nil)

func (a *lazyArray) Len() int { return len(a.vals) }

func (a *lazyArray) Get(i int) goja.Value {
	if i < 0 || i >= len(a.vals) {
		return nil
	}
	if a.vals[i] == nil && (a.set == nil || !a.set[i]) && i < len(a.items) {
		a.vals[i] = a.v.lazyJS(a.items[i])
	}
	return a.vals[i]
}

func (a *lazyArray) Set(i int, val goja.Value) bool {
	if i < 0 {
		return false
	}
	if i >= len(a.vals) {
		a.SetLen(i + 1)
	}
	if a.set == nil {
		a.set = make([]bool, len(a.vals))
	}
	a.vals[i], a.set[i] = val, true
	return true
}

func (a *lazyArray) SetLen(n int) bool {
	if n < 0 {
		return false
	}
	// Materialise what stays, so that shrinking and growing again never
	// brings back old items.
	for i := range min(n, len(a.vals)) {
		a.Get(i)
	}
	if n <= len(a.vals) {
		a.vals = a.vals[:n]
		if a.set != nil {
			a.set = a.set[:n]
		}
		a.items = a.items[:min(n, len(a.items))]
		return true
	}
	a.vals = append(a.vals, make([]goja.Value, n-len(a.vals))...)
	set := make([]bool, n)
	copy(set, a.set)
	for i := len(a.items); i < n; i++ {
		set[i] = true // new slots are undefined, not items
	}
	a.set = set
	return true
}
