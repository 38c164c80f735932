-- PostgreSQL lists its daemons (its migration 14) so that a survivor can take a dead one's
-- leases back at once; on SQLite a daemon restarted under its owner name does that. Nothing
-- changes here; the version keeps both engines in step.
SELECT 1;
