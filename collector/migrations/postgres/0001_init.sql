-- Witness collector, PostgreSQL schema v1 (PostgreSQL 14 or later). Times are timestamptz.
-- Same tables and rules as migrations/sqlite/0001_init.sql, for several collectors sharing one
-- database. No table ever holds an IP address.
--
-- Text that is sorted or compared is COLLATE "C": byte order, as in SQLite, whatever the
-- database's locale, and cheaper to compare.

CREATE TABLE invites (
    id          text COLLATE "C" PRIMARY KEY,
    token_hash  text COLLATE "C" NOT NULL UNIQUE,   -- SHA-256 of the token, hex; never the token
    note        text,
    max_uses    bigint NOT NULL,
    uses        bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    revoked_at  timestamptz
);

CREATE TABLE probes (
    id            text COLLATE "C" PRIMARY KEY,
    token_hash    text COLLATE "C" NOT NULL UNIQUE, -- SHA-256 of the token, hex
    invite_id     text COLLATE "C" REFERENCES invites(id),
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    last_seen_at  timestamptz
);

-- Idempotency. A unique index on a partitioned table must include the partition key, so the
-- measurements themselves cannot be unique by id alone: this table is. An upload inserts the
-- ids first (ON CONFLICT DO NOTHING RETURNING id) and stores only the records whose id was new,
-- in the same transaction; a concurrent upload of the same id waits on the index entry and
-- then finds it taken. Ids need to be kept only as long as a record can still be accepted
-- ([ingest] max_age): prune older ones with
--   DELETE FROM measurement_ids WHERE started_at < now() - interval '31 days';
CREATE TABLE measurement_ids (
    id          uuid PRIMARY KEY,
    started_at  timestamptz NOT NULL
);
CREATE INDEX measurement_ids_started ON measurement_ids (started_at);

-- Partitioned by the measurements' own start time, one partition per calendar month (UTC),
-- named measurements_pYYYYMM and created on demand by the collector. Retention is dropping a
-- partition: DROP TABLE measurements_p202401; (or DETACH PARTITION ... CONCURRENTLY to archive).
CREATE TABLE measurements (
    id                uuid NOT NULL,               -- probe-assigned; unique via measurement_ids
    probe_id          text COLLATE "C" NOT NULL REFERENCES probes(id),
    received_at       timestamptz NOT NULL,
    started_at        timestamptz NOT NULL,
    domain            text COLLATE "C" NOT NULL,
    url               text NOT NULL,
    category          text COLLATE "C",
    asn               bigint,
    country           text COLLATE "C",
    status            text COLLATE "C" NOT NULL,
    method            text COLLATE "C",
    reason            text NOT NULL,
    software_version  text NOT NULL,
    body              text NOT NULL                -- the record as uploaded (validated JSON)
) PARTITION BY RANGE (started_at);
CREATE INDEX measurements_site ON measurements (domain, asn, started_at);
CREATE INDEX measurements_network ON measurements (asn, started_at);
CREATE INDEX measurements_started ON measurements (started_at);
-- Arrival order is insertion order: a BRIN index is tiny and enough for "uploaded since".
CREATE INDEX measurements_received ON measurements USING brin (received_at);

CREATE TABLE events (
    id                text COLLATE "C" PRIMARY KEY,
    kind              text COLLATE "C" NOT NULL,     -- new_block | shutdown
    domain            text COLLATE "C" NOT NULL DEFAULT '', -- '' for shutdowns
    asn               bigint NOT NULL,
    method            text COLLATE "C" NOT NULL DEFAULT '', -- '' for shutdowns
    country           text COLLATE "C",
    category          text COLLATE "C",
    started_at        timestamptz NOT NULL,
    ended_at          timestamptz,                  -- NULL while open
    open_decided_at   timestamptz NOT NULL,
    close_decided_at  timestamptz,
    evidence          text NOT NULL,
    end_evidence      text,
    created_at        timestamptz NOT NULL
);
-- Exactly one open event per key, enforced by the database whichever collector writes.
CREATE UNIQUE INDEX events_one_open ON events (kind, domain, asn, method) WHERE ended_at IS NULL;
CREATE INDEX events_key ON events (kind, domain, asn, method, open_decided_at);
CREATE INDEX events_started ON events (started_at);

-- Durable webhook outbox, written in the same transaction as the event change. Collectors claim
-- due rows with FOR UPDATE SKIP LOCKED and a lease (next_attempt_at), so each row is delivered
-- by one of them at a time.
CREATE TABLE outbox (
    id               bigserial PRIMARY KEY,
    event_id         text COLLATE "C" NOT NULL REFERENCES events(id),
    transition       text NOT NULL,                 -- new_block | unblock | shutdown | shutdown_end
    url              text NOT NULL,
    created_at       timestamptz NOT NULL,
    attempts         bigint NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL,
    delivered_at     timestamptz,
    abandoned_at     timestamptz,
    last_error       text
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND abandoned_at IS NULL;
