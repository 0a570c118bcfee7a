-- Witness collector, SQLite schema v7: who counts in the quorum (issue 20).
--
-- A probe counts towards events only once established: registered long enough ago and with
-- uploads in enough distinct hours of arrival (aggregation.probe_min_age, probe_min_hours;
-- src/events.rs). probe_hours already holds one row per hour, network and probe; this index
-- lets the evaluation count one probe's distinct hours without scanning every probe's.
CREATE INDEX probe_hours_probe ON probe_hours (probe_id, hour);
