-- Servers an admin attaches to an instance: imported (`instances import`) or adopted for a
-- lost or failed instance (`instances adopt`).
--
-- `claim_pending` (reconciler): the server is the instance's, but not yet marked as ours at
-- the provider (label, tag or pool allocation); the reconciler does that before anything
-- else it sends for the instance, and not while the instance is observe-only.
ALTER TABLE instances ADD COLUMN claim_pending INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER instances_claim_pending_is_flag BEFORE UPDATE OF claim_pending ON instances
WHEN NEW.claim_pending NOT IN (0, 1)
BEGIN
    SELECT RAISE(ABORT, 'claim_pending is 0 or 1');
END;

CREATE TRIGGER instances_insert_claim_pending BEFORE INSERT ON instances
WHEN NEW.claim_pending IS NOT 0
BEGIN
    SELECT RAISE(ABORT, 'reconciler-owned columns cannot be set when inserting an instance: insert the billing columns only (customer_id, order_id, billing_ref, product_id, location, os_image, hostname, ssh_keys, desired_status, suspend_reason, reboot_requested, reinstall_requested)');
END;

CREATE TRIGGER instances_owns_claim_pending BEFORE UPDATE OF claim_pending ON instances
BEGIN
    SELECT provisioner_owns_claim_pending();
END;

-- A server belongs to one live instance at most: an import or adoption of a server another
-- instance has is refused, whatever the path.
CREATE UNIQUE INDEX instances_one_per_server ON instances (provider_account, provider_server_id)
 WHERE provider_server_id IS NOT NULL AND observed_status <> 'terminated';

-- The sim's ledger counts servers made for an instance (`made_for`), whatever label a server
-- carries later: an adopted server is not a duplicate.
ALTER TABLE sim_servers ADD COLUMN made_for INTEGER;
UPDATE sim_servers SET made_for = instance_id;
