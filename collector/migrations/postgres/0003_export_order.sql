-- Witness collector, PostgreSQL schema v3: the export pages by (started_at, id) (keyset paging,
-- GET /api/v1/measurements), so the time index carries the id too: a page is one range scan,
-- never a sort of everything after the cursor. It still serves every query on started_at.
DROP INDEX measurements_started;
CREATE INDEX measurements_started ON measurements (started_at, id);
