-- The OVH module's pool: which dedicated server of an account's `pool` is given to which
-- instance. `instance_id` is unique, and a server is allocated by a conditional UPDATE, so a
-- server is never given to two instances, across restarts and several daemons.
CREATE TABLE ovh_pool (
    service_name TEXT        PRIMARY KEY,
    account      TEXT        NOT NULL,
    instance_id  BIGINT      UNIQUE,
    -- free, installing, ready, wiping
    state        TEXT        NOT NULL DEFAULT 'free',
    os_image     TEXT,
    -- harddisk, rescue: what the server boots (rescue = suspended)
    boot         TEXT        NOT NULL DEFAULT 'harddisk',
    -- the OVH task being followed for this server, if any
    task_id      TEXT,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
