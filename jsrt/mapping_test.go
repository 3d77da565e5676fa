package jsrt_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/jsrt"
	"github.com/heraldhq/herald/rules"
)

// A mapping returns its value and the notification as it left it; the
// global notification and request.context.notification are one object.
func TestEvaluateMappingReturnsTheNotification(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	notification := map[string]any{"body": "hello", "severity": "notice", "hyperlink": nil}
	res, err := pool.EvaluateMapping(t.Context(), rules.MappingRequest{
		Name: "m", Expression: `notification.body = notification.body + " " + user.username;
request.context.notification.severity = "alert";
return {same: notification === request.context.notification};`,
		Notification: notification, User: &rules.User{ID: 12, Username: "jane"}, Event: loginEvent(), Timeout: time.Second,
	})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"same": true}, res.Value)
	require.Equal(t, map[string]any{"body": "hello jane", "severity": "alert", "hyperlink": nil}, res.Notification)
	require.Equal(t, "hello", notification["body"], "the caller's map is not changed")
}

// A mapping cannot call a policy: there are none to call.
func TestEvaluateMappingCannotCallAPolicy(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	_, err := pool.EvaluateMapping(t.Context(), rules.MappingRequest{
		Name: "m", Expression: `return ak_call_policy("anything");`,
		Notification: map[string]any{}, User: &rules.User{ID: 12, Username: "jane"}, Event: loginEvent(), Timeout: time.Second,
	})
	require.ErrorContains(t, err, "ak_call_policy: no policies to call here")
}

// What a mapping returns is sanitized as authentik's sanitize_item does: a
// user as {username, pk, email}, an address as its text.
func TestEvaluateMappingResultShortForms(t *testing.T) {
	t.Parallel()
	pool := newPool(t, jsrt.Config{Size: 1})
	res, err := pool.EvaluateMapping(t.Context(), rules.MappingRequest{
		Name: "m", Expression: `return {who: user, name: user.name, ip: ip_address("10.0.0.1"), net: ip_network("10.0.0.0/8")};`,
		Notification: map[string]any{}, User: &rules.User{ID: 12, Username: "jane", Name: "Jane", Email: "jane@example.com"},
		Event: loginEvent(), Timeout: time.Second,
	})
	require.NoError(t, err)
	require.Equal(t, map[string]any{"who": map[string]any{"username": "jane", "pk": int64(12), "email": "jane@example.com"},
		"name": "Jane", "ip": "10.0.0.1", "net": "10.0.0.0/8"}, res.Value)
}
