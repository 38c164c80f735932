-- The billing boundary on SQLite (PostgreSQL has the provisioner_billing role's column
-- grants). SQLite has no roles: each reconciler-owned column gets a trigger whose body calls
-- a function named after it. SQLite compiles a trigger, resolving its functions, only for a
-- statement that sets one of its columns; provisioner's own connections define the
-- functions, a plain client does not, so its write fails with
-- `no such function: provisioner_owns_<column>` while billing's columns stay writable.

CREATE TRIGGER instances_owns_observed_generation BEFORE UPDATE OF observed_generation ON instances
BEGIN
    SELECT provisioner_owns_observed_generation();
END;

CREATE TRIGGER instances_owns_observed_status BEFORE UPDATE OF observed_status ON instances
BEGIN
    SELECT provisioner_owns_observed_status();
END;

CREATE TRIGGER instances_owns_status_reason BEFORE UPDATE OF status_reason ON instances
BEGIN
    SELECT provisioner_owns_status_reason();
END;

CREATE TRIGGER instances_owns_provider_account BEFORE UPDATE OF provider_account ON instances
BEGIN
    SELECT provisioner_owns_provider_account();
END;

CREATE TRIGGER instances_owns_provider_server_id BEFORE UPDATE OF provider_server_id ON instances
BEGIN
    SELECT provisioner_owns_provider_server_id();
END;

CREATE TRIGGER instances_owns_ipv4 BEFORE UPDATE OF ipv4 ON instances
BEGIN
    SELECT provisioner_owns_ipv4();
END;

CREATE TRIGGER instances_owns_ipv6 BEFORE UPDATE OF ipv6 ON instances
BEGIN
    SELECT provisioner_owns_ipv6();
END;

CREATE TRIGGER instances_owns_product_revision BEFORE UPDATE OF product_revision ON instances
BEGIN
    SELECT provisioner_owns_product_revision();
END;

CREATE TRIGGER instances_owns_reboot_handled BEFORE UPDATE OF reboot_handled ON instances
BEGIN
    SELECT provisioner_owns_reboot_handled();
END;

CREATE TRIGGER instances_owns_credentials_sealed BEFORE UPDATE OF credentials_sealed ON instances
BEGIN
    SELECT provisioner_owns_credentials_sealed();
END;

CREATE TRIGGER instances_owns_credentials_key_id BEFORE UPDATE OF credentials_key_id ON instances
BEGIN
    SELECT provisioner_owns_credentials_key_id();
END;

CREATE TRIGGER instances_owns_last_error BEFORE UPDATE OF last_error ON instances
BEGIN
    SELECT provisioner_owns_last_error();
END;

CREATE TRIGGER instances_owns_attempts BEFORE UPDATE OF attempts ON instances
BEGIN
    SELECT provisioner_owns_attempts();
END;

CREATE TRIGGER instances_owns_pending_action BEFORE UPDATE OF pending_action ON instances
BEGIN
    SELECT provisioner_owns_pending_action();
END;

CREATE TRIGGER instances_owns_pending_action_id BEFORE UPDATE OF pending_action_id ON instances
BEGIN
    SELECT provisioner_owns_pending_action_id();
END;

CREATE TRIGGER instances_owns_pending_hard BEFORE UPDATE OF pending_hard ON instances
BEGIN
    SELECT provisioner_owns_pending_hard();
END;

CREATE TRIGGER instances_owns_pending_since BEFORE UPDATE OF pending_since ON instances
BEGIN
    SELECT provisioner_owns_pending_since();
END;

CREATE TRIGGER instances_owns_lease_owner BEFORE UPDATE OF lease_owner ON instances
BEGIN
    SELECT provisioner_owns_lease_owner();
END;

CREATE TRIGGER instances_owns_lease_expires_at BEFORE UPDATE OF lease_expires_at ON instances
BEGIN
    SELECT provisioner_owns_lease_expires_at();
END;

CREATE TRIGGER instances_owns_lease_epoch BEFORE UPDATE OF lease_epoch ON instances
BEGIN
    SELECT provisioner_owns_lease_epoch();
END;

CREATE TRIGGER instances_owns_created_at BEFORE UPDATE OF created_at ON instances
BEGIN
    SELECT provisioner_owns_created_at();
END;

-- The columns the database's own triggers update on billing's behalf cannot be guarded by
-- name; their values are: an instance is never made "never due" while it is live.
CREATE TRIGGER instances_next_check_kept BEFORE UPDATE OF next_check_at ON instances
WHEN NEW.next_check_at IS NULL AND NEW.observed_status NOT IN ('terminated', 'failed', 'lost')
BEGIN
    SELECT RAISE(ABORT, 'next_check_at is the reconciler''s: a live instance is always due at some time');
END;

-- An insert sets billing's columns only: the reconciler's start from their defaults.
CREATE TRIGGER instances_insert_contract_rest BEFORE INSERT ON instances
WHEN NEW.status_reason IS NOT NULL OR NEW.ipv4 IS NOT NULL OR NEW.ipv6 IS NOT NULL
  OR NEW.credentials_key_id IS NOT NULL OR NEW.last_error IS NOT NULL
  OR NEW.pending_action_id IS NOT NULL OR NEW.pending_hard IS NOT 0
  OR NEW.pending_since IS NOT NULL OR NEW.lease_expires_at IS NOT NULL
  OR NEW.next_check_at IS NULL
  OR NEW.next_check_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+1 minute')
  -- An id far past the last one would exhaust the ids of every later order.
  OR NEW.id > (SELECT COALESCE(MAX(id), 0) FROM instances) + 1000000
BEGIN
    SELECT RAISE(ABORT, 'reconciler-owned columns cannot be set when inserting an instance: insert the billing columns only (customer_id, order_id, product_id, location, os_image, hostname, ssh_keys, desired_status, suspend_reason, reboot_requested)');
END;

-- The reconciler's other tables: billing writes none of them (it reads instance_transitions
-- and product_revisions). Every statement on them compiles these triggers, so a plain client
-- cannot insert, update or delete there at all.
CREATE TRIGGER instance_transitions_owned_insert BEFORE INSERT ON instance_transitions
BEGIN
    SELECT provisioner_owns_instance_transitions();
END;

CREATE TRIGGER product_revisions_owned_insert BEFORE INSERT ON product_revisions
BEGIN
    SELECT provisioner_owns_product_revisions();
END;

CREATE TRIGGER product_revisions_owned_update BEFORE UPDATE ON product_revisions
BEGIN
    SELECT provisioner_owns_product_revisions();
END;

CREATE TRIGGER product_revisions_owned_delete BEFORE DELETE ON product_revisions
BEGIN
    SELECT provisioner_owns_product_revisions();
END;

CREATE TRIGGER manual_tasks_owned_insert BEFORE INSERT ON manual_tasks
BEGIN
    SELECT provisioner_owns_manual_tasks();
END;

CREATE TRIGGER manual_tasks_owned_update BEFORE UPDATE ON manual_tasks
BEGIN
    SELECT provisioner_owns_manual_tasks();
END;

CREATE TRIGGER manual_tasks_owned_delete BEFORE DELETE ON manual_tasks
BEGIN
    SELECT provisioner_owns_manual_tasks();
END;

CREATE TRIGGER ovh_pool_owned_insert BEFORE INSERT ON ovh_pool
BEGIN
    SELECT provisioner_owns_ovh_pool();
END;

CREATE TRIGGER ovh_pool_owned_update BEFORE UPDATE ON ovh_pool
BEGIN
    SELECT provisioner_owns_ovh_pool();
END;

CREATE TRIGGER ovh_pool_owned_delete BEFORE DELETE ON ovh_pool
BEGIN
    SELECT provisioner_owns_ovh_pool();
END;

CREATE TRIGGER sim_servers_owned_insert BEFORE INSERT ON sim_servers
BEGIN
    SELECT provisioner_owns_sim_servers();
END;

CREATE TRIGGER sim_servers_owned_update BEFORE UPDATE ON sim_servers
BEGIN
    SELECT provisioner_owns_sim_servers();
END;

CREATE TRIGGER sim_servers_owned_delete BEFORE DELETE ON sim_servers
BEGIN
    SELECT provisioner_owns_sim_servers();
END;

CREATE TRIGGER schema_migrations_owned_insert BEFORE INSERT ON schema_migrations
BEGIN
    SELECT provisioner_owns_schema_migrations();
END;

CREATE TRIGGER schema_migrations_owned_update BEFORE UPDATE ON schema_migrations
BEGIN
    SELECT provisioner_owns_schema_migrations();
END;

CREATE TRIGGER schema_migrations_owned_delete BEFORE DELETE ON schema_migrations
BEGIN
    SELECT provisioner_owns_schema_migrations();
END;
