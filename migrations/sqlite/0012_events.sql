-- The event outbox: one row per change billing hears of, written in the same transaction as
-- the transition (or task change) that causes it. `id` orders the feed (`GET /v1/events`);
-- `event_id` is the stable id sent as `webhook-id`; `body` holds the exact bytes delivered
-- (`{"type", "timestamp", "data"}`), which never carry a secret. Append-only.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    at          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    instance_id INTEGER,
    body        TEXT    NOT NULL CHECK (json_valid(body))
);

CREATE INDEX events_instance ON events (instance_id, id);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events is append-only: rows cannot be updated');
END;

-- Where each consumer of the outbox (a webhook endpoint, an e-mail notifier) stands: the last
-- event it has taken, and whether it was disabled (a webhook endpoint answering 410 Gone).
CREATE TABLE event_consumers (
    name            TEXT    PRIMARY KEY,
    after_event     INTEGER NOT NULL,
    disabled_at     TEXT,
    disabled_reason TEXT,
    -- The daemon working this consumer now (e-mail is sent by one daemon at a time).
    lease_until     TEXT
);

-- One event for one webhook endpoint, retried until delivered or given up.
CREATE TABLE webhook_deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id     TEXT    NOT NULL,
    event           INTEGER NOT NULL REFERENCES events (id),
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at     TEXT,
    UNIQUE (endpoint_id, event)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';

-- Every attempt of a delivery: when, the HTTP status (none for a timeout or a refused
-- connection), the error, how long it took.
CREATE TABLE webhook_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL REFERENCES webhook_deliveries (id),
    at          TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    status      INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL
);

CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

CREATE TRIGGER events_owned_insert BEFORE INSERT ON events
BEGIN
    SELECT provisioner_owns_events();
END;

CREATE TRIGGER events_owned_update BEFORE UPDATE ON events
BEGIN
    SELECT provisioner_owns_events();
END;

CREATE TRIGGER events_owned_delete BEFORE DELETE ON events
BEGIN
    SELECT provisioner_owns_events();
END;

CREATE TRIGGER event_consumers_owned_insert BEFORE INSERT ON event_consumers
BEGIN
    SELECT provisioner_owns_event_consumers();
END;

CREATE TRIGGER event_consumers_owned_update BEFORE UPDATE ON event_consumers
BEGIN
    SELECT provisioner_owns_event_consumers();
END;

CREATE TRIGGER event_consumers_owned_delete BEFORE DELETE ON event_consumers
BEGIN
    SELECT provisioner_owns_event_consumers();
END;

CREATE TRIGGER webhook_deliveries_owned_insert BEFORE INSERT ON webhook_deliveries
BEGIN
    SELECT provisioner_owns_webhook_deliveries();
END;

CREATE TRIGGER webhook_deliveries_owned_update BEFORE UPDATE ON webhook_deliveries
BEGIN
    SELECT provisioner_owns_webhook_deliveries();
END;

CREATE TRIGGER webhook_deliveries_owned_delete BEFORE DELETE ON webhook_deliveries
BEGIN
    SELECT provisioner_owns_webhook_deliveries();
END;

CREATE TRIGGER webhook_attempts_owned_insert BEFORE INSERT ON webhook_attempts
BEGIN
    SELECT provisioner_owns_webhook_attempts();
END;

CREATE TRIGGER webhook_attempts_owned_update BEFORE UPDATE ON webhook_attempts
BEGIN
    SELECT provisioner_owns_webhook_attempts();
END;

CREATE TRIGGER webhook_attempts_owned_delete BEFORE DELETE ON webhook_attempts
BEGIN
    SELECT provisioner_owns_webhook_attempts();
END;
