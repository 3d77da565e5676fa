package main

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/jmoiron/sqlx"
	"github.com/stretchr/testify/require"

	"github.com/heraldhq/herald/internal/testinfra"
	"github.com/heraldhq/herald/rules"
)

func TestEvalIsADryRun(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.cli(t, "", "seed", "../../schema/examples/unknown-device-login.sql")
	s.db.MustExec(t, `INSERT INTO users (id, username, email, attributes) VALUES (12, 'jane', 'jane@example.com', '{"n": 1}')`)
	s.db.MustExec(t, `INSERT INTO policies (name, expression) VALUES ('busy', $js$
ak_message("checked");
ak_logger.info("busy policy", {user: request.user.username});
ak_create_event("audit", {who: request.user.username});
ak_send_email("sec@example.com", "Login", {body: "jane logged in"});
request.user.attributes.n = 2;
request.user.save({update_fields: ["attributes"]});
return true;
$js$)`)
	s.db.MustExec(t, `INSERT INTO notification_rules (name) VALUES ('busy-rule')`)
	s.db.MustExec(t, `INSERT INTO policy_bindings (target_rule_id, policy_id)
		SELECT r.id, p.id FROM notification_rules r, policies p WHERE r.name = 'busy-rule' AND p.name = 'busy'`)

	out := s.cli(t, "", "eval", "-action", "login", "-user-pk", "12", "-username", "jane", "-context", loginUnknownDevice)
	require.Contains(t, out, `rule "unknown-device-login-alert" #0 policy unknown-device-login: passes`)
	require.Contains(t, out, "fires: busy-rule, unknown-device-login-alert")
	require.Contains(t, out, "would notify user 12 (alert, rule \"unknown-device-login-alert\") via inbox (local)")
	require.Contains(t, out, "would create event custom_audit")
	require.Contains(t, out, "would email sec@example.com")
	require.Contains(t, out, "would save User 12: attributes")
	require.Contains(t, out, "message: checked")

	// Nothing happened.
	for _, table := range []string{"events", "notifications", "deliveries", "outbox"} {
		require.Equal(t, 0, s.count(t, `SELECT count(*) FROM `+table), table)
	}
	require.Equal(t, 1, s.count(t, `SELECT (attributes->>'n')::int FROM users WHERE id = 12`))

	// One policy, as JSON.
	out = s.cli(t, "", "eval", "-json", "-policy", "unknown-device-login", "-action", "login", "-user-pk", "12",
		"-context", `{"auth_method_args": {"known_device": true}}`)
	var report rules.DryRunReport
	require.NoError(t, json.Unmarshal([]byte(out), &report))
	require.Len(t, report.Bindings, 1)
	require.False(t, report.Bindings[0].Passing)
	require.Empty(t, report.Fired)
}

// eval does not create the database it is pointed at when it is missing.
func TestEvalDoesNotCreateADatabase(t *testing.T) {
	t.Parallel()
	base, err := url.Parse(testinfra.PostgresURL(t))
	require.NoError(t, err)
	name := "herald_missing_" + strings.ToLower(testinfra.Name(t))
	missing := *base
	missing.Path = "/" + name
	env := map[string]string{"DATABASE_URL": missing.String(), "NATS_URL": testinfra.NATSURL(t), "HERALD_HTTP_ADDR": "off"}
	var out, errOut bytes.Buffer
	err = dispatch(t.Context(), []string{"eval", "-action", "login"}, func(k string) string { return env[k] }, strings.NewReader(""), &out, &errOut)
	require.Error(t, err)

	admin, err := sqlx.Connect("postgres", base.String())
	require.NoError(t, err)
	defer admin.Close()
	var n int
	require.NoError(t, admin.Get(&n, `SELECT count(*) FROM pg_database WHERE datname = $1`, name))
	require.Zero(t, n, "eval created the database")
}
