package jsrt

import (
	"errors"
	"fmt"
	"maps"
	"math/big"
	"strings"

	"github.com/dop251/goja"
	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/rules"
)

// maxAllRows caps what .all() returns: more matching objects throw.
const maxAllRows = 10000

// installModels puts User, Group, Application, PolicyBinding and Event on
// the runtime, each with an `objects` manager.
func (v *vm) installModels() {
	v.installQueryMethods()
	v.protos = make(map[string]*goja.Object, len(rules.Models))
	for name, m := range rules.Models {
		proto := v.rt.NewObject()
		_ = proto.Set("save", v.saveFunc(m))
		v.protos[name] = proto
		model := v.rt.NewObject()
		_ = model.Set("objects", v.querySet(m, map[string]any{}))
		_ = v.rt.Set(name, model)
	}
}

// modelObject turns a row into an object whose prototype has save(). Its
// fields are converted when first read: policies usually read a few of
// them (the username of each user of an all(), say).
func (v *vm) modelObject(m *rules.Model, row map[string]any) *goja.Object {
	obj := v.newLazy(m.RowKeys(), func(key string) goja.Value { return v.toJS(row[key]) })
	_ = obj.SetPrototype(v.protos[m.Name])
	setShort(obj, modelShorts[m.Name])
	return obj
}

// modelShorts are the short forms of each model's objects (see
// [modelShort]).
var modelShorts = func() map[string]func(*lazyObject) any {
	out := make(map[string]func(*lazyObject) any, len(rules.Models))
	for name := range rules.Models {
		out[name] = modelShort(name)
	}
	return out
}()

// modelRefs are the app and model name authentik gives each model.
var modelRefs = map[string][2]string{
	"Group":         {"authentik_core", "group"},
	"Application":   {"authentik_core", "application"},
	"PolicyBinding": {"authentik_policies", "policybinding"},
	"Event":         {"authentik_events", "event"},
}

// modelShort is the short form of a model object, as authentik's
// sanitize_item gives it: get_user's {username, pk, email} for a user,
// model_to_dict's {app, model_name, pk (hex), name} for the others.
func modelShort(model string) func(o *lazyObject) any {
	if model == "User" {
		return userShort
	}
	ref := modelRefs[model]
	return func(o *lazyObject) any {
		pk := field(o, "pk")
		if s, ok := pk.(string); ok {
			pk = strings.ReplaceAll(s, "-", "")
		}
		var name any
		switch model {
		case "Event":
			name = "Event action=" + fieldText(o, "action")
		case "PolicyBinding":
			name = "Binding #" + fieldText(o, "order")
		default:
			name = field(o, "name")
		}
		return map[string]any{"app": ref[0], "model_name": ref[1], "pk": pk, "name": name}
	}
}

// userShort is get_user's form of a user object.
func userShort(o *lazyObject) any {
	return map[string]any{"username": field(o, "username"), "pk": field(o, "pk"), "email": field(o, "email")}
}

// field is o's property key for a short form: a scalar as Go data, an
// object (which a policy may have put there) as itself, for the
// [exporter] to convert within its limits.
func field(o *lazyObject, key string) any {
	return exportScalar(o.Get(key))
}

// fieldText is o's property key as text in a short form's name.
func fieldText(o *lazyObject, key string) string {
	switch x := field(o, key).(type) {
	case goja.Value:
		return "[object]"
	case *big.Int:
		return x.String()
	default:
		return fmt.Sprint(x)
	}
}

// querySet is a lazily evaluated filter: filter() narrows it, first(),
// get(), all(), count() and exists() run it. A query set is a plain-acting
// object whose methods are made when first read (a chain such as
// User.objects.filter({...}).first() makes one per step), each bound to its
// query set as a closure is, so that a method also works detached.
type querySet struct {
	v       *vm
	model   *rules.Model
	filters map[string]any
}

// querySetMethods are the methods of a query set, in the order Object.keys
// lists them.
var querySetMethods = []string{"filter", "first", "all", "get", "count", "exists"}

func (v *vm) querySet(m *rules.Model, filters map[string]any) *goja.Object {
	q := &querySet{v: v, model: m, filters: filters}
	return v.newLazy(querySetMethods, func(name string) goja.Value {
		method := v.queryMethods[name]
		return v.rt.ToValue(func(call goja.FunctionCall) goja.Value { return method(q, call) })
	})
}

// query is q's lookups and, when extra is an object, its lookups too.
func (q *querySet) query(extra goja.Value) rules.Query {
	f := maps.Clone(q.filters)
	if extra != nil && !goja.IsUndefined(extra) && !goja.IsNull(extra) {
		more, ok := q.v.exportStrict(q.model.Name+".objects.filter", extra).(map[string]any)
		if !ok {
			q.v.throw("%s.objects.filter: want an object of field lookups, got %s", q.model.Name, extra.String())
		}
		for k, x := range more {
			f[k] = x
		}
	}
	return rules.Query{Model: q.model, Filters: f}
}

// find runs query. first() and get() lock the row they return until the
// event commits (the usual read, change, save); all() does not, and save()
// of such an object checks that it was not changed meanwhile.
func (q *querySet) find(query rules.Query, limit int, lock bool) []map[string]any {
	v := q.v
	rows, err := rules.Find(v.cur.bounds.queries(), v.db(), query, limit, lock)
	v.check(err)
	return rows
}

func (q *querySet) count(extra goja.Value) int64 {
	n, err := rules.Count(q.v.cur.bounds.queries(), q.v.db(), q.query(extra))
	q.v.check(err)
	return n
}

// queryMethod is a query set method, given the query set it is bound to.
type queryMethod func(q *querySet, call goja.FunctionCall) goja.Value

// installQueryMethods builds the query set methods of the runtime.
func (v *vm) installQueryMethods() {
	v.queryMethods = map[string]queryMethod{
		"filter": func(q *querySet, call goja.FunctionCall) goja.Value {
			return v.querySet(q.model, q.query(call.Argument(0)).Filters)
		},
		"first": func(q *querySet, _ goja.FunctionCall) goja.Value {
			rows := q.find(q.query(nil), 1, true)
			if len(rows) == 0 {
				return goja.Null()
			}
			return v.modelObject(q.model, rows[0])
		},
		"all": func(q *querySet, _ goja.FunctionCall) goja.Value {
			rows := q.find(q.query(nil), maxAllRows+1, false)
			if len(rows) > maxAllRows {
				v.throw("%s.objects.all(): more than %d objects match; narrow the filter or use count()", q.model.Name, maxAllRows)
			}
			items := make([]any, len(rows))
			for i, r := range rows {
				items[i] = v.modelObject(q.model, r)
			}
			return v.rt.NewArray(items...)
		},
		"get": func(q *querySet, call goja.FunctionCall) goja.Value {
			rows := q.find(q.query(call.Argument(0)), 2, true)
			switch len(rows) {
			case 0:
				panic(v.rt.NewGoError(fmt.Errorf("%s matching query does not exist", q.model.Name)))
			case 1:
				return v.modelObject(q.model, rows[0])
			default:
				panic(v.rt.NewGoError(fmt.Errorf("get() returned more than one %s", q.model.Name)))
			}
		},
		"count": func(q *querySet, call goja.FunctionCall) goja.Value {
			return v.rt.ToValue(q.count(call.Argument(0)))
		},
		"exists": func(q *querySet, call goja.FunctionCall) goja.Value {
			return v.rt.ToValue(q.count(call.Argument(0)) > 0)
		},
	}
}

// saveFunc is the save({update_fields}) method of m's objects.
func (v *vm) saveFunc(m *rules.Model) func(goja.FunctionCall) goja.Value {
	return func(call goja.FunctionCall) goja.Value {
		this, ok := call.This.(*goja.Object)
		if !ok {
			v.throw("%s.save: call it on a %s object", m.Name, m.Name)
		}
		names := m.WritableFields()
		if opts := call.Argument(0); !goja.IsUndefined(opts) && !goja.IsNull(opts) {
			o, ok := opts.(*goja.Object)
			if !ok {
				v.throw("%s.save: want {update_fields: [...]}", m.Name)
			}
			if uf := o.Get("update_fields"); uf != nil && !goja.IsUndefined(uf) {
				list, ok := v.exportField(m.Name+".save", "update_fields", uf).([]any)
				if !ok {
					v.throw("%s.save: update_fields must be an array of field names", m.Name)
				}
				names = names[:0:0]
				for _, x := range list {
					s, ok := x.(string)
					if !ok {
						v.throw("%s.save: update_fields must be an array of field names", m.Name)
					}
					names = append(names, s)
				}
			}
		}
		values := make(map[string]any, len(names))
		for _, n := range names {
			val := this.Get(n)
			if val == nil || goja.IsUndefined(val) {
				values[n] = nil
				continue
			}
			values[n] = v.exportField(m.Name+".save", n, val)
		}
		pk := this.Get("pk")
		if pk == nil || goja.IsUndefined(pk) || goja.IsNull(pk) {
			v.throw("%s.save: the object has no pk", m.Name)
		}
		pkData := v.exportField(m.Name+".save", "pk", pk)
		var readAt any
		if u := this.Get("updated"); u != nil && !goja.IsUndefined(u) {
			readAt = v.exportField(m.Name+".save", "updated", u)
		}
		updated, err := rules.Save(v.cur.bounds.queries(), v.db(), m, pkData, readAt, values)
		v.check(err)
		if updated != "" {
			_ = this.Set("updated", updated) // a second save of this object is not a conflict
		}
		v.cur.req.Scope.Saved(m.Name, pkData, names)
		return goja.Undefined()
	}
}

// db returns the event's transaction, or throws in a dry run.
func (v *vm) db() sqlx.QueryerContext {
	tx, err := v.cur.req.Scope.DB(v.cur.bounds.context())
	if err != nil {
		v.throw("%v", err)
	}
	return tx
}

// check throws err into the running policy: a model error as a TypeError
// with its message, anything else (an SQL failure) as an Error.
func (v *vm) check(err error) {
	if err == nil {
		return
	}
	var me *rules.ModelError
	if errors.As(err, &me) {
		v.throw("%s", me.Msg)
	}
	// A database error aborts the event's transaction: the policy fails
	// even if it catches the exception, so that its savepoint is rolled back.
	v.cur.dbErr = err
	if rules.TimedOut(err) {
		panic(v.rt.NewGoError(fmt.Errorf("%w: %v", ErrTimeout, err)))
	}
	panic(v.rt.NewGoError(err))
}

// userPK returns the pk of a model object or event user dict.
func userPK(x goja.Value) (int64, bool) {
	if x == nil || goja.IsUndefined(x) || goja.IsNull(x) {
		return 0, false
	}
	if obj, ok := x.(*goja.Object); ok {
		pk := obj.Get("pk") // nil when the object has no pk, e.g. an anonymous event's user {}
		if pk == nil {
			return 0, false
		}
		return events.Int64(exportScalar(pk))
	}
	return events.Int64(exportScalar(x))
}
