package jsrt

import (
	"errors"
	"fmt"
	"maps"

	"github.com/dop251/goja"
	"github.com/jmoiron/sqlx"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/rules"
)

// maxAllRows caps what .all() returns.
const maxAllRows = 10000

// installModels puts User, Group, Application, PolicyBinding and Event on
// the runtime, each with an `objects` manager.
func (v *vm) installModels() {
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

// modelObject turns a row into a plain object whose prototype has save().
func (v *vm) modelObject(m *rules.Model, row map[string]any) *goja.Object {
	obj := v.rt.NewObject()
	_ = obj.SetPrototype(v.protos[m.Name])
	for k, x := range row {
		_ = obj.Set(k, v.toJS(x))
	}
	return obj
}

// querySet is a lazily evaluated filter: filter() narrows it, first(),
// get(), all(), count() and exists() run it.
func (v *vm) querySet(m *rules.Model, filters map[string]any) *goja.Object {
	qs := v.rt.NewObject()
	query := func(extra goja.Value) rules.Query {
		f := maps.Clone(filters)
		if extra != nil && !goja.IsUndefined(extra) && !goja.IsNull(extra) {
			more, ok := exportJSON(extra).(map[string]any)
			if !ok {
				v.throw("%s.objects.filter: want an object of field lookups, got %s", m.Name, extra.String())
			}
			for k, x := range more {
				f[k] = x
			}
		}
		return rules.Query{Model: m, Filters: f}
	}
	// first() and get() lock the row they return until the event commits
	// (the usual read, change, save); all() does not, and save() of such an
	// object checks that it was not changed meanwhile.
	find := func(q rules.Query, limit int, lock bool) []map[string]any {
		tx := v.db()
		rows, err := rules.Find(v.cur.dbCtx, tx, q, limit, lock)
		v.check(err)
		return rows
	}
	_ = qs.Set("filter", func(call goja.FunctionCall) goja.Value {
		return v.querySet(m, query(call.Argument(0)).Filters)
	})
	_ = qs.Set("first", func(goja.FunctionCall) goja.Value {
		rows := find(query(nil), 1, true)
		if len(rows) == 0 {
			return goja.Null()
		}
		return v.modelObject(m, rows[0])
	})
	_ = qs.Set("all", func(goja.FunctionCall) goja.Value {
		rows := find(query(nil), maxAllRows, false)
		items := make([]any, len(rows))
		for i, r := range rows {
			items[i] = v.modelObject(m, r)
		}
		return v.rt.NewArray(items...)
	})
	_ = qs.Set("get", func(call goja.FunctionCall) goja.Value {
		rows := find(query(call.Argument(0)), 2, true)
		switch len(rows) {
		case 0:
			panic(v.rt.NewGoError(fmt.Errorf("%s matching query does not exist", m.Name)))
		case 1:
			return v.modelObject(m, rows[0])
		default:
			panic(v.rt.NewGoError(fmt.Errorf("get() returned more than one %s", m.Name)))
		}
	})
	count := func(call goja.FunctionCall) int64 {
		n, err := rules.Count(v.cur.dbCtx, v.db(), query(call.Argument(0)))
		v.check(err)
		return n
	}
	_ = qs.Set("count", func(call goja.FunctionCall) goja.Value { return v.rt.ToValue(count(call)) })
	_ = qs.Set("exists", func(call goja.FunctionCall) goja.Value { return v.rt.ToValue(count(call) > 0) })
	return qs
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
				list, ok := uf.Export().([]any)
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
			values[n] = exportJSON(val)
		}
		pk := this.Get("pk")
		if pk == nil || goja.IsUndefined(pk) || goja.IsNull(pk) {
			v.throw("%s.save: the object has no pk", m.Name)
		}
		var readAt any
		if u := this.Get("updated"); u != nil && !goja.IsUndefined(u) {
			readAt = u.Export()
		}
		updated, err := rules.Save(v.cur.dbCtx, v.db(), m, pk.Export(), readAt, values)
		v.check(err)
		if updated != "" {
			_ = this.Set("updated", updated) // a second save of this object is not a conflict
		}
		v.cur.req.Scope.Saved(m.Name, pk.Export(), names)
		return goja.Undefined()
	}
}

// db returns the event's transaction, or throws in a dry run.
func (v *vm) db() sqlx.QueryerContext {
	tx, err := v.cur.req.Scope.DB(v.cur.ctx)
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
		return events.Int64(pk.Export())
	}
	return events.Int64(x.Export())
}
