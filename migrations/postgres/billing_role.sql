-- Applied by every `provisioner migrate` (and start-up) after the numbered migrations, so that
-- a role created later by a superuser gets its grants on the next run.
--
-- `provisioner_billing` (NOLOGIN) holds exactly what billing may do: read the instances, their
-- history and the product revisions; insert instances and update them through the billing
-- columns only. Operators `GRANT provisioner_billing TO <billing's login role>` and never hand
-- billing the owner role. The triggers keep every rule for the owner too.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'provisioner_billing') THEN
        BEGIN
            CREATE ROLE provisioner_billing NOLOGIN;
        EXCEPTION
            -- Another database of the cluster created it meanwhile.
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE WARNING 'cannot create role provisioner_billing (this user lacks CREATEROLE): create it as a superuser with CREATE ROLE provisioner_billing NOLOGIN, then run provisioner migrate again';
                RETURN;
        END;
    END IF;
    REVOKE ALL ON instances, instance_transitions, product_revisions, manual_tasks, ovh_pool,
                  sim_servers, schema_migrations, instance_holds, events, event_consumers,
                  webhook_deliveries, webhook_attempts, event_inbox, daemons
        FROM provisioner_billing;
    -- The event outbox is billing's to read, as the feed `GET /v1/events` serves it.
    GRANT SELECT ON instances, instance_transitions, product_revisions, events
        TO provisioner_billing;
    GRANT INSERT (customer_id, order_id, billing_ref, product_id, location, os_image, hostname,
                  ssh_keys, desired_status, suspend_reason, reboot_requested,
                  reinstall_requested)
        ON instances TO provisioner_billing;
    GRANT UPDATE (customer_id, order_id, billing_ref, product_id, location, os_image, hostname,
                  ssh_keys, desired_status, suspend_reason, reboot_requested,
                  reinstall_requested)
        ON instances TO provisioner_billing;
    -- Holds are billing's and admins' alike.
    GRANT SELECT, INSERT, UPDATE, DELETE ON instance_holds TO provisioner_billing;
END
$$;
