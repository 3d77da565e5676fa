package rules

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
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
	// keys are the keys of the rows Find returns, in order.
	keys []string
	// pkIndex and updatedIndex are the positions of the pk and updated
	// fields (updatedIndex is -1 without hasUpdated).
	pkIndex, updatedIndex int
}

func init() {
	for _, m := range Models {
		m.keys = []string{"pk"}
		for _, f := range m.fields {
			m.keys = append(m.keys, f.name)
		}
		m.keys = slices.Clip(m.keys)
		m.pkIndex = m.fieldIndex(m.pk)
		m.updatedIndex = -1
		if m.hasUpdated {
			m.updatedIndex = m.fieldIndex("updated")
		}
	}
}

// fieldIndex is the position of the field called name among m's fields,
// or -1.
func (m *Model) fieldIndex(name string) int {
	return slices.IndexFunc(m.fields, func(f field) bool { return f.name == name })
}

// RowKeys are the keys of the rows [Find] returns: "pk", then the fields in
// column order. The slice is shared: do not change it.
func (m *Model) RowKeys() []string { return m.keys }

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
type ModelError struct {
	Msg string
	// UnknownField: the error is a filter on a field the model does not
	// have (Django's FieldError).
	UnknownField bool
}

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
	// Within, when not nil, limits the query to the rows with these pks,
	// beside its filters.
	Within []string
}

// lookups a filter key may end with; "" is exact.
var lookups = []string{"exact", "in", "iexact", "isnull", "gt", "gte", "lt", "lte",
	"contains", "icontains", "startswith", "istartswith", "endswith", "iendswith"}

// unsupportedLookups are Django's other lookups: a filter with one is
// refused by name, not taken for an unknown field.
var unsupportedLookups = []string{"range", "date", "year", "iso_year", "month", "day", "week", "week_day",
	"iso_week_day", "quarter", "time", "hour", "minute", "second", "regex", "iregex", "search"}

// where builds the WHERE clause of q, validating every key and value so
// that no bad input reaches PostgreSQL (an SQL error would abort the
// event's transaction).
func (q Query) where(args *[]any) (string, error) {
	keys := slices.Sorted(maps.Keys(q.Filters))
	var conds []string
	for _, key := range keys {
		value := q.Filters[key]
		name, lookup := splitLookup(key)
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
		if i := strings.LastIndex(key, "__"); !ok && i > 0 && slices.Contains(unsupportedLookups, key[i+2:]) {
			if _, known := q.Model.field(key[:i]); known {
				return "", modelErr("%s.objects.filter: %s: the lookup __%s is not supported (lookups: %s)",
					q.Model.Name, key, key[i+2:], strings.Join(lookups, ", "))
			}
		}
		if !ok || f.typ == colJSON {
			return "", &ModelError{UnknownField: true, Msg: fmt.Sprintf("%s.objects.filter: unknown field %q (fields: %s)",
				q.Model.Name, name, strings.Join(q.Model.FieldNames(), ", "))}
		}
		cond, err := condition(f, lookup, value, args)
		if err != nil {
			return "", modelErr("%s.objects.filter: %s: %v", q.Model.Name, key, err)
		}
		conds = append(conds, cond)
	}
	if q.Within != nil {
		pkField, _ := q.Model.field("pk")
		*args = append(*args, pq.Array(q.Within))
		conds = append(conds, fmt.Sprintf("%s = ANY($%d::%s[])", pkField.column, len(*args), sqlType(pkField)))
	}
	if len(conds) == 0 {
		return "true", nil
	}
	return strings.Join(conds, " AND "), nil
}

// splitLookup splits a filter key into its field and lookup ("" for exact).
func splitLookup(key string) (name, lookup string) {
	if i := strings.LastIndex(key, "__"); i > 0 && slices.Contains(lookups, key[i+2:]) {
		return key[:i], key[i+2:]
	}
	return key, ""
}

// rowKey identifies the row of m with the (converted) pk among a batch's
// saves and rows.
func rowKey(m *Model, pk any) string {
	switch v := pk.(type) {
	case int64:
		return m.table + "\x00" + strconv.FormatInt(v, 10)
	case string:
		return m.table + "\x00" + v
	}
	return m.table + "\x00" + fmt.Sprint(pk)
}

// pkRows returns the rows (see [rowKey]) that a pk filter of q
// limits it to; false when q has no such filter.
func (q Query) pkRows() ([]string, bool) {
	pkField, _ := q.Model.field("pk")
	for key, value := range q.Filters {
		name, lookup := splitLookup(key)
		if f, ok := q.Model.field(name); !ok || f.name != pkField.name {
			continue
		}
		var list []any
		switch lookup {
		case "", "exact":
			list = []any{value}
		case "in":
			l, isList := value.([]any)
			if !isList {
				continue
			}
			list = l
		default:
			continue
		}
		rows := make([]string, 0, len(list))
		for _, x := range list {
			v, err := convert(pkField, pkOf(x))
			if err != nil {
				return nil, false
			}
			rows = append(rows, rowKey(q.Model, v))
		}
		return rows, true
	}
	return nil, false
}

func condition(f field, lookup string, value any, args *[]any) (string, error) {
	arg := func(v any) string { *args = append(*args, v); return fmt.Sprintf("$%d", len(*args)) }
	switch lookup {
	case "", "exact":
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
			vals = append(vals, arrayText(v))
		}
		if len(vals) == 0 {
			return "false", nil
		}
		return f.column + " = ANY(" + arg(pq.Array(vals)) + "::" + sqlType(f) + "[])", nil
	case "iexact", "contains", "icontains", "startswith", "istartswith", "endswith", "iendswith":
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
		case "startswith":
			return f.column + " LIKE " + arg(esc+"%"), nil
		case "istartswith":
			return f.column + " ILIKE " + arg(esc+"%"), nil
		case "endswith":
			return f.column + " LIKE " + arg("%"+esc), nil
		default: // iendswith
			return f.column + " ILIKE " + arg("%"+esc), nil
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

// arrayText is v, a value of [convert], as the text of an element of a
// PostgreSQL array: a time in RFC 3339 with nanoseconds (which PostgreSQL
// reads exactly, to its microseconds, as it reads a time.Time argument),
// anything else as fmt.Sprint writes it.
func arrayText(v any) string {
	if t, ok := v.(time.Time); ok {
		return t.Format(time.RFC3339Nano)
	}
	return fmt.Sprint(v)
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
// keyed by field name, plus "pk"; JSON fields hold decoded JSON with
// numbers as json.Number, as events' objects do. With lock, the rows are locked until the
// transaction ends, so that a read-modify-save by one event cannot be lost
// to a concurrent one.
func Find(ctx context.Context, db sqlx.QueryerContext, q Query, limit int, lock bool) ([]map[string]any, error) {
	t, isPolicyTx := db.(*policyTx)
	if isPolicyTx && t.readOnly {
		lock = false
	}
	if isPolicyTx {
		if out, ok := t.findInBatch(q, limit, lock && q.Model.hasUpdated); ok {
			return out, nil
		}
	}
	var args []any
	where, err := q.where(&args)
	if err != nil {
		return nil, err
	}
	sql := "SELECT " + q.Model.selectList() + " FROM " + q.Model.table + " WHERE " + where + " ORDER BY " + q.Model.pk
	if limit > 0 {
		sql += fmt.Sprintf(" LIMIT %d", limit)
	}
	locking := lock && q.Model.hasUpdated
	if locking {
		sql += " FOR NO KEY UPDATE"
	}
	rows, err := reader(db, q).QueryxContext(ctx, sql, args...)
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
		out = append(out, rowMap(q.Model, vals))
		if isPolicyTx {
			t.rememberRow(q.Model, vals, locking)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", q.Model.Name, err)
	}
	return out, nil
}

// rowMap is a row as [Find] returns it, from its columns in field order.
func rowMap(m *Model, vals []any) map[string]any {
	obj := make(map[string]any, len(vals)+1)
	for i, f := range m.fields {
		obj[f.name] = fromColumn(f, vals[i])
	}
	obj["pk"] = obj[m.pk]
	return obj
}

// Count returns how many rows match q.
func Count(ctx context.Context, db sqlx.QueryerContext, q Query) (int64, error) {
	var args []any
	where, err := q.where(&args)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := sqlx.GetContext(ctx, reader(db, q), &n, "SELECT count(*) FROM "+q.Model.table+" WHERE "+where, args...); err != nil {
		return 0, fmt.Errorf("count %s: %w", q.Model.Name, err)
	}
	return n, nil
}

func fromColumn(f field, v any) any {
	switch t := v.(type) {
	case nil:
		return nil
	case savedJSON:
		out, err := events.ParseJSON(storedJSON([]byte(t)))
		if err != nil {
			return string(t)
		}
		return out
	case []byte:
		switch f.typ {
		case colJSON:
			out, err := events.ParseJSON(t)
			if err != nil {
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

// Save writes the given fields of the object with pk and returns the new
// value of its updated field (set from the clock, like Django's auto_now).
// readAt is the object's updated value when it was read (nil to skip the
// check): if the row changed since, Save fails with [ErrConflict] instead
// of overwriting the other change. Unknown or read-only fields and values of
// the wrong type are a [*ModelError].
//
// A policy's save in an optimistic batch is only queued: it goes out with
// the batch's next statement that could see it (see [policyTx]).
func Save(ctx context.Context, db sqlx.QueryerContext, m *Model, pk any, readAt any, values map[string]any) (updated string, err error) {
	s, err := newModelSave(m, pk, readAt, values)
	if err != nil || s == nil {
		return "", err
	}
	t, isPolicyTx := db.(*policyTx)
	if isPolicyTx && t.readOnly {
		return "", modelErr("%s.save: objects cannot be saved here (a mapping only reads)", m.Name)
	}
	if isPolicyTx {
		s.updated = t.saveTime()
	} else {
		s.updated = time.Now().UTC().Truncate(time.Microsecond)
	}
	updated = s.updated.Format(time.RFC3339Nano)
	if isPolicyTx && t.optimistic {
		return updated, t.queueSave(ctx, s)
	}
	if isPolicyTx {
		return updated, t.execSaves(ctx, []*modelSave{s})
	}
	if err := execSaves(ctx, db, []*modelSave{s}); err != nil {
		return "", err
	}
	return updated, nil
}

// modelSave is one object's save: the new values of some of its fields,
// checked against the updated value the object was read with.
type modelSave struct {
	model  *Model
	pk     any // converted for the pk column
	fields []field
	values []any // converted for fields' columns
	// readAt is the updated value the object was read with (nil: not
	// checked); updated is the one the save sets.
	readAt  any
	updated time.Time
	// own are the row's updated values written and replaced by the
	// saving transaction itself: a read of one of them was changed since
	// by nobody else (see [policyTx.own]).
	own ownWrites
	// absorbed are the updated values of the later saves this one joined
	// but the last (see [modelSave.absorb]): never stored, but read by the
	// batch.
	absorbed []time.Time
}

// row identifies the saved row among a batch's saves.
func (s *modelSave) row() string { return rowKey(s.model, s.pk) }

// shape groups saves that one statement can write: same table, same fields.
func (s *modelSave) shape() string {
	names := make([]string, len(s.fields))
	for i, f := range s.fields {
		names[i] = f.name
	}
	return s.model.table + "\x00" + strings.Join(names, ",")
}

// newModelSave validates a save and converts its values; nil when there is
// nothing to write.
func newModelSave(m *Model, pk any, readAt any, values map[string]any) (*modelSave, error) {
	if len(m.fields) == 0 || !m.hasUpdated {
		return nil, modelErr("%s objects are read-only", m.Name)
	}
	pkField, _ := m.field("pk")
	pkVal, err := convert(pkField, pk)
	if err != nil {
		return nil, modelErr("%s.save: %v", m.Name, err)
	}
	s := &modelSave{model: m, pk: pkVal}
	for _, name := range slices.Sorted(maps.Keys(values)) {
		f, ok := m.field(name)
		if !ok {
			return nil, modelErr("%s.save: unknown field %q in update_fields", m.Name, name)
		}
		if !f.writable {
			return nil, modelErr("%s.save: field %q cannot be written", m.Name, name)
		}
		v := values[name]
		var arg any
		if v == nil && f.typ != colJSON {
			arg = nil
		} else if arg, err = convert(f, v); err != nil {
			return nil, modelErr("%s.save: %v", m.Name, err)
		}
		if f.typ == colJSON {
			if _, isObj := v.(map[string]any); !isObj {
				return nil, modelErr("%s.save: %s must be an object, got %s", m.Name, name, describe(v))
			}
		}
		s.fields = append(s.fields, f)
		s.values = append(s.values, arg)
	}
	if len(s.fields) == 0 {
		return nil, nil
	}
	if str, ok := readAt.(string); ok {
		if ts, err := time.Parse(time.RFC3339Nano, str); err == nil {
			s.readAt = ts
		}
	}
	return s, nil
}

// maxSaveParams bounds the parameters of one UPDATE (PostgreSQL takes
// 65535).
const maxSaveParams = 60000

// execSaves writes saves of one shape (see [modelSave.shape]), of distinct
// rows, in as few UPDATE ... FROM (VALUES ...) statements as the parameter
// limit allows. A row that is missing or changed since it was read fails
// with [ErrConflict].
func execSaves(ctx context.Context, db sqlx.QueryerContext, saves []*modelSave) error {
	perRow := len(saves[0].fields) + 5 // pk, updated, read_at, own_from, own_to
	for chunk := range slices.Chunk(saves, maxSaveParams/perRow) {
		sql, args := updateStatement(chunk)
		rows, err := db.QueryxContext(ctx, sql, args...)
		if err != nil {
			return fmt.Errorf("save %s: %w", chunk[0].model.Name, err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		err = rows.Err()
		rows.Close() //nolint:errcheck,gosec // the error is rows.Err's
		if err != nil {
			return fmt.Errorf("save %s: %w", chunk[0].model.Name, err)
		}
		if n != len(chunk) {
			if len(chunk) == 1 {
				return missingOrChanged(ctx, db, chunk[0])
			}
			return fmt.Errorf("save %d %s objects: %d missing or changed: %w", len(chunk), chunk[0].model.Name, len(chunk)-n, ErrConflict)
		}
	}
	return nil
}

// missingOrChanged is the error of a save that wrote no row: a
// [*ModelError] when the row does not exist (as Django's "did not affect
// any rows", which no retry changes), else [ErrConflict].
func missingOrChanged(ctx context.Context, db sqlx.QueryerContext, s *modelSave) error {
	pkField, _ := s.model.field("pk")
	var exists bool
	err := db.QueryRowxContext(ctx, "SELECT EXISTS (SELECT 1 FROM "+s.model.table+" WHERE "+s.model.pk+" = $1::"+columnType(pkField)+")", s.pk).Scan(&exists)
	switch {
	case err != nil:
		return fmt.Errorf("save %s %v: %w", s.model.Name, s.pk, err)
	case !exists:
		return modelErr("%s.save: no %s with pk %v: the save did not affect any rows", s.model.Name, s.model.Name, s.pk)
	}
	return fmt.Errorf("save %s %v: %w", s.model.Name, s.pk, ErrConflict)
}

// updateStatement is the UPDATE of saves, one row of VALUES each.
func updateStatement(saves []*modelSave) (string, []any) {
	m, fields := saves[0].model, saves[0].fields
	pkField, _ := m.field("pk")
	var b strings.Builder
	b.WriteString("UPDATE " + m.table + " AS t SET ")
	cols := []string{"pk"}
	for i, f := range fields {
		fmt.Fprintf(&b, "%s = v.f%d, ", f.column, i)
		cols = append(cols, fmt.Sprintf("f%d", i))
	}
	cols = append(cols, "updated", "read_at", "own_from", "own_to")
	b.WriteString("updated = v.updated FROM (VALUES ")
	args := make([]any, 0, len(saves)*len(cols))
	for r, s := range saves {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		add := func(v any, typ string) {
			args = append(args, v)
			fmt.Fprintf(&b, "$%d::%s", len(args), typ)
		}
		add(s.pk, columnType(pkField))
		for i, f := range fields {
			b.WriteString(", ")
			add(s.values[i], columnType(f))
		}
		b.WriteString(", ")
		add(s.updated, "timestamptz")
		b.WriteString(", ")
		add(s.readAt, "timestamptz")
		b.WriteString(", ")
		add(s.own.fromArg(), "timestamptz[]")
		b.WriteString(", ")
		add(s.own.toArg(), "timestamptz")
		b.WriteByte(')')
	}
	// A row still as the object read it, or as this transaction last wrote
	// it after replacing the value the object read.
	b.WriteString(") AS v(" + strings.Join(cols, ", ") + ") WHERE t." + m.pk + " = v.pk AND (v.read_at IS NULL OR t.updated = v.read_at" +
		" OR (v.read_at = ANY(v.own_from) AND t.updated = v.own_to)) RETURNING true")
	return b.String(), args
}

// ownWrites are what a transaction itself did to a row's updated value:
// the values it replaced and the one it wrote last.
type ownWrites struct {
	from []time.Time
	to   time.Time
}

func (o ownWrites) fromArg() any {
	out := make([]string, len(o.from))
	for i, ts := range o.from {
		out[i] = ts.Format(time.RFC3339Nano)
	}
	return pq.Array(out)
}

func (o ownWrites) toArg() any {
	if o.to.IsZero() {
		return nil
	}
	return o.to
}

// columnType is the SQL type of f's column.
func columnType(f field) string {
	if f.typ == colJSON {
		return "jsonb"
	}
	return sqlType(f)
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
