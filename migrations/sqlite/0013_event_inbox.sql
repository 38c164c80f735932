-- PostgreSQL writes events through an inbox (its migration 13) so that its writers need not
-- queue on one lock until they commit; SQLite has one writer at a time, whose commits order
-- `events.id` by themselves. Nothing changes here; the version keeps both engines in step.
SELECT 1;
