-- The simulated cloud finds a live server by name (a create checks that the name is free, as
-- Hetzner's does) through this index instead of reading every live server of the account.
CREATE INDEX sim_servers_live_name ON sim_servers (account, name) WHERE deleted_at IS NULL;
