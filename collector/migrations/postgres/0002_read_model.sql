-- Witness collector, PostgreSQL schema v2: the read model (see src/readmodel.rs). Same tables
-- and rules as migrations/sqlite/0002_read_model.sql.
--
-- Kept on ingest, in the same transaction as the measurements, so that `/metrics`, the status
-- API, the status page and the event sweep read a few rows per series instead of every
-- measurement in the window. Every update is idempotent (a duplicate upload stores nothing, so
-- it changes nothing here) and monotonic (an older, back-filled record never replaces a newer
-- one; concurrent writers of one row are ordered by its row lock, and the condition of the
-- upsert is checked against the newest version). Built below from the measurements already
-- stored, so an existing database gets it on upgrade.

-- Each probe's latest verdict per site and network (offline verdicts excluded). The
-- measurement id is kept as text: its order is the uuid's, the tie-break of v1's window query.
CREATE TABLE latest_verdicts (
    domain          text COLLATE "C" NOT NULL,
    asn             bigint NOT NULL,
    probe_id        text COLLATE "C" NOT NULL,
    started_at      timestamptz NOT NULL,
    measurement_id  text COLLATE "C" NOT NULL,
    status          text COLLATE "C" NOT NULL,
    method          text COLLATE "C",
    category        text COLLATE "C",
    country         text COLLATE "C",
    PRIMARY KEY (domain, asn, probe_id)
);
CREATE INDEX latest_verdicts_started ON latest_verdicts (started_at);

-- Every blocking method seen per site and network, with the latest time it was seen.
CREATE TABLE blocked_methods (
    domain   text COLLATE "C" NOT NULL,
    asn      bigint NOT NULL,
    method   text COLLATE "C" NOT NULL,
    last_at  timestamptz NOT NULL,
    PRIMARY KEY (domain, asn, method)
);
CREATE INDEX blocked_methods_last ON blocked_methods (last_at);

-- Uploads per hour of arrival, network and probe. asn -1 and country '' stand for "not
-- claimed".
CREATE TABLE probe_hours (
    hour              timestamptz NOT NULL,
    asn               bigint NOT NULL,
    country           text COLLATE "C" NOT NULL,
    probe_id          text COLLATE "C" NOT NULL,
    measurements      bigint NOT NULL,
    last_received_at  timestamptz NOT NULL,
    last_started_at   timestamptz NOT NULL,
    PRIMARY KEY (hour, asn, country, probe_id)
);

INSERT INTO latest_verdicts (domain, asn, probe_id, started_at, measurement_id, status, method,
                             category, country)
SELECT DISTINCT ON (domain, asn, probe_id) domain, asn, probe_id, started_at, id::text, status,
       method, category, country
FROM measurements WHERE asn IS NOT NULL AND status <> 'offline'
ORDER BY domain, asn, probe_id, started_at DESC, id DESC;

INSERT INTO blocked_methods (domain, asn, method, last_at)
SELECT domain, asn, method, MAX(started_at) FROM measurements
WHERE status = 'blocked' AND method IS NOT NULL AND asn IS NOT NULL
GROUP BY domain, asn, method;

INSERT INTO probe_hours (hour, asn, country, probe_id, measurements, last_received_at,
                         last_started_at)
SELECT date_bin('1 hour', received_at, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
       COALESCE(asn, -1), COALESCE(country, ''), probe_id,
       COUNT(*), MAX(received_at), MAX(started_at)
FROM measurements GROUP BY 1, 2, 3, 4;
