-- SQLite's REPLACE conflict resolution (INSERT OR REPLACE, REPLACE INTO, UPDATE OR REPLACE)
-- deletes the conflicting row without firing delete triggers unless the client turned
-- recursive triggers on, which billing's client need not do. The conflict path is made
-- impossible instead: ids are never reused and never change.
CREATE TRIGGER instances_no_replace BEFORE INSERT ON instances
WHEN EXISTS (SELECT 1 FROM instances WHERE id = NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'an existing instance cannot be replaced (INSERT OR REPLACE, REPLACE INTO): rows are never deleted; update its billing columns instead');
END;

CREATE TRIGGER instances_id_fixed BEFORE UPDATE OF id ON instances
WHEN NEW.id IS NOT OLD.id
BEGIN
    SELECT RAISE(ABORT, 'an instance''s id never changes');
END;

CREATE TRIGGER instance_transitions_no_replace BEFORE INSERT ON instance_transitions
WHEN EXISTS (SELECT 1 FROM instance_transitions WHERE id = NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'instance_transitions is append-only: an existing transition cannot be replaced');
END;

-- SQLite stores any value in any column whatever its declared type: billing's columns are
-- typed here, so a BLOB hostname or a text reboot counter is refused where it is written, not
-- found later by the reconciler. PostgreSQL's columns are typed already.

CREATE TRIGGER instances_customer_id_is_text_insert BEFORE INSERT ON instances
WHEN typeof(NEW.customer_id) NOT IN ('text')
BEGIN
    SELECT RAISE(ABORT, 'customer_id must be text');
END;

CREATE TRIGGER instances_product_id_is_text_insert BEFORE INSERT ON instances
WHEN typeof(NEW.product_id) NOT IN ('text')
BEGIN
    SELECT RAISE(ABORT, 'product_id must be text');
END;

CREATE TRIGGER instances_desired_status_is_text_insert BEFORE INSERT ON instances
WHEN typeof(NEW.desired_status) NOT IN ('text')
BEGIN
    SELECT RAISE(ABORT, 'desired_status must be text');
END;

CREATE TRIGGER instances_order_id_is_text_insert BEFORE INSERT ON instances
WHEN typeof(NEW.order_id) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'order_id must be text or NULL');
END;

CREATE TRIGGER instances_location_is_text_insert BEFORE INSERT ON instances
WHEN typeof(NEW.location) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'location must be text or NULL');
END;

CREATE TRIGGER instances_os_image_is_text_insert BEFORE INSERT ON instances
WHEN typeof(NEW.os_image) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'os_image must be text or NULL');
END;

CREATE TRIGGER instances_hostname_is_text_insert BEFORE INSERT ON instances
WHEN typeof(NEW.hostname) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'hostname must be text or NULL');
END;

CREATE TRIGGER instances_ssh_keys_is_text_insert BEFORE INSERT ON instances
WHEN typeof(NEW.ssh_keys) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'ssh_keys must be text or NULL');
END;

CREATE TRIGGER instances_suspend_reason_is_text_insert BEFORE INSERT ON instances
WHEN typeof(NEW.suspend_reason) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'suspend_reason must be text or NULL');
END;

CREATE TRIGGER instances_reboot_requested_is_counted_insert BEFORE INSERT ON instances
WHEN typeof(NEW.reboot_requested) <> 'integer' OR NEW.reboot_requested >= 9007199254740992
BEGIN
    SELECT RAISE(ABORT, 'reboot_requested must be an integer below 2^53: increment it by one to ask for one more reboot');
END;

CREATE TRIGGER instances_customer_id_is_text_update BEFORE UPDATE OF customer_id ON instances
WHEN typeof(NEW.customer_id) NOT IN ('text')
BEGIN
    SELECT RAISE(ABORT, 'customer_id must be text');
END;

CREATE TRIGGER instances_product_id_is_text_update BEFORE UPDATE OF product_id ON instances
WHEN typeof(NEW.product_id) NOT IN ('text')
BEGIN
    SELECT RAISE(ABORT, 'product_id must be text');
END;

CREATE TRIGGER instances_desired_status_is_text_update BEFORE UPDATE OF desired_status ON instances
WHEN typeof(NEW.desired_status) NOT IN ('text')
BEGIN
    SELECT RAISE(ABORT, 'desired_status must be text');
END;

CREATE TRIGGER instances_order_id_is_text_update BEFORE UPDATE OF order_id ON instances
WHEN typeof(NEW.order_id) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'order_id must be text or NULL');
END;

CREATE TRIGGER instances_location_is_text_update BEFORE UPDATE OF location ON instances
WHEN typeof(NEW.location) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'location must be text or NULL');
END;

CREATE TRIGGER instances_os_image_is_text_update BEFORE UPDATE OF os_image ON instances
WHEN typeof(NEW.os_image) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'os_image must be text or NULL');
END;

CREATE TRIGGER instances_hostname_is_text_update BEFORE UPDATE OF hostname ON instances
WHEN typeof(NEW.hostname) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'hostname must be text or NULL');
END;

CREATE TRIGGER instances_ssh_keys_is_text_update BEFORE UPDATE OF ssh_keys ON instances
WHEN typeof(NEW.ssh_keys) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'ssh_keys must be text or NULL');
END;

CREATE TRIGGER instances_suspend_reason_is_text_update BEFORE UPDATE OF suspend_reason ON instances
WHEN typeof(NEW.suspend_reason) NOT IN ('text', 'null')
BEGIN
    SELECT RAISE(ABORT, 'suspend_reason must be text or NULL');
END;

CREATE TRIGGER instances_reboot_requested_is_counted_update BEFORE UPDATE OF reboot_requested ON instances
WHEN typeof(NEW.reboot_requested) <> 'integer' OR NEW.reboot_requested >= 9007199254740992
BEGIN
    SELECT RAISE(ABORT, 'reboot_requested must be an integer below 2^53: increment it by one to ask for one more reboot');
END;

-- A desired generation at its limit cannot be bumped again: the change is refused clearly
-- instead of overflowing in the trigger that bumps it.
CREATE TRIGGER instances_desired_generation_bounded BEFORE UPDATE ON instances
WHEN OLD.desired_generation >= 9007199254740991
  AND (NEW.desired_status IS NOT OLD.desired_status
    OR NEW.customer_id IS NOT OLD.customer_id OR NEW.order_id IS NOT OLD.order_id
    OR NEW.product_id IS NOT OLD.product_id OR NEW.location IS NOT OLD.location
    OR NEW.os_image IS NOT OLD.os_image OR NEW.hostname IS NOT OLD.hostname
    OR NEW.ssh_keys IS NOT OLD.ssh_keys OR NEW.suspend_reason IS NOT OLD.suspend_reason
    OR NEW.reboot_requested IS NOT OLD.reboot_requested)
BEGIN
    SELECT RAISE(ABORT, 'desired_generation is at its limit (2^53 - 1): this instance''s desired state cannot change any more; a new server is a new instance');
END;
