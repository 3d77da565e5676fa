-- Alert the "authentik Admins" group when an application is created without
-- any policy binding.
-- Apply with: worker seed schema/examples/application-without-bindings.sql

INSERT INTO groups (name, is_superuser) VALUES ('authentik Admins', true)
ON CONFLICT (name) DO NOTHING;

INSERT INTO policies (name, kind, expression) VALUES ('application-without-bindings', 'expression', $js$
const event = request.context.event;
if (!event || event.action !== "model_created") return false;
const model = event.context.model || {};
if (model.app !== "authentik_core" || model.model_name !== "application") return false;
const app = Application.objects.filter({pk: model.pk}).first();
if (!app) return false;
return !PolicyBinding.objects.filter({target: app}).exists();
$js$)
ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, expression = EXCLUDED.expression;

INSERT INTO notification_transports (name, mode) VALUES ('inbox', 'local')
ON CONFLICT (name) DO NOTHING;

INSERT INTO notification_rules (name, severity, destination_group_id)
SELECT 'application-without-bindings', 'alert', g.id FROM groups g WHERE g.name = 'authentik Admins'
ON CONFLICT (name) DO UPDATE SET severity = EXCLUDED.severity,
    destination_group_id = EXCLUDED.destination_group_id;

INSERT INTO notification_rule_transports (rule_id, transport_id)
SELECT r.id, t.id FROM notification_rules r, notification_transports t
WHERE r.name = 'application-without-bindings' AND t.name = 'inbox'
ON CONFLICT DO NOTHING;

INSERT INTO policy_bindings (target_rule_id, policy_id, "order")
SELECT r.id, p.id, 0 FROM notification_rules r, policies p
WHERE r.name = 'application-without-bindings' AND p.name = 'application-without-bindings'
ON CONFLICT DO NOTHING;
