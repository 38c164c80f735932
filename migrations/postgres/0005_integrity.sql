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

-- Counters and generations far below the 64-bit limit, so that an increment never overflows
-- in the middle of a write: refused with the constraint's name instead.
ALTER TABLE instances
    ADD CONSTRAINT reboot_requested_below_2_pow_53
        CHECK (reboot_requested < 9007199254740992) NOT VALID,
    ADD CONSTRAINT desired_generation_below_2_pow_53
        CHECK (desired_generation < 9007199254740992) NOT VALID;
