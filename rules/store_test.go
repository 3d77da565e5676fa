package rules_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/events"
	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

// A message with NUL characters or invalid UTF-8 in its subject, headers or
// decode error (NATS takes any bytes in a subject) is stored as a dead
// letter (NULs dropped, invalid bytes replaced), not refused for ever.
func TestStoreDeadLetterWithNULsAndInvalidUTF8(t *testing.T) {
	t.Parallel()
	db := testinfra.Postgres(t)
	payload := []byte("{\"pk\": \"x\u0000\"}")
	err := rules.NewStore(db.DB).StoreDeadLetter(t.Context(), events.DeadLetter{
		Subject: "herald.events.bad\xff",
		Payload: payload,
		Headers: map[string][]string{"X-Note\x00": {"a\x00b"}},
		Reason:  "decode event: bad \x00 value \xe4",
	})
	require.NoError(t, err)
	var row struct {
		Subject string `db:"subject"`
		Payload []byte `db:"payload"`
		Headers string `db:"headers"`
		Reason  string `db:"reason"`
	}
	require.NoError(t, db.GetContext(t.Context(), &row, `SELECT subject, payload, headers::text AS headers, reason FROM dead_letters`))
	require.Equal(t, payload, row.Payload, "the payload is kept byte for byte")
	require.JSONEq(t, `{"X-Note": ["ab"]}`, row.Headers)
	require.Equal(t, "decode event: bad  value \uFFFD", row.Reason)
	require.Equal(t, "herald.events.bad\uFFFD", row.Subject)
}
