package rules_test

import (
	"testing"

	"github.com/lib/pq"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// A text[] parameter reaches PostgreSQL element for element, whatever the
// elements hold.
func TestTextArrayParameter(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	for _, elems := range [][]string{
		{},
		{""},
		{"NULL", "null", " padded ", "a,b", "{braces}", `"quoted"`, `back\slash`, `\"`, `{"k": "v \"x\" \\ y"}`, "é ✓ 日本", "line\nbreak\ttab"},
	} {
		var got pq.StringArray
		require.NoError(t, db.Get(&got, `SELECT $1::text[]`, rules.TextArray(elems)))
		require.Equal(t, elems, []string(got))
		var same bool
		require.NoError(t, db.Get(&same, `SELECT $1::text[] = $2::text[]`, rules.TextArray(elems), pq.StringArray(elems)))
		require.True(t, same, "as pq.StringArray sends %q", elems)
	}
	var isNull bool
	require.NoError(t, db.Get(&isNull, `SELECT $1::text[] IS NULL`, rules.TextArray(nil)))
	require.True(t, isNull, "a nil array is NULL")
}
