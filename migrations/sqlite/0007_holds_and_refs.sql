-- Idempotent orders and suspension holds.
--
-- `billing_ref`: billing's own service id, unique when set, so that a second insert of the
-- same order is refused instead of building a second server.
ALTER TABLE instances ADD COLUMN billing_ref TEXT;
CREATE UNIQUE INDEX instances_billing_ref ON instances (billing_ref) WHERE billing_ref IS NOT NULL;

CREATE TRIGGER instances_billing_ref_is_text_insert BEFORE INSERT ON instances
WHEN NEW.billing_ref IS NOT NULL
 AND (typeof(NEW.billing_ref) <> 'text' OR length(NEW.billing_ref) NOT BETWEEN 1 AND 255)
BEGIN
    SELECT RAISE(ABORT, 'billing_ref must be text of 1 to 255 characters, or NULL');
END;

CREATE TRIGGER instances_billing_ref_is_text_update BEFORE UPDATE OF billing_ref ON instances
WHEN NEW.billing_ref IS NOT NULL
 AND (typeof(NEW.billing_ref) <> 'text' OR length(NEW.billing_ref) NOT BETWEEN 1 AND 255)
BEGIN
    SELECT RAISE(ABORT, 'billing_ref must be text of 1 to 255 characters, or NULL');
END;

CREATE TRIGGER instances_billing_ref_unique_insert BEFORE INSERT ON instances
WHEN NEW.billing_ref IS NOT NULL
 AND EXISTS (SELECT 1 FROM instances WHERE billing_ref = NEW.billing_ref)
BEGIN
    SELECT RAISE(ABORT, 'billing_ref is already the reference of another instance: an order is inserted once (SELECT id FROM instances WHERE billing_ref = ... finds it)');
END;

CREATE TRIGGER instances_billing_ref_unique_update BEFORE UPDATE OF billing_ref ON instances
WHEN NEW.billing_ref IS NOT NULL
 AND EXISTS (SELECT 1 FROM instances WHERE billing_ref = NEW.billing_ref AND id <> NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'billing_ref is already the reference of another instance: an order is inserted once (SELECT id FROM instances WHERE billing_ref = ... finds it)');
END;

CREATE TRIGGER instances_billing_ref_final BEFORE UPDATE OF billing_ref ON instances
WHEN OLD.desired_status = 'terminated' AND NEW.billing_ref IS NOT OLD.billing_ref
BEGIN
    SELECT RAISE(ABORT, 'instance is terminated: its desired state cannot change any more; a new server is a new instance');
END;

-- Suspension holds: independent reasons to keep a server off (billing, abuse, admin, …),
-- one row per instance and kind, written by billing and admins. The server is off while
-- desired_status is 'suspended' or any hold exists.
CREATE TABLE instance_holds (
    instance_id INTEGER NOT NULL REFERENCES instances (id),
    kind        TEXT    NOT NULL,
    reason      TEXT,
    placed_by   TEXT    NOT NULL DEFAULT 'billing',
    placed_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (instance_id, kind)
);

CREATE TRIGGER instance_holds_kind_insert BEFORE INSERT ON instance_holds
WHEN typeof(NEW.kind) <> 'text' OR length(NEW.kind) NOT BETWEEN 1 AND 32
  OR NEW.kind NOT GLOB '[a-z]*' OR NEW.kind GLOB '*[^a-z0-9_-]*'
BEGIN
    SELECT RAISE(ABORT, 'hold kind must be a lower-case word of at most 32 letters, digits, - or _ (billing, abuse, admin, ...)');
END;

CREATE TRIGGER instance_holds_kind_update BEFORE UPDATE ON instance_holds
WHEN typeof(NEW.kind) <> 'text' OR length(NEW.kind) NOT BETWEEN 1 AND 32
  OR NEW.kind NOT GLOB '[a-z]*' OR NEW.kind GLOB '*[^a-z0-9_-]*'
BEGIN
    SELECT RAISE(ABORT, 'hold kind must be a lower-case word of at most 32 letters, digits, - or _ (billing, abuse, admin, ...)');
END;

CREATE TRIGGER instance_holds_text_insert BEFORE INSERT ON instance_holds
WHEN (NEW.reason IS NOT NULL AND typeof(NEW.reason) <> 'text')
  OR typeof(NEW.placed_by) <> 'text' OR typeof(NEW.instance_id) <> 'integer'
BEGIN
    SELECT RAISE(ABORT, 'instance_holds: instance_id is an integer, reason text or NULL, placed_by text');
END;

CREATE TRIGGER instance_holds_text_update BEFORE UPDATE ON instance_holds
WHEN (NEW.reason IS NOT NULL AND typeof(NEW.reason) <> 'text')
  OR typeof(NEW.placed_by) <> 'text' OR typeof(NEW.instance_id) <> 'integer'
BEGIN
    SELECT RAISE(ABORT, 'instance_holds: instance_id is an integer, reason text or NULL, placed_by text');
END;

-- Clients' SQLite connections may not enforce foreign keys: the instance is checked here.
CREATE TRIGGER instance_holds_live_insert BEFORE INSERT ON instance_holds
WHEN NOT EXISTS (SELECT 1 FROM instances WHERE id = NEW.instance_id AND desired_status <> 'terminated')
BEGIN
    SELECT RAISE(ABORT, 'a hold needs a live instance: this one does not exist or is terminated');
END;

CREATE TRIGGER instance_holds_live_update BEFORE UPDATE OF instance_id ON instance_holds
WHEN NOT EXISTS (SELECT 1 FROM instances WHERE id = NEW.instance_id AND desired_status <> 'terminated')
BEGIN
    SELECT RAISE(ABORT, 'a hold needs a live instance: this one does not exist or is terminated');
END;

-- `instances.holds` mirrors the hold kinds (sorted, comma-separated, NULL for none), kept by
-- the database, so that a claim reads them with the row; a change bumps the generation.
ALTER TABLE instances ADD COLUMN holds TEXT;
-- The hold kinds the reconciler last recorded transitions for.
ALTER TABLE instances ADD COLUMN holds_seen TEXT;

CREATE TRIGGER instances_holds_kept BEFORE UPDATE OF holds ON instances
WHEN NEW.holds IS NOT (SELECT group_concat(kind, ',')
                         FROM (SELECT kind FROM instance_holds WHERE instance_id = NEW.id ORDER BY kind))
BEGIN
    SELECT RAISE(ABORT, 'holds is kept by the database from instance_holds: insert or delete holds there');
END;

CREATE TRIGGER instance_holds_sync_insert AFTER INSERT ON instance_holds
BEGIN
    UPDATE instances
       SET holds = (SELECT group_concat(kind, ',')
                      FROM (SELECT kind FROM instance_holds WHERE instance_id = NEW.instance_id ORDER BY kind))
     WHERE id = NEW.instance_id;
END;

CREATE TRIGGER instance_holds_sync_delete AFTER DELETE ON instance_holds
BEGIN
    UPDATE instances
       SET holds = (SELECT group_concat(kind, ',')
                      FROM (SELECT kind FROM instance_holds WHERE instance_id = OLD.instance_id ORDER BY kind))
     WHERE id = OLD.instance_id;
END;

CREATE TRIGGER instance_holds_sync_update AFTER UPDATE ON instance_holds
BEGIN
    UPDATE instances
       SET holds = (SELECT group_concat(kind, ',')
                      FROM (SELECT kind FROM instance_holds WHERE instance_id = OLD.instance_id ORDER BY kind))
     WHERE id = OLD.instance_id;
    UPDATE instances
       SET holds = (SELECT group_concat(kind, ',')
                      FROM (SELECT kind FROM instance_holds WHERE instance_id = NEW.instance_id ORDER BY kind))
     WHERE id = NEW.instance_id;
END;

-- A change of holds, like one of billing's columns, bumps the desired generation and makes
-- the instance due now.
CREATE TRIGGER instances_holds_changed AFTER UPDATE OF holds ON instances
WHEN NEW.holds IS NOT OLD.holds
BEGIN
    UPDATE instances
       SET desired_generation = OLD.desired_generation + 1,
           desired_changed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
           next_check_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
     WHERE id = NEW.id;
END;

-- Inserts set billing's columns only; the mirrors start empty.
CREATE TRIGGER instances_insert_holds BEFORE INSERT ON instances
WHEN NEW.holds IS NOT NULL OR NEW.holds_seen IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'reconciler-owned columns cannot be set when inserting an instance: insert the billing columns only (customer_id, order_id, billing_ref, product_id, location, os_image, hostname, ssh_keys, desired_status, suspend_reason, reboot_requested)');
END;

CREATE TRIGGER instances_owns_holds_seen BEFORE UPDATE OF holds_seen ON instances
BEGIN
    SELECT provisioner_owns_holds_seen();
END;
