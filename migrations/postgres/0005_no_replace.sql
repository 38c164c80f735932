-- An instance's id never changes (on SQLite a changed id can silently delete another row
-- through REPLACE; both engines refuse it alike).
CREATE FUNCTION instances_id_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS DISTINCT FROM OLD.id THEN
        RAISE EXCEPTION 'an instance''s id never changes' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER instances_id_fixed BEFORE UPDATE OF id ON instances
    FOR EACH ROW EXECUTE FUNCTION instances_id_fixed();
