package main

import (
	"io"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
)

// TestBatchSizeDoesNotChangeResults runs the bench's standard workload
// through the worker at batch size 1 and at batch size 500: the same events
// give the same notifications.
func TestBatchSizeDoesNotChangeResults(t *testing.T) {
	t.Parallel()
	const n = 800
	results := map[int][]string{}
	for _, size := range []int{1, 500} {
		s := newStack(t)
		s.env["HERALD_BATCH_SIZE"] = strconv.Itoa(size)
		s.env["HERALD_CONCURRENCY"] = "2"
		b := &bench{n: n, rules: 10, users: 200, progress: io.Discard}
		require.NoError(t, b.seed(t.Context(), s.db.DB))
		evs := b.workload()
		_, err := events.EnsureStream(t.Context(), s.js, events.StreamConfig{Name: s.names.Name, SubjectPrefix: s.names.SubjectPrefix})
		require.NoError(t, err)
		require.NoError(t, publishAll(t.Context(), s.js, s.names.SubjectPrefix, evs, time.Now))
		s.start(t)
		s.waitCount(t, n, `SELECT count(*) FROM events`)
		s.settle(t)
		var rows []string
		require.NoError(t, s.db.Select(&rows, `SELECT n.event_id || ' ' || r.name || ' ' || n.user_id
			FROM notifications n JOIN notification_rules r ON r.id = n.rule_id`))
		sort.Strings(rows)
		results[size] = rows
		// Each group's history entries without their timestamps: events
		// of one group may commit in another order on another worker.
		var history []string
		require.NoError(t, s.db.Select(&history, `SELECT id || ' ' || string_agg(entry, ',' ORDER BY entry) FROM (
			SELECT g.id, regexp_replace(h, '^\S+ - ', '') AS entry FROM groups g, jsonb_array_elements_text(g.attributes->'UserAddedHistory') h) x
			GROUP BY id ORDER BY id`))
		results[-size] = history
		s.stop(t)
	}
	require.NotEmpty(t, results[1])
	require.Equal(t, results[1], results[500], "notifications differ between batch sizes 1 and 500")
	require.NotEmpty(t, results[-1])
	require.Equal(t, results[-1], results[-500], "group history entries differ between batch sizes 1 and 500")
}
