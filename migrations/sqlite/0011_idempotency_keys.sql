-- The API's Idempotency-Key records: the first response to a key is kept (24 hours) and
-- replayed for a retry with the same request; keys are scoped to the token.
CREATE TABLE idempotency_keys (
    token_name  TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    -- running, done
    state       TEXT    NOT NULL CHECK (state IN ('running', 'done')),
    status      INTEGER,
    response    TEXT,
    location    TEXT,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at  TEXT    NOT NULL,
    PRIMARY KEY (token_name, key)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

CREATE TRIGGER idempotency_keys_owned_insert BEFORE INSERT ON idempotency_keys
BEGIN
    SELECT provisioner_owns_idempotency_keys();
END;

CREATE TRIGGER idempotency_keys_owned_update BEFORE UPDATE ON idempotency_keys
BEGIN
    SELECT provisioner_owns_idempotency_keys();
END;

CREATE TRIGGER idempotency_keys_owned_delete BEFORE DELETE ON idempotency_keys
BEGIN
    SELECT provisioner_owns_idempotency_keys();
END;
