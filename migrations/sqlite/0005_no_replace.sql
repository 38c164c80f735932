-- SQLite's REPLACE conflict resolution (INSERT OR REPLACE, REPLACE INTO, UPDATE OR REPLACE)
-- deletes the conflicting row without firing delete triggers unless the client turned
-- recursive triggers on, which billing's client need not do. The conflict path is made
-- impossible instead: ids are never reused and never change.
CREATE TRIGGER instances_no_replace BEFORE INSERT ON instances
WHEN EXISTS (SELECT 1 FROM instances WHERE id = NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'an existing instance cannot be replaced (INSERT OR REPLACE, REPLACE INTO): rows are never deleted; update its billing columns instead');
END;

CREATE TRIGGER instances_id_fixed BEFORE UPDATE OF id ON instances
WHEN NEW.id IS NOT OLD.id
BEGIN
    SELECT RAISE(ABORT, 'an instance''s id never changes');
END;

CREATE TRIGGER instance_transitions_no_replace BEFORE INSERT ON instance_transitions
WHEN EXISTS (SELECT 1 FROM instance_transitions WHERE id = NEW.id)
BEGIN
    SELECT RAISE(ABORT, 'instance_transitions is append-only: an existing transition cannot be replaced');
END;
