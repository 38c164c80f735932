-- The billing boundary on PostgreSQL is the provisioner_billing role's column grants, applied
-- by every migrate after the numbered migrations (migrations/postgres/billing_role.sql). This
-- migration keeps the two engines' versions in step.
SELECT 1;
