-- Tokens of the HTTP API (`provisioner tokens create|list|revoke`). Only a SHA-256 of each
-- token is kept; the token itself is printed once, when it is made.
CREATE TABLE api_tokens (
    name         TEXT    PRIMARY KEY
                 CHECK (length(name) BETWEEN 1 AND 64
                        AND name NOT GLOB '*[^a-z0-9_-]*'),
    scope        TEXT    NOT NULL CHECK (scope IN ('read', 'billing', 'admin')),
    token_hash   TEXT    NOT NULL UNIQUE,
    created_by   TEXT    NOT NULL,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_used_at TEXT,
    revoked_at   TEXT
);

CREATE TRIGGER api_tokens_owned_insert BEFORE INSERT ON api_tokens
BEGIN
    SELECT provisioner_owns_api_tokens();
END;

CREATE TRIGGER api_tokens_owned_update BEFORE UPDATE ON api_tokens
BEGIN
    SELECT provisioner_owns_api_tokens();
END;

CREATE TRIGGER api_tokens_owned_delete BEFORE DELETE ON api_tokens
BEGIN
    SELECT provisioner_owns_api_tokens();
END;
