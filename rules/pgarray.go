package rules

import (
	"database/sql/driver"
	"strings"
)

// textArray is a text[] parameter in PostgreSQL's array syntax, like
// pq.StringArray, but built in one allocation of the right size:
// pq.StringArray copies each element twice and grows its buffer as it
// goes, which shows for batches of JSON documents.
type textArray []string

// Value implements [driver.Valuer].
func (a textArray) Value() (driver.Value, error) {
	if a == nil {
		return nil, nil
	}
	size := 2 + len(a)*3
	for _, s := range a {
		size += len(s) + strings.Count(s, `"`) + strings.Count(s, `\`)
	}
	var b strings.Builder
	b.Grow(size)
	b.WriteByte('{')
	for i, s := range a {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for {
			j := strings.IndexAny(s, `"\`)
			if j < 0 {
				break
			}
			b.WriteString(s[:j])
			b.WriteByte('\\')
			b.WriteByte(s[j])
			s = s[j+1:]
		}
		b.WriteString(s)
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String(), nil
}
