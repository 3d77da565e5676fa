-- Configuration changes are announced with the schema of the changed table,
-- not the schema of the session that changed it: an operator who edits
-- herald.policies from a session whose search_path is public still makes
-- the workers of the herald schema reload at once.
CREATE OR REPLACE FUNCTION herald_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('herald_config', TG_TABLE_SCHEMA);
    RETURN NULL;
END $$;
