-- Witness collector, PostgreSQL schema v7: who counts in the quorum (issue 20). Same index as
-- migrations/sqlite/0007_probe_history.sql: one probe's distinct hours of upload, counted
-- without scanning every probe's.
CREATE INDEX probe_hours_probe ON probe_hours (probe_id, hour);
