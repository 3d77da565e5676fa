package jsrt

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

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
	// values[i] is the value of keys[i] once built or assigned; gone[i]
	// marks a deleted key (nil until a key is deleted). Objects have few
	// keys: a scan of keys finds one faster than a map, and costs no map
	// per object.
	values []goja.Value
	gone   []bool
	// short, when set, is what the object becomes in an event or a
	// policy's result, as authentik's sanitize_item makes it: a model's
	// reference, an address's text (see [setShort]).
	short func(o *lazyObject) any
}

var _ goja.DynamicObject = (*lazyObject)(nil)

// newLazy returns an object with the given keys, each built by build. The
// keys may be shared with other objects: the object never changes them.
func (v *vm) newLazy(keys []string, build func(key string) goja.Value) *goja.Object {
	return v.rt.NewDynamicObject(&lazyObject{keys: keys, build: build, values: make([]goja.Value, len(keys))})
}

// setShort gives obj (made by newLazy) the short form short.
func setShort(obj *goja.Object, short func(o *lazyObject) any) {
	if o, ok := obj.Export().(*lazyObject); ok {
		o.short = short
	}
}

// index is the position of key in keys, or -1 (also when deleted).
func (o *lazyObject) index(key string) int {
	i := slices.Index(o.keys, key)
	if i >= 0 && o.gone != nil && o.gone[i] {
		return -1
	}
	return i
}

func (o *lazyObject) Get(key string) goja.Value {
	i := o.index(key)
	if i < 0 {
		return nil
	}
	if o.values[i] == nil {
		o.values[i] = o.build(key)
	}
	return o.values[i]
}

func (o *lazyObject) Set(key string, val goja.Value) bool {
	i := slices.Index(o.keys, key)
	if i >= 0 && o.gone != nil && o.gone[i] {
		// A deleted key that comes back goes last, as in a plain object.
		o.ownKeySlice()
		o.keys = slices.Delete(o.keys, i, i+1)
		o.values = slices.Delete(o.values, i, i+1)
		o.gone = slices.Delete(o.gone, i, i+1)
		i = -1
	}
	added := i < 0
	if added {
		o.ownKeySlice()
		o.keys = append(o.keys, key)
		o.values = append(o.values, nil)
		if o.gone != nil {
			o.gone = append(o.gone, false)
		}
		i = len(o.keys) - 1
	}
	if val == nil {
		// Object.defineProperty without a value: an existing value stays.
		if !added {
			return true
		}
		val = goja.Undefined()
	}
	o.values[i] = val
	return true
}

// ownKeySlice makes keys this object's own before it changes them: they
// may be shared with other objects.
func (o *lazyObject) ownKeySlice() {
	if !o.ownKeys {
		o.keys, o.ownKeys = slices.Clone(o.keys), true
	}
}

func (o *lazyObject) Has(key string) bool {
	return o.index(key) >= 0
}

func (o *lazyObject) Delete(key string) bool {
	i := slices.Index(o.keys, key)
	if i < 0 {
		return true
	}
	if o.gone == nil {
		o.gone = make([]bool, len(o.keys))
	}
	o.gone[i] = true
	o.values[i] = nil
	return true
}

func (o *lazyObject) Keys() []string {
	if o.gone == nil {
		return o.keys
	}
	keys := make([]string, 0, len(o.keys))
	for i, k := range o.keys {
		if !o.gone[i] {
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
		slices.SortFunc(keys, jsKeyOrder)
		return v.newLazy(keys, func(key string) goja.Value { return v.lazyJS(t[key]) })
	case []any:
		return v.rt.NewDynamicArray(&lazyArray{v: v, items: t, vals: make([]goja.Value, len(t))})
	default:
		return v.toJS(x)
	}
}

// jsKeyOrder orders the keys of decoded JSON as JavaScript lists an
// object's: array indexes first, by value, then the other keys (sorted, as
// decoding does not keep their order).
func jsKeyOrder(a, b string) int {
	ai, aIndex := arrayIndex(a)
	bi, bIndex := arrayIndex(b)
	switch {
	case aIndex && bIndex:
		return cmp.Compare(ai, bi)
	case aIndex:
		return -1
	case bIndex:
		return 1
	}
	return strings.Compare(a, b)
}

// arrayIndex reports whether key is an array index ("0" to "4294967294",
// without leading zeros) and its value.
func arrayIndex(key string) (uint64, bool) {
	if key == "" || len(key) > 10 || (len(key) > 1 && key[0] == '0') {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(key); i++ {
		if key[i] < '0' || key[i] > '9' {
			return 0, false
		}
		n = n*10 + uint64(key[i]-'0')
	}
	return n, n < 1<<32-1
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

// maxLazyArrayLen bounds how far a policy can grow an event's array, by
// its length or by an index: a lazy array is dense, so growing it to n
// allocates n slots at once (where a plain array stays sparse), and goja
// lists every index below its length. An array of the event longer than
// this keeps its length and cannot grow.
const maxLazyArrayLen = 1 << 16

func (a *lazyArray) SetLen(n int) bool {
	if n < 0 {
		return false
	}
	if limit := max(maxLazyArrayLen, len(a.items)); n > len(a.vals) && n > limit {
		panic(a.v.newRangeError(fmt.Sprintf("an array of the event cannot grow to %d elements (at most %d); copy it first: [...array]", n, limit)))
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
