-- Email every new user a welcome message. The rule has no transports: the
-- policy's side effect (ak_send_email) is the point, and it returns false.
-- Apply with: worker seed schema/examples/send-welcome-email.sql

INSERT INTO policies (name, kind, expression) VALUES ('send-welcome-email', 'expression', $js$
const event = request.context.event;
if (!event || event.action !== "model_created") return false;
const model = event.context.model || {};
if (model.app !== "authentik_core" || model.model_name !== "user") return false;
const user = User.objects.filter({pk: model.pk}).first();
if (!user || !user.email) return false;
ak_send_email(user.email, "Welcome to authentik", {
  body: `Hello ${user.name},\n\nYour authentik account has been created. You can log in at https://authentik.company.`,
});
return false;
$js$)
ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, expression = EXCLUDED.expression;

INSERT INTO notification_rules (name, severity) VALUES ('send-welcome-email', 'notice')
ON CONFLICT (name) DO NOTHING;

INSERT INTO policy_bindings (target_rule_id, policy_id, "order")
SELECT r.id, p.id, 0 FROM notification_rules r, policies p
WHERE r.name = 'send-welcome-email' AND p.name = 'send-welcome-email'
ON CONFLICT DO NOTHING;
