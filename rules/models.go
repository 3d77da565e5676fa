package rules

import (
	"context"
	stdsql "database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/heraldhq/herald/events"
)

// Column types a model field can have.
type colType int

const (
	colText colType = iota
	colBigint
	colUUID
	colBool
	colInt
	colJSON
	colTime
	colInet
)

// field is one model field: its name in policies and its column.
type field struct {
	name     string
	column   string
	typ      colType
	writable bool
}

// Model describes a table that policies can read (and mostly write)
// through X.objects.
type Model struct {
	// Name is the JavaScript name (User, Group, …).
	Name  string
	table string
	// pk is the primary key field; "pk" is an alias of it.
	pk     string
	fields []field
	// hasUpdated: saves set the updated column.
	hasUpdated bool
}

// Models are the models of the policy API, by JavaScript name.
var Models = map[string]*Model{
	"User": {Name: "User", table: "users", pk: "id", hasUpdated: true, fields: []field{
		{"id", "id", colBigint, false}, {"uuid", "uuid", colUUID, false},
		{"username", "username", colText, true}, {"name", "name", colText, true},
		{"email", "email", colText, true}, {"is_active", "is_active", colBool, true},
		{"is_superuser", "is_superuser", colBool, true}, {"attributes", "attributes", colJSON, true},
		{"last_login", "last_login", colTime, true},
		{"created", "created", colTime, false}, {"updated", "updated", colTime, false},
	}},
	"Group": {Name: "Group", table: "groups", pk: "id", hasUpdated: true, fields: []field{
		{"id", "id", colUUID, false}, {"name", "name", colText, true},
		{"parent", "parent_id", colUUID, true}, {"is_superuser", "is_superuser", colBool, true},
		{"attributes", "attributes", colJSON, true},
		{"created", "created", colTime, false}, {"updated", "updated", colTime, false},
	}},
	"Application": {Name: "Application", table: "applications", pk: "id", hasUpdated: true, fields: []field{
		{"id", "id", colUUID, false}, {"slug", "slug", colText, true}, {"name", "name", colText, true},
		{"attributes", "attributes", colJSON, true},
		{"created", "created", colTime, false}, {"updated", "updated", colTime, false},
	}},
	"PolicyBinding": {Name: "PolicyBinding", table: "policy_bindings", pk: "id", hasUpdated: true, fields: []field{
		{"id", "id", colUUID, false},
		{"target_rule", "target_rule_id", colUUID, false}, {"target_application", "target_application_id", colUUID, false},
		{"policy", "policy_id", colUUID, false}, {"group", "group_id", colUUID, false}, {"user", "user_id", colBigint, false},
		{"order", `"order"`, colInt, true}, {"enabled", "enabled", colBool, true}, {"negate", "negate", colBool, true},
		{"timeout_seconds", "timeout_seconds", colInt, true}, {"failure_result", "failure_result", colBool, true},
		{"created", "created", colTime, false}, {"updated", "updated", colTime, false},
	}},
	"Event": {Name: "Event", table: "events", pk: "id", fields: []field{
		{"id", "id", colUUID, false}, {"action", "action", colText, false}, {"app", "app", colText, false},
		{"user", `"user"`, colJSON, false}, {"context", "context", colJSON, false},
		{"client_ip", "client_ip", colInet, false}, {"created", "created", colTime, false},
		{"expires", "expires", colTime, false}, {"brand", "brand", colJSON, false},
	}},
}

// ModelError is a bad use of the model API: an unknown model, field or
// lookup, or a value of the wrong type. Policies see it as a thrown error.
type ModelError struct{ Msg string }

func (e *ModelError) Error() string { return e.Msg }

func modelErr(format string, args ...any) error {
	return &ModelError{Msg: fmt.Sprintf(format, args...)}
}

func (m *Model) field(name string) (field, bool) {
	if name == "pk" {
		name = m.pk
	}
	for _, f := range m.fields {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

// FieldNames lists the fields of m that filters accept, for error messages.
func (m *Model) FieldNames() []string {
	names := []string{"pk"}
	for _, f := range m.fields {
		if f.typ != colJSON {
			names = append(names, f.name)
		}
	}
	if m.Name == "PolicyBinding" {
		names = append(names, "target")
	}
	return names
}

// Query is a filter over a model: field lookups joined with AND.
type Query struct {
	Model   *Model
	Filters map[string]any
}

// lookups a filter key may end with; "" is exact.
var lookups = []string{"in", "iexact", "isnull", "gt", "gte", "lt", "lte", "contains", "icontains", "startswith"}

// where builds the WHERE clause of q, validating every key and value so
// that no bad input reaches PostgreSQL (an SQL error would abort the
// event's transaction).
func (q Query) where(args *[]any) (string, error) {
	keys := slices.Sorted(maps.Keys(q.Filters))
	var conds []string
	for _, key := range keys {
		value := q.Filters[key]
		name, lookup := key, ""
		if i := strings.LastIndex(key, "__"); i > 0 && slices.Contains(lookups, key[i+2:]) {
			name, lookup = key[:i], key[i+2:]
		}
		if q.Model.Name == "PolicyBinding" && name == "target" {
			v, err := convert(field{name: "target", typ: colUUID}, pkOf(value))
			if err != nil {
				return "", modelErr("%s.objects.filter: %v", q.Model.Name, err)
			}
			*args = append(*args, v)
			n := len(*args)
			conds = append(conds, fmt.Sprintf("(target_rule_id = $%d OR target_application_id = $%d)", n, n))
			continue
		}
		f, ok := q.Model.field(name)
		if !ok || f.typ == colJSON {
			return "", modelErr("%s.objects.filter: unknown field %q (fields: %s)", q.Model.Name, name, strings.Join(q.Model.FieldNames(), ", "))
		}
		cond, err := condition(f, lookup, value, args)
		if err != nil {
			return "", modelErr("%s.objects.filter: %s: %v", q.Model.Name, key, err)
		}
		conds = append(conds, cond)
	}
	if len(conds) == 0 {
		return "true", nil
	}
	return strings.Join(conds, " AND "), nil
}

func condition(f field, lookup string, value any, args *[]any) (string, error) {
	arg := func(v any) string { *args = append(*args, v); return fmt.Sprintf("$%d", len(*args)) }
	switch lookup {
	case "":
		if value == nil {
			return f.column + " IS NULL", nil
		}
		v, err := convert(f, pkOf(value))
		if err != nil {
			return "", err
		}
		return f.column + " = " + arg(v), nil
	case "isnull":
		b, ok := value.(bool)
		if !ok {
			return "", fmt.Errorf("isnull wants true or false, got %s", describe(value))
		}
		if b {
			return f.column + " IS NULL", nil
		}
		return f.column + " IS NOT NULL", nil
	case "in":
		list, ok := value.([]any)
		if !ok {
			return "", fmt.Errorf("in wants an array, got %s", describe(value))
		}
		vals := make([]string, 0, len(list))
		for _, x := range list {
			v, err := convert(f, pkOf(x))
			if err != nil {
				return "", err
			}
			vals = append(vals, fmt.Sprint(v))
		}
		if len(vals) == 0 {
			return "false", nil
		}
		return f.column + " = ANY(" + arg(pq.Array(vals)) + "::" + sqlType(f) + "[])", nil
	case "iexact", "contains", "icontains", "startswith":
		if f.typ != colText {
			return "", fmt.Errorf("%s works on text fields only", lookup)
		}
		s, ok := value.(string)
		if !ok {
			return "", fmt.Errorf("%s wants a string, got %s", lookup, describe(value))
		}
		esc := strings.NewReplacer(`\`, `\\`, "%", `\%`, "_", `\_`).Replace(s)
		switch lookup {
		case "iexact":
			return "lower(" + f.column + ") = lower(" + arg(s) + ")", nil
		case "contains":
			return f.column + " LIKE " + arg("%"+esc+"%"), nil
		case "icontains":
			return f.column + " ILIKE " + arg("%"+esc+"%"), nil
		default:
			return f.column + " LIKE " + arg(esc+"%"), nil
		}
	default: // gt, gte, lt, lte
		v, err := convert(f, value)
		if err != nil {
			return "", err
		}
		op := map[string]string{"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[lookup]
		return f.column + " " + op + " " + arg(v), nil
	}
}

// pkOf returns the pk of a model object (a map with "pk"), else v.
func pkOf(v any) any {
	if m, ok := v.(map[string]any); ok {
		if pk, ok := m["pk"]; ok {
			return pk
		}
	}
	return v
}

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("the string %q", v)
	case bool:
		return fmt.Sprintf("the boolean %v", v)
	case int64, float64, int:
		return fmt.Sprintf("the number %v", v)
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}

// convert checks that v fits field f and returns it as a query argument.
func convert(f field, v any) (any, error) {
	switch f.typ {
	case colText:
		switch t := v.(type) {
		case string:
			return t, nil
		case int64, float64:
			return fmt.Sprint(t), nil
		}
	case colBigint:
		if n, ok := events.Int64(v); ok {
			return n, nil
		}
	case colInt:
		if n, ok := events.Int64(v); ok && n >= math.MinInt32 && n <= math.MaxInt32 {
			return n, nil
		}
	case colUUID:
		if s, ok := v.(string); ok {
			if u, err := events.CanonicalUUID(s); err == nil {
				return u, nil
			}
		}
	case colBool:
		if b, ok := v.(bool); ok {
			return b, nil
		}
	case colTime:
		switch t := v.(type) {
		case time.Time:
			return t, nil
		case string:
			if ts, err := time.Parse(time.RFC3339Nano, t); err == nil {
				return ts, nil
			}
		}
	case colInet:
		if s, ok := v.(string); ok {
			if _, err := events.CanonicalIP(s); err == nil {
				return s, nil
			}
		}
	case colJSON:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", f.name, err)
		}
		return string(b), nil
	}
	return nil, fmt.Errorf("invalid value for %s: %s", f.name, describe(v))
}

func sqlType(f field) string {
	switch f.typ {
	case colBigint:
		return "bigint"
	case colInt:
		return "integer"
	case colUUID:
		return "uuid"
	case colBool:
		return "boolean"
	case colTime:
		return "timestamptz"
	case colInet:
		return "inet"
	}
	return "text"
}

func (m *Model) selectList() string {
	cols := make([]string, len(m.fields))
	for i, f := range m.fields {
		cols[i] = f.column
	}
	return strings.Join(cols, ", ")
}

// Find runs q and returns at most limit rows (0: no limit) as plain maps
// keyed by field name, plus "pk". With lock, the rows are locked until the
// transaction ends, so that a read-modify-save by one event cannot be lost
// to a concurrent one.
func Find(ctx context.Context, db sqlx.QueryerContext, q Query, limit int, lock bool) ([]map[string]any, error) {
	var args []any
	where, err := q.where(&args)
	if err != nil {
		return nil, err
	}
	sql := "SELECT " + q.Model.selectList() + " FROM " + q.Model.table + " WHERE " + where + " ORDER BY " + q.Model.pk
	if limit > 0 {
		sql += fmt.Sprintf(" LIMIT %d", limit)
	}
	if lock && q.Model.hasUpdated {
		sql += " FOR NO KEY UPDATE"
	}
	rows, err := db.QueryxContext(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", q.Model.Name, err)
	}
	defer rows.Close()
	var out []map[string]any
	for rows.Next() {
		vals, err := rows.SliceScan()
		if err != nil {
			return nil, fmt.Errorf("scan %s: %w", q.Model.Name, err)
		}
		obj := make(map[string]any, len(vals)+1)
		for i, f := range q.Model.fields {
			obj[f.name] = fromColumn(f, vals[i])
		}
		obj["pk"] = obj[q.Model.pk]
		out = append(out, obj)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", q.Model.Name, err)
	}
	return out, nil
}

// Count returns how many rows match q.
func Count(ctx context.Context, db sqlx.QueryerContext, q Query) (int64, error) {
	var args []any
	where, err := q.where(&args)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := sqlx.GetContext(ctx, db, &n, "SELECT count(*) FROM "+q.Model.table+" WHERE "+where, args...); err != nil {
		return 0, fmt.Errorf("count %s: %w", q.Model.Name, err)
	}
	return n, nil
}

func fromColumn(f field, v any) any {
	switch t := v.(type) {
	case nil:
		return nil
	case []byte:
		switch f.typ {
		case colJSON:
			var out any
			if err := json.Unmarshal(t, &out); err != nil {
				return string(t)
			}
			return out
		default:
			return string(t)
		}
	case time.Time:
		return t.UTC().Format(time.RFC3339Nano)
	default:
		return t
	}
}

// Save writes the given fields of the object with pk. readAt is the
// object's updated value when it was read (nil to skip the check): if the
// row changed since, Save fails with [ErrConflict] instead of overwriting
// the other change. Unknown or read-only fields and values of the wrong
// type are a [*ModelError].
func Save(ctx context.Context, db sqlx.QueryerContext, m *Model, pk any, readAt any, values map[string]any) (updated string, err error) {
	if len(m.fields) == 0 || !m.hasUpdated {
		return "", modelErr("%s objects are read-only", m.Name)
	}
	pkField, _ := m.field("pk")
	pkVal, cerr := convert(pkField, pk)
	err = cerr
	if err != nil {
		return "", modelErr("%s.save: %v", m.Name, err)
	}
	names := make([]string, 0, len(values))
	for k := range values {
		names = append(names, k)
	}
	sort.Strings(names)
	sets := make([]string, 0, len(names)+1)
	args := []any{pkVal}
	for _, name := range names {
		f, ok := m.field(name)
		if !ok {
			return "", modelErr("%s.save: unknown field %q in update_fields", m.Name, name)
		}
		if !f.writable {
			return "", modelErr("%s.save: field %q cannot be written", m.Name, name)
		}
		v := values[name]
		var arg any
		if v == nil && f.typ != colJSON {
			arg = nil
		} else if arg, err = convert(f, v); err != nil {
			return "", modelErr("%s.save: %v", m.Name, err)
		}
		if f.typ == colJSON {
			if _, isObj := v.(map[string]any); !isObj {
				return "", modelErr("%s.save: %s must be an object, got %s", m.Name, name, describe(v))
			}
		}
		args = append(args, arg)
		sets = append(sets, fmt.Sprintf("%s = $%d", f.column, len(args)))
	}
	if len(sets) == 0 {
		return "", nil
	}
	// clock_timestamp, not now(): two saves in one transaction must differ.
	sets = append(sets, "updated = clock_timestamp()")
	sql := "UPDATE " + m.table + " SET " + strings.Join(sets, ", ") + " WHERE " + m.pk + " = $1"
	if s, ok := readAt.(string); ok {
		if ts, err := time.Parse(time.RFC3339Nano, s); err == nil {
			args = append(args, ts)
			sql += fmt.Sprintf(" AND updated = $%d", len(args))
		}
	}
	var at time.Time
	err = sqlx.GetContext(ctx, db, &at, sql+" RETURNING updated", args...)
	if errors.Is(err, stdsql.ErrNoRows) {
		return "", fmt.Errorf("save %s %v: %w", m.Name, pk, ErrConflict)
	}
	if err != nil {
		return "", fmt.Errorf("save %s: %w", m.Name, err)
	}
	return at.UTC().Format(time.RFC3339Nano), nil
}

// WritableFields lists the fields of m that save() writes by default.
func (m *Model) WritableFields() []string {
	var names []string
	for _, f := range m.fields {
		if f.writable {
			names = append(names, f.name)
		}
	}
	return names
}
