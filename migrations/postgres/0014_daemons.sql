-- The daemons that take leases under an owner name held through a session advisory lock (see
-- `provisioner run --owner`). A survivor that can take the lock of a name listed here proves
-- that daemon gone and takes its leases back at once instead of waiting for them to run out.
-- Daemons of earlier versions are not listed, so nothing of theirs is ever taken early.
CREATE TABLE daemons (
    owner      TEXT        PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
