-- provisioner store, SQLite. Timestamps are UTC text 'YYYY-MM-DDTHH:MM:SS.sssZ', which sort
-- and compare correctly as strings.

-- One customer server. The billing system writes the columns of the first block (the billing
-- contract, see README.md); the reconciler writes the rest.
CREATE TABLE instances (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    -- billing contract
    customer_id          TEXT    NOT NULL CHECK (length(customer_id) > 0),
    order_id             TEXT,
    product_id           TEXT    NOT NULL CHECK (length(product_id) > 0),
    location             TEXT,
    os_image             TEXT,
    hostname             TEXT,
    ssh_keys             TEXT,
    desired_status       TEXT    NOT NULL DEFAULT 'active'
                         CHECK (desired_status IN ('active', 'suspended', 'terminated')),
    suspend_reason       TEXT,
    reboot_requested     INTEGER NOT NULL DEFAULT 0 CHECK (reboot_requested >= 0),
    -- bookkeeping, maintained by triggers
    created_at           TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at           TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    desired_generation   INTEGER NOT NULL DEFAULT 1,
    desired_changed_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- reconciler-owned
    observed_generation  INTEGER NOT NULL DEFAULT 0,
    observed_status      TEXT    NOT NULL DEFAULT 'pending'
                         CHECK (observed_status IN ('pending', 'provisioning', 'active', 'suspending',
                                'suspended', 'unsuspending', 'rebooting', 'terminating',
                                'terminated', 'failed', 'lost')),
    status_reason        TEXT,
    provider_account     TEXT,
    provider_server_id   TEXT,
    ipv4                 TEXT,
    ipv6                 TEXT,
    product_revision     TEXT,
    reboot_handled       INTEGER NOT NULL DEFAULT 0,
    credentials_sealed   TEXT,
    credentials_key_id   TEXT,
    last_error           TEXT,
    attempts             INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    pending_action       TEXT,
    pending_action_id    TEXT,
    pending_since        TEXT,
    next_check_at        TEXT    DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    lease_owner          TEXT,
    lease_expires_at     TEXT,
    lease_epoch          INTEGER NOT NULL DEFAULT 0,
    CHECK (reboot_handled >= 0 AND reboot_handled <= reboot_requested),
    CHECK (observed_generation >= 0 AND observed_generation <= desired_generation),
    CHECK ((credentials_sealed IS NULL) = (credentials_key_id IS NULL))
);

CREATE INDEX instances_due ON instances (next_check_at, id) WHERE next_check_at IS NOT NULL;
CREATE INDEX instances_customer ON instances (customer_id);
CREATE INDEX instances_product ON instances (product_id, product_revision);

-- Billing may insert only the contract columns: the reconciler's start from their defaults.
CREATE TRIGGER instances_insert_contract BEFORE INSERT ON instances
WHEN NEW.observed_status IS NOT 'pending' OR NEW.observed_generation IS NOT 0
  OR NEW.desired_generation IS NOT 1 OR NEW.provider_server_id IS NOT NULL
  OR NEW.provider_account IS NOT NULL OR NEW.product_revision IS NOT NULL
  OR NEW.reboot_handled IS NOT 0 OR NEW.credentials_sealed IS NOT NULL
  OR NEW.lease_owner IS NOT NULL OR NEW.lease_epoch IS NOT 0 OR NEW.attempts IS NOT 0
  OR NEW.pending_action IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'reconciler-owned columns cannot be set when inserting an instance: insert the billing columns only (customer_id, order_id, product_id, location, os_image, hostname, ssh_keys, desired_status, suspend_reason, reboot_requested)');
END;

CREATE TRIGGER instances_desired_status_known BEFORE UPDATE OF desired_status ON instances
WHEN NEW.desired_status NOT IN ('active', 'suspended', 'terminated')
BEGIN
    SELECT RAISE(ABORT, 'desired_status must be active, suspended or terminated');
END;

CREATE TRIGGER instances_desired_status_known_insert BEFORE INSERT ON instances
WHEN NEW.desired_status NOT IN ('active', 'suspended', 'terminated')
BEGIN
    SELECT RAISE(ABORT, 'desired_status must be active, suspended or terminated');
END;

CREATE TRIGGER instances_terminated_is_final BEFORE UPDATE ON instances
WHEN OLD.desired_status = 'terminated' AND (
       NEW.desired_status IS NOT OLD.desired_status
    OR NEW.customer_id IS NOT OLD.customer_id OR NEW.order_id IS NOT OLD.order_id
    OR NEW.product_id IS NOT OLD.product_id OR NEW.location IS NOT OLD.location
    OR NEW.os_image IS NOT OLD.os_image OR NEW.hostname IS NOT OLD.hostname
    OR NEW.ssh_keys IS NOT OLD.ssh_keys OR NEW.suspend_reason IS NOT OLD.suspend_reason
    OR NEW.reboot_requested IS NOT OLD.reboot_requested)
BEGIN
    SELECT RAISE(ABORT, 'instance is terminated: its desired state cannot change any more; a new server is a new instance');
END;

CREATE TRIGGER instances_reboot_requested_monotonic BEFORE UPDATE OF reboot_requested ON instances
WHEN NEW.reboot_requested < OLD.reboot_requested
BEGIN
    SELECT RAISE(ABORT, 'reboot_requested never decreases: increment it by one to ask for one more reboot');
END;

-- Reconciler-owned rules: generations, epochs and handled reboots only move forward, and an
-- observed termination is final.
CREATE TRIGGER instances_reconciler_monotonic BEFORE UPDATE ON instances
WHEN NEW.desired_generation < OLD.desired_generation
  OR NEW.observed_generation < OLD.observed_generation
  OR NEW.lease_epoch < OLD.lease_epoch
  OR NEW.reboot_handled < OLD.reboot_handled
BEGIN
    SELECT RAISE(ABORT, 'desired_generation, observed_generation, lease_epoch and reboot_handled never decrease');
END;

CREATE TRIGGER instances_observed_terminated_is_final BEFORE UPDATE OF observed_status ON instances
WHEN OLD.observed_status = 'terminated' AND NEW.observed_status IS NOT 'terminated'
BEGIN
    SELECT RAISE(ABORT, 'observed_status terminated is final');
END;

CREATE TRIGGER instances_never_deleted BEFORE DELETE ON instances
BEGIN
    SELECT RAISE(ABORT, 'instances are never deleted: set desired_status to terminated; the row and its history stay');
END;

-- A change of any billing column bumps the desired generation and makes the instance due now.
CREATE TRIGGER instances_desired_changed AFTER UPDATE ON instances
WHEN NEW.desired_status IS NOT OLD.desired_status
  OR NEW.customer_id IS NOT OLD.customer_id OR NEW.order_id IS NOT OLD.order_id
  OR NEW.product_id IS NOT OLD.product_id OR NEW.location IS NOT OLD.location
  OR NEW.os_image IS NOT OLD.os_image OR NEW.hostname IS NOT OLD.hostname
  OR NEW.ssh_keys IS NOT OLD.ssh_keys OR NEW.suspend_reason IS NOT OLD.suspend_reason
  OR NEW.reboot_requested IS NOT OLD.reboot_requested
BEGIN
    UPDATE instances
       SET desired_generation = OLD.desired_generation + 1,
           desired_changed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
           next_check_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
     WHERE id = NEW.id;
END;

CREATE TRIGGER instances_touch AFTER UPDATE ON instances
WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE instances SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = NEW.id;
END;

-- Append-only audit trail: one row per change of observed status and per provider call.
CREATE TABLE instance_transitions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id      INTEGER NOT NULL REFERENCES instances (id),
    at               TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    from_status      TEXT,
    to_status        TEXT,
    action           TEXT    NOT NULL,
    cause            TEXT    NOT NULL,
    outcome          TEXT    NOT NULL,
    error            TEXT,
    details          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(details)),
    product_revision TEXT
);

CREATE INDEX instance_transitions_instance ON instance_transitions (instance_id, id);

CREATE TRIGGER instance_transitions_no_update BEFORE UPDATE ON instance_transitions
BEGIN
    SELECT RAISE(ABORT, 'instance_transitions is append-only: rows cannot be updated');
END;

CREATE TRIGGER instance_transitions_no_delete BEFORE DELETE ON instance_transitions
BEGIN
    SELECT RAISE(ABORT, 'instance_transitions is append-only: rows cannot be deleted');
END;

-- Every product revision the catalog ever had, so an instance's pinned revision can be read back.
CREATE TABLE product_revisions (
    product_id     TEXT NOT NULL,
    revision       TEXT NOT NULL,
    definition     TEXT NOT NULL CHECK (json_valid(definition)),
    loaded_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    git_commit     TEXT,
    PRIMARY KEY (product_id, revision)
);

-- Work for admins, opened by the manual module.
CREATE TABLE manual_tasks (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id    INTEGER NOT NULL REFERENCES instances (id),
    kind           TEXT    NOT NULL
                   CHECK (kind IN ('provision', 'suspend', 'unsuspend', 'reboot', 'terminate')),
    state          TEXT    NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'done', 'cancelled')),
    created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    completed_at   TEXT,
    completed_by   TEXT,
    details        TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(details)),
    secret_sealed  TEXT,
    secret_key_id  TEXT,
    CHECK ((state = 'open') = (completed_at IS NULL))
);

CREATE UNIQUE INDEX manual_tasks_one_open ON manual_tasks (instance_id, kind) WHERE state = 'open';
CREATE INDEX manual_tasks_state ON manual_tasks (state, id);
