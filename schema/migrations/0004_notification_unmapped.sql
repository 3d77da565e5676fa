-- A body mapping on a local transport changes the notification in the
-- inbox; the rule's own body, severity and links are kept here the first
-- time it does, for the rule's other transports, which send them as
-- authentik's do.
ALTER TABLE notifications ADD COLUMN unmapped jsonb;
