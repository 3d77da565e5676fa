package rules

import (
	"bytes"
	"cmp"
	"slices"
	"strings"
	"time"
)

// batchRow is a model row that a batch's transaction has read. In an
// optimistic batch, later reads of it by pk alone are answered from here,
// without a round trip, with the batch's queued saves applied (see
// [policyTx.queueSave]), as the database would answer them once the saves
// are sent.
//
// A row read with a lock (first() and get() read FOR NO KEY UPDATE) cannot
// change in another transaction until the batch ends: it answers every
// later read. A row read without one (all(), and the events' users the
// batch loads first) answers only later reads without a lock: they see the
// row as the batch last read it, as if they had run then. A save made on
// such a reading is still checked against the row's updated value when it
// is sent, so that a change made meanwhile elsewhere is not overwritten
// ([ErrConflict] fails the batch, which runs again reading everything from
// the database). Only optimistic batches keep rows: there a policy that
// used the database and failed fails the whole batch, so nothing here ever
// has to be undone on its own.
type batchRow struct {
	// vals are the row's columns in field order, as the driver scans them
	// (or, after a queued save, as a read would return them).
	vals []any
	// locked: read FOR NO KEY UPDATE by this transaction.
	locked bool
}

// maxBatchRows bounds the rows a batch keeps without a lock; rows read
// with one have room for as many again, so that a large all() does not
// keep them from being answered.
const maxBatchRows = 10_000

// rememberRow keeps a row of m that the batch read, locked or not. A row
// already held locked stays so; a newer reading always replaces an older
// one.
func (t *policyTx) rememberRow(m *Model, vals []any, locked bool) {
	if !t.optimistic {
		return
	}
	if t.rows == nil {
		t.rows = make(map[string]*batchRow)
	}
	key := rowKey(m, scannedPK(vals[m.pkIndex]))
	held, ok := t.rows[key]
	if ok && held.locked && !locked {
		return
	}
	if !ok {
		room := maxBatchRows
		if locked {
			room = 2 * maxBatchRows
		}
		if len(t.rows) >= room {
			return
		}
	}
	t.rows[key] = &batchRow{vals: vals, locked: locked}
}

// scannedPK is a pk as the driver scans it, in the form [convert] gives
// (uuids come as text bytes).
func scannedPK(v any) any {
	if b, ok := v.([]byte); ok {
		return string(b)
	}
	return v
}

// findInBatch answers q from the batch's rows when q filters on the pk
// alone and the batch holds every row it names (locked ones, when the read
// locks); false when it must go to the database. Rows come as [Find]
// returns them: in pk order, at most limit.
func (t *policyTx) findInBatch(q Query, limit int, lock bool) ([]map[string]any, bool) {
	if !t.optimistic || t.saveErr != nil || len(t.rows) == 0 || len(q.Filters) != 1 || q.Within != nil {
		return nil, false
	}
	keys, ok := q.pkRows()
	if !ok {
		return nil, false
	}
	found := make([]*batchRow, 0, len(keys))
	seen := make(map[*batchRow]bool, len(keys))
	for _, k := range keys {
		r, ok := t.rows[k]
		if !ok || lock && !r.locked {
			return nil, false
		}
		if !seen[r] {
			seen[r] = true
			found = append(found, r)
		}
	}
	pk := q.Model.pkIndex
	slices.SortFunc(found, func(a, b *batchRow) int {
		return comparePK(scannedPK(a.vals[pk]), scannedPK(b.vals[pk]))
	})
	if limit > 0 && len(found) > limit {
		found = found[:limit]
	}
	out := make([]map[string]any, len(found))
	for i, r := range found {
		out[i] = rowMap(q.Model, r.vals)
	}
	return out, true
}

// comparePK orders pk values as PostgreSQL does: bigints by value, uuids
// (canonical, lower-case text) byte by byte.
func comparePK(a, b any) int {
	switch x := a.(type) {
	case int64:
		if y, ok := b.(int64); ok {
			return cmp.Compare(x, y)
		}
	case string:
		if y, ok := b.(string); ok {
			return cmp.Compare(x, y)
		}
	}
	return 0
}

// applyToRows makes the batch's row that s saves, if it holds it, read as
// it will after s. A save made on another reading of the row than the held
// one (the database would report a conflict), a save without that check of
// a row held without a lock, and a save of a value whose stored form cannot
// be told in advance drop the row, so that the next read goes to the
// database.
func (t *policyTx) applyToRows(s *modelSave) {
	key := s.row()
	r, ok := t.rows[key]
	if !ok {
		return
	}
	m := s.model
	readAt, checked := s.readAt.(time.Time)
	if checked {
		if held, ok := r.vals[m.updatedIndex].(time.Time); !ok || !held.Equal(readAt) {
			delete(t.rows, key)
			return
		}
	} else if !r.locked {
		// Another transaction may have changed the row since the batch
		// read it, and an unchecked save would not tell: the row as saved
		// is read back from the database.
		delete(t.rows, key)
		return
	}
	vals := slices.Clone(r.vals)
	for i, f := range s.fields {
		v, ok := storedValue(f, s.values[i])
		if !ok {
			delete(t.rows, key)
			return
		}
		vals[m.fieldIndex(f.name)] = v
	}
	vals[m.updatedIndex] = s.updated
	r.vals = vals
}

// storedValue is how a read returns the value v (converted for f's column,
// see [convert]) once it is stored; false when that cannot be told in
// advance.
func storedValue(f field, v any) (any, bool) {
	switch f.typ {
	case colJSON:
		s, ok := v.(string)
		return savedJSON(s), ok
	case colTime:
		// PostgreSQL keeps microseconds, rounding the rest in a way not
		// worth copying: a time with more is read back from the database.
		if ts, ok := v.(time.Time); ok {
			return ts, ts.Nanosecond()%1000 == 0
		}
		return v, v == nil
	case colInet:
		return nil, false // PostgreSQL rewrites addresses
	}
	return v, true
}

// absorb merges s, a later save of the row p saves, into p when s was made
// on the row as p leaves it, so that one UPDATE writes both; false when s
// must be checked against the database on its own.
func (p *modelSave) absorb(s *modelSave) bool {
	switch readAt := s.readAt.(type) {
	case nil: // not checked
	case time.Time:
		if !readAt.Equal(p.updated) {
			return false
		}
	default:
		return false
	}
	for i, f := range s.fields {
		if j := slices.IndexFunc(p.fields, func(g field) bool { return g.name == f.name }); j >= 0 {
			p.values[j] = s.values[i]
			continue
		}
		p.fields = append(p.fields, f)
		p.values = append(p.values, s.values[i])
	}
	// Fields stay in name order, as newModelSave puts them: saves of the
	// same fields share a statement.
	order := make([]int, len(p.fields))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(p.fields[a].name, p.fields[b].name) })
	fields, values := make([]field, len(order)), make([]any, len(order))
	for i, j := range order {
		fields[i], values[i] = p.fields[j], p.values[j]
	}
	p.fields, p.values = fields, values
	p.absorbed = append(p.absorbed, p.updated)
	p.updated = s.updated
	return true
}

// savedJSON is the JSON text a queued save writes to a jsonb column, as a
// locked row holds it: turned into what a read returns (see [storedJSON])
// only if the row is read again.
type savedJSON string

// storedJSON is JSON text as PostgreSQL returns it once stored in a jsonb
// column, as far as [Find] can tell: its numbers are written the way
// numeric writes them (encoding/json writes 1e+21 where PostgreSQL writes
// 1000000000000000000000, and -0 where it writes 0). Layout and key order
// differ too, but Find decodes objects into maps.
func storedJSON(b []byte) []byte {
	var out []byte // nil until a number changes
	last := 0      // b[last:i] is not yet copied to out
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			i = stringEnd(b, i+1)
		case c == '-' || c >= '0' && c <= '9':
			j := i + 1
			for j < len(b) && strings.IndexByte("+-.eE0123456789", b[j]) >= 0 {
				j++
			}
			tok := string(b[i:j])
			if n := numericText(tok); n != tok {
				if out == nil {
					out = make([]byte, 0, len(b)+32)
				}
				out = append(append(out, b[last:i]...), n...)
				last = j
			}
			i = j - 1
		}
	}
	if out == nil {
		return b
	}
	return append(out, b[last:]...)
}

// stringEnd returns the position of the quote that closes the JSON string
// starting at b[from] (len(b) if none does).
func stringEnd(b []byte, from int) int {
	for i := from; i < len(b); {
		k := bytes.IndexByte(b[i:], '"')
		if k < 0 {
			return len(b)
		}
		q := i + k
		escapes := 0
		for p := q - 1; p >= from && b[p] == '\\'; p-- {
			escapes++
		}
		if escapes%2 == 0 {
			return q
		}
		i = q + 1
	}
	return len(b)
}

// numericText is a JSON number as PostgreSQL's numeric type writes it: no
// exponent, as many decimals as the number has after applying it, no sign
// on zero.
func numericText(tok string) string {
	mantissa, exp := tok, 0
	k := strings.IndexAny(tok, "eE")
	if k < 0 && !strings.HasPrefix(tok, "-") {
		return tok
	}
	if k >= 0 {
		mantissa = tok[:k]
		e := tok[k+1:]
		sign := 1
		if e != "" && (e[0] == '+' || e[0] == '-') {
			if e[0] == '-' {
				sign = -1
			}
			e = e[1:]
		}
		if e == "" || len(e) > 6 {
			return tok
		}
		for _, d := range e {
			if d < '0' || d > '9' {
				return tok
			}
			exp = exp*10 + int(d-'0')
		}
		exp *= sign
	}
	negative := strings.HasPrefix(mantissa, "-")
	mantissa = strings.TrimPrefix(mantissa, "-")
	intPart, frac, _ := strings.Cut(mantissa, ".")
	digits := intPart + frac
	point := len(intPart) + exp // position of the decimal point in digits
	var whole, decimals string
	switch {
	case point <= 0:
		whole, decimals = "0", strings.Repeat("0", -point)+digits
	case point >= len(digits):
		whole, decimals = digits+strings.Repeat("0", point-len(digits)), ""
	default:
		whole, decimals = digits[:point], digits[point:]
	}
	whole = strings.TrimLeft(whole, "0")
	if whole == "" {
		whole = "0"
	}
	if strings.Trim(whole+decimals, "0") == "" {
		negative = false
	}
	n := whole
	if decimals != "" {
		n += "." + decimals
	}
	if negative {
		n = "-" + n
	}
	return n
}
