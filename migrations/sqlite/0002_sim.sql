-- The simulated cloud of the `sim` module: its servers live in the same database, so they
-- survive daemon restarts and several daemons see one cloud. Rows are never deleted: the table
-- is also the ledger of every server the sim ever created, by instance label.
CREATE TABLE sim_servers (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account     TEXT    NOT NULL,
    instance_id INTEGER,
    name        TEXT    NOT NULL,
    size        TEXT,
    image       TEXT,
    location    TEXT,
    -- creating, running, stopping, off, starting, rebooting, deleted
    state       TEXT    NOT NULL,
    ready_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    ipv4        TEXT,
    ipv6        TEXT,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    deleted_at  TEXT
);

CREATE INDEX sim_servers_account ON sim_servers (account, deleted_at);
CREATE INDEX sim_servers_instance ON sim_servers (instance_id);
