-- When a user is deactivated, move attributes.sshPublicKey to
-- attributes.inactiveSSHPublicKey. The rule has no transports.
-- Apply with: worker seed schema/examples/deactivated-user-ssh-keys.sql

INSERT INTO policies (name, kind, expression) VALUES ('deactivated-user-ssh-keys', 'expression', $js$
const event = request.context.event;
if (!event || event.action !== "model_updated") return false;
const model = event.context.model || {};
if (model.app !== "authentik_core" || model.model_name !== "user") return false;
const user = User.objects.filter({pk: model.pk}).first();
if (!user || user.is_active) return false;
if (!user.attributes.sshPublicKey || user.attributes.sshPublicKey.length === 0) return false;
user.attributes.inactiveSSHPublicKey = user.attributes.sshPublicKey;
user.attributes.sshPublicKey = [];
user.save({update_fields: ["attributes"]});
return false;
$js$)
ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, expression = EXCLUDED.expression;

INSERT INTO notification_rules (name, severity) VALUES ('deactivated-user-ssh-keys', 'notice')
ON CONFLICT (name) DO NOTHING;

INSERT INTO policy_bindings (target_rule_id, policy_id, "order")
SELECT r.id, p.id, 0 FROM notification_rules r, policies p
WHERE r.name = 'deactivated-user-ssh-keys' AND p.name = 'deactivated-user-ssh-keys'
ON CONFLICT DO NOTHING;
