-- Whether the hard fallback of the action in flight (a power-off after a graceful shutdown
-- timed out, a reset after a graceful reboot) was sent: a typed column instead of marker
-- strings in pending_action_id.
ALTER TABLE instances ADD COLUMN pending_hard INTEGER NOT NULL DEFAULT 0
    CHECK (pending_hard IN (0, 1));

UPDATE instances SET pending_hard = 1, pending_action_id = NULL
 WHERE pending_action_id = 'hard-power-off';
UPDATE instances SET pending_hard = 1, pending_action_id = substr(pending_action_id, 6)
 WHERE pending_action_id LIKE 'hard:%';
