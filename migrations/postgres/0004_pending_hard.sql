-- Whether the hard fallback of the action in flight (a power-off after a graceful shutdown
-- timed out, a reset after a graceful reboot) was sent: a typed column instead of marker
-- strings in pending_action_id.
ALTER TABLE instances ADD COLUMN pending_hard BOOLEAN NOT NULL DEFAULT false;

UPDATE instances SET pending_hard = true, pending_action_id = NULL
 WHERE pending_action_id = 'hard-power-off';
UPDATE instances SET pending_hard = true, pending_action_id = substr(pending_action_id, 6)
 WHERE pending_action_id LIKE 'hard:%';
