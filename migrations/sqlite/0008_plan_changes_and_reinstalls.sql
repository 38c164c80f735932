-- Changes of plan, reinstalls and imported servers.
--
-- `reinstall_requested` (billing): reinstalls asked for, ever; a counter exactly like
-- `reboot_requested`. `reinstall_handled` (reconciler): reinstalls carried out.
-- `applied_product_id` (reconciler): the product the server was built as or last changed to;
-- billing changing `product_id` away from it asks for a change of plan.
-- `observe_only` (reconciler, set by `instances import --observe-only` and cleared by
-- `instances manage`): the reconciler never calls a mutating API for the instance.
ALTER TABLE instances ADD COLUMN reinstall_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN reinstall_handled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN applied_product_id TEXT;
ALTER TABLE instances ADD COLUMN observe_only INTEGER NOT NULL DEFAULT 0;

UPDATE instances SET applied_product_id = product_id
 WHERE provider_server_id IS NOT NULL OR observed_status NOT IN ('pending', 'terminated');

-- Two new observed statuses and two new task kinds. SQLite cannot alter a CHECK constraint;
-- the documented way (https://www.sqlite.org/lang_altertable.html, "making other kinds of
-- table schema changes") edits the stored definition, which only widens the allowed set here,
-- so every existing row stays valid.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql, '''terminated'', ''failed'', ''lost'')',
                          '''terminated'', ''failed'', ''lost'', ''resizing'', ''reinstalling'')')
 WHERE type = 'table' AND name = 'instances';
UPDATE sqlite_schema
   SET sql = replace(sql, '''reboot'', ''terminate'')',
                          '''reboot'', ''terminate'', ''resize'', ''reinstall'')')
 WHERE type = 'table' AND name = 'manual_tasks';
PRAGMA writable_schema = OFF;
-- A schema change through the normal path bumps the schema cookie, so every connection
-- reloads the edited definitions.
CREATE TABLE provisioner_schema_bump (x INTEGER);
DROP TABLE provisioner_schema_bump;

-- Billing's counter: an integer that never decreases, like reboot_requested.
CREATE TRIGGER instances_reinstall_requested_is_counted_insert BEFORE INSERT ON instances
WHEN typeof(NEW.reinstall_requested) <> 'integer' OR NEW.reinstall_requested < 0
  OR NEW.reinstall_requested >= 9007199254740992
BEGIN
    SELECT RAISE(ABORT, 'reinstall_requested must be an integer from 0 to below 2^53: increment it by one to ask for one more reinstall');
END;

CREATE TRIGGER instances_reinstall_requested_is_counted_update BEFORE UPDATE OF reinstall_requested ON instances
WHEN typeof(NEW.reinstall_requested) <> 'integer' OR NEW.reinstall_requested >= 9007199254740992
BEGIN
    SELECT RAISE(ABORT, 'reinstall_requested must be an integer below 2^53: increment it by one to ask for one more reinstall');
END;

CREATE TRIGGER instances_reinstall_requested_monotonic BEFORE UPDATE OF reinstall_requested ON instances
WHEN NEW.reinstall_requested < OLD.reinstall_requested
BEGIN
    SELECT RAISE(ABORT, 'reinstall_requested never decreases: increment it by one to ask for one more reinstall');
END;

-- The reconciler's counter follows billing's and never goes back.
CREATE TRIGGER instances_reinstall_handled_bounded BEFORE UPDATE OF reinstall_handled ON instances
WHEN NEW.reinstall_handled < OLD.reinstall_handled OR NEW.reinstall_handled > NEW.reinstall_requested
BEGIN
    SELECT RAISE(ABORT, 'reinstall_handled never decreases and never passes reinstall_requested');
END;

CREATE TRIGGER instances_observe_only_is_flag BEFORE UPDATE OF observe_only ON instances
WHEN NEW.observe_only NOT IN (0, 1)
BEGIN
    SELECT RAISE(ABORT, 'observe_only is 0 or 1');
END;

-- Inserts set billing's columns only.
CREATE TRIGGER instances_insert_lifecycle BEFORE INSERT ON instances
WHEN NEW.reinstall_handled IS NOT 0 OR NEW.applied_product_id IS NOT NULL
  OR NEW.observe_only IS NOT 0
BEGIN
    SELECT RAISE(ABORT, 'reconciler-owned columns cannot be set when inserting an instance: insert the billing columns only (customer_id, order_id, billing_ref, product_id, location, os_image, hostname, ssh_keys, desired_status, suspend_reason, reboot_requested, reinstall_requested)');
END;

-- The rules over every billing column now include reinstall_requested.
DROP TRIGGER instances_terminated_is_final;
CREATE TRIGGER instances_terminated_is_final BEFORE UPDATE ON instances
WHEN OLD.desired_status = 'terminated' AND (
       NEW.desired_status IS NOT OLD.desired_status
    OR NEW.customer_id IS NOT OLD.customer_id OR NEW.order_id IS NOT OLD.order_id
    OR NEW.product_id IS NOT OLD.product_id OR NEW.location IS NOT OLD.location
    OR NEW.os_image IS NOT OLD.os_image OR NEW.hostname IS NOT OLD.hostname
    OR NEW.ssh_keys IS NOT OLD.ssh_keys OR NEW.suspend_reason IS NOT OLD.suspend_reason
    OR NEW.reboot_requested IS NOT OLD.reboot_requested
    OR NEW.reinstall_requested IS NOT OLD.reinstall_requested)
BEGIN
    SELECT RAISE(ABORT, 'instance is terminated: its desired state cannot change any more; a new server is a new instance');
END;

DROP TRIGGER instances_desired_generation_bounded;
CREATE TRIGGER instances_desired_generation_bounded BEFORE UPDATE ON instances
WHEN OLD.desired_generation >= 9007199254740991
  AND (NEW.desired_status IS NOT OLD.desired_status
    OR NEW.customer_id IS NOT OLD.customer_id OR NEW.order_id IS NOT OLD.order_id
    OR NEW.product_id IS NOT OLD.product_id OR NEW.location IS NOT OLD.location
    OR NEW.os_image IS NOT OLD.os_image OR NEW.hostname IS NOT OLD.hostname
    OR NEW.ssh_keys IS NOT OLD.ssh_keys OR NEW.suspend_reason IS NOT OLD.suspend_reason
    OR NEW.reboot_requested IS NOT OLD.reboot_requested
    OR NEW.reinstall_requested IS NOT OLD.reinstall_requested)
BEGIN
    SELECT RAISE(ABORT, 'desired_generation is at its limit (2^53 - 1): this instance''s desired state cannot change any more; a new server is a new instance');
END;

DROP TRIGGER instances_desired_changed;
CREATE TRIGGER instances_desired_changed AFTER UPDATE ON instances
WHEN NEW.desired_status IS NOT OLD.desired_status
  OR NEW.customer_id IS NOT OLD.customer_id OR NEW.order_id IS NOT OLD.order_id
  OR NEW.product_id IS NOT OLD.product_id OR NEW.location IS NOT OLD.location
  OR NEW.os_image IS NOT OLD.os_image OR NEW.hostname IS NOT OLD.hostname
  OR NEW.ssh_keys IS NOT OLD.ssh_keys OR NEW.suspend_reason IS NOT OLD.suspend_reason
  OR NEW.reboot_requested IS NOT OLD.reboot_requested
  OR NEW.reinstall_requested IS NOT OLD.reinstall_requested
BEGIN
    UPDATE instances
       SET desired_generation = OLD.desired_generation + 1,
           desired_changed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
           next_check_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
     WHERE id = NEW.id;
END;

CREATE TRIGGER instances_owns_reinstall_handled BEFORE UPDATE OF reinstall_handled ON instances
BEGIN
    SELECT provisioner_owns_reinstall_handled();
END;

CREATE TRIGGER instances_owns_applied_product_id BEFORE UPDATE OF applied_product_id ON instances
BEGIN
    SELECT provisioner_owns_applied_product_id();
END;

CREATE TRIGGER instances_owns_observe_only BEFORE UPDATE OF observe_only ON instances
BEGIN
    SELECT provisioner_owns_observe_only();
END;

-- The simulated cloud changes plans and reinstalls too: a busy server settles into
-- `settle_state` at `ready_at`; the counters are the ledger the tests check.
ALTER TABLE sim_servers ADD COLUMN settle_state TEXT;
ALTER TABLE sim_servers ADD COLUMN resizes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sim_servers ADD COLUMN rebuilds INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sim_servers ADD COLUMN rebuilt_at TEXT;
