-- Changes of plan, reinstalls and imported servers.
--
-- `reinstall_requested` (billing): reinstalls asked for, ever; a counter exactly like
-- `reboot_requested`. `reinstall_handled` (reconciler): reinstalls carried out.
-- `applied_product_id` (reconciler): the product the server was built as or last changed to;
-- billing changing `product_id` away from it asks for a change of plan.
-- `observe_only` (reconciler, set by `instances import --observe-only` and cleared by
-- `instances manage`): the reconciler never calls a mutating API for the instance.
ALTER TABLE instances
    ADD COLUMN reinstall_requested BIGINT NOT NULL DEFAULT 0
        CONSTRAINT reinstall_requested_counted
        CHECK (reinstall_requested >= 0 AND reinstall_requested < 9007199254740992),
    ADD COLUMN reinstall_handled BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN applied_product_id TEXT,
    ADD COLUMN observe_only BOOLEAN NOT NULL DEFAULT false,
    ADD CONSTRAINT reinstall_within_requested
        CHECK (reinstall_handled >= 0 AND reinstall_handled <= reinstall_requested);

UPDATE instances SET applied_product_id = product_id
 WHERE provider_server_id IS NOT NULL OR observed_status NOT IN ('pending', 'terminated');

-- Two new observed statuses and two new task kinds.
ALTER TABLE instances DROP CONSTRAINT instances_observed_status_check;
ALTER TABLE instances ADD CONSTRAINT instances_observed_status_check
    CHECK (observed_status IN ('pending', 'provisioning', 'active', 'suspending', 'suspended',
           'unsuspending', 'rebooting', 'terminating', 'terminated', 'failed', 'lost',
           'resizing', 'reinstalling'));
ALTER TABLE manual_tasks DROP CONSTRAINT manual_tasks_kind_check;
ALTER TABLE manual_tasks ADD CONSTRAINT manual_tasks_kind_check
    CHECK (kind IN ('provision', 'suspend', 'unsuspend', 'reboot', 'terminate', 'resize',
           'reinstall'));

-- The simulated cloud changes plans and reinstalls too: a busy server settles into
-- `settle_state` at `ready_at`; the counters are the ledger the tests check.
ALTER TABLE sim_servers
    ADD COLUMN settle_state TEXT,
    ADD COLUMN resizes BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN rebuilds BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN rebuilt_at TIMESTAMPTZ;

-- The rules over every billing column now include reinstall_requested.
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
           OR NEW.holds_seen IS NOT NULL OR NEW.reinstall_handled <> 0
           OR NEW.applied_product_id IS NOT NULL OR NEW.observe_only THEN
            RAISE EXCEPTION 'reconciler-owned columns cannot be set when inserting an instance: insert the billing columns only (customer_id, order_id, billing_ref, product_id, location, os_image, hostname, ssh_keys, desired_status, suspend_reason, reboot_requested, reinstall_requested)'
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;

    IF (NEW.desired_status, NEW.customer_id, NEW.order_id, NEW.product_id, NEW.location,
        NEW.os_image, NEW.hostname, NEW.ssh_keys, NEW.suspend_reason, NEW.reboot_requested,
        NEW.billing_ref, NEW.reinstall_requested)
       IS DISTINCT FROM
       (OLD.desired_status, OLD.customer_id, OLD.order_id, OLD.product_id, OLD.location,
        OLD.os_image, OLD.hostname, OLD.ssh_keys, OLD.suspend_reason, OLD.reboot_requested,
        OLD.billing_ref, OLD.reinstall_requested) THEN
        IF OLD.desired_status = 'terminated' THEN
            RAISE EXCEPTION 'instance % is terminated: its desired state cannot change any more; a new server is a new instance', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.reboot_requested < OLD.reboot_requested THEN
            RAISE EXCEPTION 'reboot_requested never decreases (instance %: % -> %): increment it by one to ask for one more reboot',
                OLD.id, OLD.reboot_requested, NEW.reboot_requested
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.reinstall_requested < OLD.reinstall_requested THEN
            RAISE EXCEPTION 'reinstall_requested never decreases (instance %: % -> %): increment it by one to ask for one more reinstall',
                OLD.id, OLD.reinstall_requested, NEW.reinstall_requested
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
       OR NEW.reboot_handled < OLD.reboot_handled
       OR NEW.reinstall_handled < OLD.reinstall_handled THEN
        RAISE EXCEPTION 'desired_generation, observed_generation, lease_epoch, reboot_handled and reinstall_handled never decrease'
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
