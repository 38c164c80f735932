-- Tokens of the HTTP API (`provisioner tokens create|list|revoke`). Only a SHA-256 of each
-- token is kept; the token itself is printed once, when it is made. The billing role has no
-- grant on this table.
CREATE TABLE api_tokens (
    name         TEXT        PRIMARY KEY
                 CHECK (name ~ '^[a-z0-9_-]{1,64}$'),
    scope        TEXT        NOT NULL CHECK (scope IN ('read', 'billing', 'admin')),
    token_hash   TEXT        NOT NULL UNIQUE,
    created_by   TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
