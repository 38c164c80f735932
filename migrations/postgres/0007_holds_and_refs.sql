-- Idempotent orders and suspension holds.
--
-- `billing_ref`: billing's own service id, unique when set, so that a second insert of the
-- same order is refused instead of building a second server.
ALTER TABLE instances
    ADD COLUMN billing_ref TEXT CONSTRAINT billing_ref_length
        CHECK (billing_ref IS NULL OR length(billing_ref) BETWEEN 1 AND 255),
    -- The hold kinds (sorted, comma-separated, NULL for none), kept by the database from
    -- instance_holds so that a claim reads them with the row.
    ADD COLUMN holds TEXT,
    -- The hold kinds the reconciler last recorded transitions for.
    ADD COLUMN holds_seen TEXT;
CREATE UNIQUE INDEX instances_billing_ref ON instances (billing_ref) WHERE billing_ref IS NOT NULL;

-- Suspension holds: independent reasons to keep a server off (billing, abuse, admin, …),
-- one row per instance and kind, written by billing and admins.
CREATE TABLE instance_holds (
    instance_id BIGINT      NOT NULL REFERENCES instances (id),
    kind        TEXT        NOT NULL,
    reason      TEXT,
    placed_by   TEXT        NOT NULL DEFAULT 'billing',
    placed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, kind)
);

CREATE FUNCTION instance_holds_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind IS NULL OR NEW.kind !~ '^[a-z][a-z0-9_-]{0,31}$' THEN
        RAISE EXCEPTION 'hold kind must be a lower-case word of at most 32 letters, digits, - or _ (billing, abuse, admin, ...), not %', quote_literal(NEW.kind)
            USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'INSERT' OR NEW.instance_id IS DISTINCT FROM OLD.instance_id THEN
        PERFORM 1 FROM instances WHERE id = NEW.instance_id AND desired_status <> 'terminated';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'a hold needs a live instance: instance % does not exist or is terminated', NEW.instance_id
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER instance_holds_guard BEFORE INSERT OR UPDATE ON instance_holds
    FOR EACH ROW EXECUTE FUNCTION instance_holds_guard();

-- Keeps instances.holds; runs as the schema's owner, since billing may not write that column.
CREATE FUNCTION instance_holds_sync() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT AS $$
DECLARE
    target BIGINT;
BEGIN
    FOR target IN
        SELECT DISTINCT x FROM (VALUES
            (CASE WHEN TG_OP <> 'INSERT' THEN OLD.instance_id END),
            (CASE WHEN TG_OP <> 'DELETE' THEN NEW.instance_id END)) AS v(x)
         WHERE x IS NOT NULL
    LOOP
        UPDATE instances
           SET holds = (SELECT string_agg(kind, ',' ORDER BY kind)
                          FROM instance_holds WHERE instance_id = target)
         WHERE id = target;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER instance_holds_sync AFTER INSERT OR UPDATE OR DELETE ON instance_holds
    FOR EACH ROW EXECUTE FUNCTION instance_holds_sync();

CREATE OR REPLACE FUNCTION instances_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    other BIGINT;
BEGIN
    IF NEW.desired_status IS NULL OR NEW.desired_status NOT IN ('active', 'suspended', 'terminated') THEN
        RAISE EXCEPTION 'desired_status must be active, suspended or terminated'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.billing_ref IS NOT NULL
       AND (TG_OP = 'INSERT' OR NEW.billing_ref IS DISTINCT FROM OLD.billing_ref) THEN
        SELECT id INTO other FROM instances WHERE billing_ref = NEW.billing_ref AND id <> NEW.id;
        IF FOUND THEN
            RAISE EXCEPTION 'billing_ref % is already the reference of instance %: an order is inserted once',
                quote_literal(NEW.billing_ref), other
                USING ERRCODE = 'unique_violation';
        END IF;
    END IF;
    IF TG_OP = 'INSERT' THEN
        -- Billing may insert only the contract columns: the reconciler's start from defaults.
        IF NEW.observed_status IS DISTINCT FROM 'pending' OR NEW.observed_generation <> 0
           OR NEW.desired_generation <> 1 OR NEW.provider_server_id IS NOT NULL
           OR NEW.provider_account IS NOT NULL OR NEW.product_revision IS NOT NULL
           OR NEW.reboot_handled <> 0 OR NEW.credentials_sealed IS NOT NULL
           OR NEW.lease_owner IS NOT NULL OR NEW.lease_epoch <> 0 OR NEW.attempts <> 0
           OR NEW.pending_action IS NOT NULL OR NEW.holds IS NOT NULL
           OR NEW.holds_seen IS NOT NULL THEN
            RAISE EXCEPTION 'reconciler-owned columns cannot be set when inserting an instance: insert the billing columns only (customer_id, order_id, billing_ref, product_id, location, os_image, hostname, ssh_keys, desired_status, suspend_reason, reboot_requested)'
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;

    IF (NEW.desired_status, NEW.customer_id, NEW.order_id, NEW.product_id, NEW.location,
        NEW.os_image, NEW.hostname, NEW.ssh_keys, NEW.suspend_reason, NEW.reboot_requested,
        NEW.billing_ref)
       IS DISTINCT FROM
       (OLD.desired_status, OLD.customer_id, OLD.order_id, OLD.product_id, OLD.location,
        OLD.os_image, OLD.hostname, OLD.ssh_keys, OLD.suspend_reason, OLD.reboot_requested,
        OLD.billing_ref) THEN
        IF OLD.desired_status = 'terminated' THEN
            RAISE EXCEPTION 'instance % is terminated: its desired state cannot change any more; a new server is a new instance', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.reboot_requested < OLD.reboot_requested THEN
            RAISE EXCEPTION 'reboot_requested never decreases (instance %: % -> %): increment it by one to ask for one more reboot',
                OLD.id, OLD.reboot_requested, NEW.reboot_requested
                USING ERRCODE = 'check_violation';
        END IF;
        -- A change of any billing column bumps the desired generation and makes it due now.
        NEW.desired_generation := OLD.desired_generation + 1;
        NEW.desired_changed_at := now();
        NEW.next_check_at := now();
    END IF;
    IF NEW.holds IS DISTINCT FROM OLD.holds THEN
        IF NEW.holds IS DISTINCT FROM (SELECT string_agg(kind, ',' ORDER BY kind)
                                         FROM instance_holds WHERE instance_id = NEW.id) THEN
            RAISE EXCEPTION 'holds is kept by the database from instance_holds: insert or delete holds there'
                USING ERRCODE = 'check_violation';
        END IF;
        -- A hold placed or lifted changes what the server should be, like billing's columns.
        NEW.desired_generation := OLD.desired_generation + 1;
        NEW.desired_changed_at := now();
        NEW.next_check_at := now();
    END IF;

    -- Reconciler-owned rules.
    IF NEW.desired_generation < OLD.desired_generation
       OR NEW.observed_generation < OLD.observed_generation
       OR NEW.lease_epoch < OLD.lease_epoch
       OR NEW.reboot_handled < OLD.reboot_handled THEN
        RAISE EXCEPTION 'desired_generation, observed_generation, lease_epoch and reboot_handled never decrease'
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.observed_status = 'terminated' AND NEW.observed_status IS DISTINCT FROM 'terminated' THEN
        RAISE EXCEPTION 'observed_status terminated is final' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;
