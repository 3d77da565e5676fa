-- Alert users in their inbox when they log in from a device authentik does
-- not know (auth_method_args.known_device = false).
-- Apply with: worker seed schema/examples/unknown-device-login.sql

INSERT INTO policies (name, kind, expression) VALUES ('unknown-device-login', 'expression', $js$
const event = request.context.event;
if (!event || event.action !== "login") return false;
return (event.context.auth_method_args || {}).known_device === false;
$js$)
ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, expression = EXCLUDED.expression;

INSERT INTO notification_transports (name, mode) VALUES ('inbox', 'local')
ON CONFLICT (name) DO NOTHING;

INSERT INTO notification_rules (name, severity, destination_event_user)
VALUES ('unknown-device-login-alert', 'alert', true)
ON CONFLICT (name) DO UPDATE SET severity = EXCLUDED.severity,
    destination_event_user = EXCLUDED.destination_event_user;

INSERT INTO notification_rule_transports (rule_id, transport_id)
SELECT r.id, t.id FROM notification_rules r, notification_transports t
WHERE r.name = 'unknown-device-login-alert' AND t.name = 'inbox'
ON CONFLICT DO NOTHING;

INSERT INTO policy_bindings (target_rule_id, policy_id, "order")
SELECT r.id, p.id, 0 FROM notification_rules r, policies p
WHERE r.name = 'unknown-device-login-alert' AND p.name = 'unknown-device-login'
ON CONFLICT DO NOTHING;
