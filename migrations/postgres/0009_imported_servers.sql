-- Servers an admin attaches to an instance: imported (`instances import`) or adopted for a
-- lost or failed instance (`instances adopt`).
--
-- `claim_pending` (reconciler): the server is the instance's, but not yet marked as ours at
-- the provider (label, tag or pool allocation); the reconciler does that before anything
-- else it sends for the instance, and not while the instance is observe-only.
ALTER TABLE instances ADD COLUMN claim_pending BOOLEAN NOT NULL DEFAULT false;

CREATE FUNCTION instances_insert_claim_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.claim_pending THEN
        RAISE EXCEPTION 'reconciler-owned columns cannot be set when inserting an instance: insert the billing columns only (customer_id, order_id, billing_ref, product_id, location, os_image, hostname, ssh_keys, desired_status, suspend_reason, reboot_requested, reinstall_requested)'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER instances_insert_claim_guard BEFORE INSERT ON instances
    FOR EACH ROW EXECUTE FUNCTION instances_insert_claim_guard();

-- A server belongs to one live instance at most: an import or adoption of a server another
-- instance has is refused, whatever the path.
CREATE UNIQUE INDEX instances_one_per_server ON instances (provider_account, provider_server_id)
 WHERE provider_server_id IS NOT NULL AND observed_status <> 'terminated';

-- The sim's ledger counts servers made for an instance (`made_for`), whatever label a server
-- carries later: an adopted server is not a duplicate.
ALTER TABLE sim_servers ADD COLUMN made_for BIGINT;
UPDATE sim_servers SET made_for = instance_id;
