-- Witness collector, SQLite schema v5: the index the gauges read. /metrics, the status API and the
-- status page group latest_verdicts by site, network, status and method (src/readmodel.rs); this
-- index holds every column they read, in that order, so the grouping is one scan of the index,
-- without a sort and without touching the table. It also serves the sweep's recent sites
-- (grouped by site and network), which is why the index on started_at alone goes: with a
-- window's worth of rows it selected nearly all of them anyway, and one index less keeps the
-- cost of an upsert the same.
DROP INDEX latest_verdicts_started;
CREATE INDEX latest_verdicts_series ON latest_verdicts (domain, asn, status, method, started_at,
                                                       country, category);
