-- Each audit event may carry a key made by the hub when the action happened, so that an event
-- written again (from the hub's audit spool, after an insert whose answer was lost in a
-- database outage) is stored once: `INSERT … ON CONFLICT (event_key) DO NOTHING`. Rows written
-- before this migration have none (NULLs do not collide). Adding a column is no UPDATE: the
-- append-only triggers do not fire.

ALTER TABLE audit_events ADD COLUMN event_key TEXT;

CREATE UNIQUE INDEX audit_events_event_key ON audit_events (event_key);
