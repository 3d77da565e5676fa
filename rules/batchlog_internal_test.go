package rules

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// A batch holds at most maxHeldRecords records: the rest are dropped and
// counted in one warning when the batch ends, and a batch that runs again
// starts from none.
func TestBatchLogsHoldABoundedNumberOfRecords(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	logger := BatchLogger(slog.New(slog.NewTextHandler(&out, nil)))
	logs := &batchLogs{}
	ctx := withBatchLogs(context.Background(), logs)

	logger.InfoContext(ctx, "dropped with the run")
	logs.drop()
	for i := range maxHeldRecords + 3 {
		logger.InfoContext(ctx, fmt.Sprintf("line %d", i))
	}
	require.Zero(t, out.Len(), "nothing is written before the batch ends")
	logger.InfoContext(context.Background(), "outside any batch")
	require.Contains(t, out.String(), "outside any batch")

	logs.write(context.Background())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 1+maxHeldRecords+1)
	require.NotContains(t, out.String(), "dropped with the run")
	require.Contains(t, lines[1], `msg="line 0"`)
	require.Contains(t, lines[maxHeldRecords], fmt.Sprintf(`msg="line %d"`, maxHeldRecords-1))
	require.Contains(t, lines[maxHeldRecords+1], "level=WARN")
	require.Contains(t, lines[maxHeldRecords+1], "dropped=3")
}
