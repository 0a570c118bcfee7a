-- Witness collector, SQLite schema v1. Times are Unix milliseconds (UTC).
-- No table ever holds an IP address.

CREATE TABLE invites (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,          -- SHA-256 of the token, hex; the token is never stored
    note        TEXT,
    max_uses    INTEGER NOT NULL,
    uses        INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
);

CREATE TABLE probes (
    id            TEXT PRIMARY KEY,
    token_hash    TEXT NOT NULL UNIQUE,        -- SHA-256 of the token, hex
    invite_id     TEXT REFERENCES invites(id),
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    last_seen_at  INTEGER
);

CREATE TABLE measurements (
    id                TEXT PRIMARY KEY,        -- probe-assigned UUID: uploads are idempotent
    probe_id          TEXT NOT NULL REFERENCES probes(id),
    received_at       INTEGER NOT NULL,
    started_at        INTEGER NOT NULL,
    domain            TEXT NOT NULL,
    url               TEXT NOT NULL,
    category          TEXT,
    asn               INTEGER,
    country           TEXT,
    status            TEXT NOT NULL,
    method            TEXT,
    reason            TEXT NOT NULL,
    software_version  TEXT NOT NULL,
    body              TEXT NOT NULL            -- the record as uploaded (validated JSON)
);
CREATE INDEX measurements_site ON measurements(domain, asn, started_at);
CREATE INDEX measurements_network ON measurements(asn, started_at);
CREATE INDEX measurements_started ON measurements(started_at);
CREATE INDEX measurements_received ON measurements(received_at);

CREATE TABLE events (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,           -- new_block | shutdown
    domain            TEXT NOT NULL DEFAULT '',-- '' for shutdowns (NULLs would defeat the unique index)
    asn               INTEGER NOT NULL,
    method            TEXT NOT NULL DEFAULT '',-- '' for shutdowns
    country           TEXT,
    category          TEXT,
    started_at        INTEGER NOT NULL,
    ended_at          INTEGER,                 -- NULL while open
    open_decided_at   INTEGER NOT NULL,
    close_decided_at  INTEGER,
    evidence          TEXT NOT NULL,
    end_evidence      TEXT,
    created_at        INTEGER NOT NULL
);
-- Exactly one open event per key, enforced by the database.
CREATE UNIQUE INDEX events_one_open ON events(kind, domain, asn, method) WHERE ended_at IS NULL;
CREATE INDEX events_key ON events(kind, domain, asn, method, open_decided_at);
CREATE INDEX events_started ON events(started_at);

-- Durable webhook outbox, written in the same transaction as the event change.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id         TEXT NOT NULL REFERENCES events(id),
    transition       TEXT NOT NULL,            -- new_block | unblock | shutdown | shutdown_end
    url              TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    delivered_at     INTEGER,
    abandoned_at     INTEGER,
    last_error       TEXT
);
CREATE INDEX outbox_due ON outbox(next_attempt_at) WHERE delivered_at IS NULL AND abandoned_at IS NULL;
