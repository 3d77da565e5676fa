-- Append "<time> - Added user: <username>" to a group's
-- attributes.UserAddedHistory for every user added to it (model_updated
-- events with context.diff.users.add). The rule has no transports.
-- Apply with: worker seed schema/examples/group-user-history.sql

INSERT INTO policies (name, kind, expression) VALUES ('group-user-history', 'expression', $js$
const event = request.context.event;
if (!event || event.action !== "model_updated") return false;
const model = event.context.model || {};
if (model.app !== "authentik_core" || model.model_name !== "group") return false;
const group = Group.objects.filter({pk: model.pk}).first();
if (!group) return false;
const added = ((event.context.diff || {}).users || {}).add || [];
if (added.length === 0) return false;
group.attributes.UserAddedHistory = group.attributes.UserAddedHistory || [];
const now = new Date().toISOString().slice(0, 19);
for (const u of User.objects.filter({pk__in: added}).all()) {
  group.attributes.UserAddedHistory.push(`${now} - Added user: ${u.username}`);
}
group.save({update_fields: ["attributes"]});
return false;
$js$)
ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, expression = EXCLUDED.expression;

INSERT INTO notification_rules (name, severity) VALUES ('group-user-history', 'notice')
ON CONFLICT (name) DO NOTHING;

INSERT INTO policy_bindings (target_rule_id, policy_id, "order")
SELECT r.id, p.id, 0 FROM notification_rules r, policies p
WHERE r.name = 'group-user-history' AND p.name = 'group-user-history'
ON CONFLICT DO NOTHING;
