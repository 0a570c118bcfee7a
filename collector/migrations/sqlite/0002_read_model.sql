-- Witness collector, SQLite schema v2: the read model (see src/readmodel.rs).
--
-- Kept on ingest, in the same transaction as the measurements, so that `/metrics`, the status
-- API, the status page and the event sweep read a few rows per series instead of every
-- measurement in the window. Every update is idempotent (a duplicate upload stores nothing, so
-- it changes nothing here) and monotonic (an older, back-filled record never replaces a newer
-- one). Built below from the measurements already stored, so an existing database gets it on
-- upgrade. Times are Unix milliseconds (UTC), as in v1.

-- Each probe's latest verdict per site and network (offline verdicts excluded: they say
-- nothing about a site; measurements without a network cannot be aggregated). Ties on
-- started_at are broken by the measurement id, as the window query of v1 did.
CREATE TABLE latest_verdicts (
    domain          TEXT NOT NULL,
    asn             INTEGER NOT NULL,
    probe_id        TEXT NOT NULL,
    started_at      INTEGER NOT NULL,
    measurement_id  TEXT NOT NULL,
    status          TEXT NOT NULL,
    method          TEXT,
    category        TEXT,
    country         TEXT,
    PRIMARY KEY (domain, asn, probe_id)
) WITHOUT ROWID;
CREATE INDEX latest_verdicts_started ON latest_verdicts(started_at);

-- Every blocking method seen per site and network, with the latest time it was seen: the
-- blocked-ratio gauge keeps a method's series (at 0) while it was seen within the window.
CREATE TABLE blocked_methods (
    domain   TEXT NOT NULL,
    asn      INTEGER NOT NULL,
    method   TEXT NOT NULL,
    last_at  INTEGER NOT NULL,
    PRIMARY KEY (domain, asn, method)
) WITHOUT ROWID;
CREATE INDEX blocked_methods_last ON blocked_methods(last_at);

-- Uploads per hour of arrival, network and probe: probes active per network, and the networks
-- the sweep re-evaluates. asn -1 and country '' stand for "not claimed" (NULLs would defeat the
-- primary key).
CREATE TABLE probe_hours (
    hour              INTEGER NOT NULL,        -- start of the hour of received_at
    asn               INTEGER NOT NULL,
    country           TEXT NOT NULL,
    probe_id          TEXT NOT NULL,
    measurements      INTEGER NOT NULL,
    last_received_at  INTEGER NOT NULL,
    last_started_at   INTEGER NOT NULL,
    PRIMARY KEY (hour, asn, country, probe_id)
) WITHOUT ROWID;

INSERT INTO latest_verdicts (domain, asn, probe_id, started_at, measurement_id, status, method,
                             category, country)
SELECT domain, asn, probe_id, started_at, id, status, method, category, country
FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY domain, asn, probe_id
                                   ORDER BY started_at DESC, id DESC) AS rn
      FROM measurements WHERE asn IS NOT NULL AND status <> 'offline')
WHERE rn = 1;

INSERT INTO blocked_methods (domain, asn, method, last_at)
SELECT domain, asn, method, MAX(started_at) FROM measurements
WHERE status = 'blocked' AND method IS NOT NULL AND asn IS NOT NULL
GROUP BY domain, asn, method;

INSERT INTO probe_hours (hour, asn, country, probe_id, measurements, last_received_at,
                         last_started_at)
SELECT (received_at / 3600000) * 3600000, COALESCE(asn, -1), COALESCE(country, ''), probe_id,
       COUNT(*), MAX(received_at), MAX(started_at)
FROM measurements GROUP BY 1, 2, 3, 4;
