package rules_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
)

// lockedBuffer is a log destination safe for the engine's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// lines returns the logged lines that contain all of parts.
func (b *lockedBuffer) lines(parts ...string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
next:
	for _, l := range strings.Split(b.buf.String(), "\n") {
		for _, p := range parts {
			if !strings.Contains(l, p) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// A batch that runs again with savepoints logs what the run that counts
// did, once: the optimistic run's rule firings and ak_logger lines are
// dropped with it.
func TestRedoneBatchLogsEachLineOnce(t *testing.T) {
	t.Parallel()
	var out lockedBuffer
	b := setupLogged(t, testinfra.Postgres(t), slog.New(slog.NewTextHandler(&out, nil)))
	jane := b.user(t, "jane")
	bob := b.user(t, "bob")
	b.alertRule(t, "greets", binding{Policy: b.policy(t, "greet", `ak_logger.info("greeting", {user: request.user.username});
return true;`)})
	b.alertRule(t, "bob-fails", binding{Policy: b.policy(t, "fails-for-bob", `const u = User.objects.get({pk: request.user.pk});
u.attributes.marked = true;
u.save({update_fields: ["attributes"]});
if (u.username === "bob") throw new Error("bob");
return false;`)})
	b.reload(t)

	evs := []events.Event{userEvent(t, "login", jane, nil), userEvent(t, "login", bob, nil)}
	require.NoError(t, b.engine.HandleEvents(t.Context(), evs))
	require.EqualValues(t, 1, b.engine.Stats().BatchesRedone.Load())

	for _, ev := range evs {
		require.Len(t, out.lines("msg=greeting", "event="+ev.PK), 1, "ak_logger line of %s", ev.PK)
		require.Len(t, out.lines(`msg="rule fired"`, "rule=greets", "event="+ev.PK), 1, "rule fired for %s", ev.PK)
	}
	require.Len(t, out.lines(`msg="policy failed"`, "policy=fails-for-bob"), 1)
	require.Empty(t, out.lines(`msg="policy failed"`, "event="+evs[0].PK))
}
