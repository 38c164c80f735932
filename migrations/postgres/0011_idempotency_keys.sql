-- The API's Idempotency-Key records: the first response to a key is kept (24 hours) and
-- replayed for a retry with the same request; keys are scoped to the token.
CREATE TABLE idempotency_keys (
    token_name  TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    fingerprint TEXT        NOT NULL,
    state       TEXT        NOT NULL CHECK (state IN ('running', 'done')),
    status      INTEGER,
    response    TEXT,
    location    TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (token_name, key)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
