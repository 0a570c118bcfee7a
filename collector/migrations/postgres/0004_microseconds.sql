-- Witness collector, PostgreSQL schema v4: times are bigint Unix microseconds (UTC), as in the
-- SQLite store since its v4, so one store layer (src/store/sql.rs) reads and writes both
-- alike. Microseconds are timestamptz's own resolution: the conversion loses nothing.
--
-- To read them in SQL: to_timestamp(started_at / 1e6); a bound:
--   started_at >= (extract(epoch FROM now() - interval '6 hours') * 1e6)::bigint
--
-- The partition key of `measurements` cannot change type in place, so each month's partition
-- is detached, converted and attached again to a new parent with the same name, columns and
-- indexes (the partitions' own indexes are rebuilt by the conversion and adopted by the new
-- parent's, not built twice). This rewrites every table once, in this one transaction.

CREATE FUNCTION witness_us(t timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT (extract(epoch FROM t) * 1000000)::bigint $$;

ALTER TABLE invites
    ALTER COLUMN created_at TYPE bigint USING witness_us(created_at),
    ALTER COLUMN expires_at TYPE bigint USING witness_us(expires_at),
    ALTER COLUMN revoked_at TYPE bigint USING witness_us(revoked_at);
ALTER TABLE probes
    ALTER COLUMN created_at TYPE bigint USING witness_us(created_at),
    ALTER COLUMN revoked_at TYPE bigint USING witness_us(revoked_at),
    ALTER COLUMN last_seen_at TYPE bigint USING witness_us(last_seen_at);
ALTER TABLE measurement_ids
    ALTER COLUMN started_at TYPE bigint USING witness_us(started_at);
ALTER TABLE events
    ALTER COLUMN started_at TYPE bigint USING witness_us(started_at),
    ALTER COLUMN ended_at TYPE bigint USING witness_us(ended_at),
    ALTER COLUMN open_decided_at TYPE bigint USING witness_us(open_decided_at),
    ALTER COLUMN close_decided_at TYPE bigint USING witness_us(close_decided_at),
    ALTER COLUMN created_at TYPE bigint USING witness_us(created_at);
ALTER TABLE outbox
    ALTER COLUMN created_at TYPE bigint USING witness_us(created_at),
    ALTER COLUMN next_attempt_at TYPE bigint USING witness_us(next_attempt_at),
    ALTER COLUMN delivered_at TYPE bigint USING witness_us(delivered_at),
    ALTER COLUMN abandoned_at TYPE bigint USING witness_us(abandoned_at);
ALTER TABLE latest_verdicts
    ALTER COLUMN started_at TYPE bigint USING witness_us(started_at);
ALTER TABLE blocked_methods
    ALTER COLUMN last_at TYPE bigint USING witness_us(last_at);
ALTER TABLE probe_hours
    ALTER COLUMN hour TYPE bigint USING witness_us(hour),
    ALTER COLUMN last_received_at TYPE bigint USING witness_us(last_received_at),
    ALTER COLUMN last_started_at TYPE bigint USING witness_us(last_started_at);

CREATE TABLE witness_v4_partitions (name text PRIMARY KEY, lo bigint, hi bigint);

DO $$
DECLARE
    p record;
    first timestamptz;
BEGIN
    FOR p IN SELECT c.relname::text AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'measurements'::regclass ORDER BY 1 LOOP
        IF p.name !~ '^measurements_p[0-9]{6}$' THEN
            RAISE EXCEPTION 'partition % of measurements is not named measurements_pYYYYMM, so '
                'its month is unknown: rename it (or detach it) and start the collector again',
                p.name;
        END IF;
        first := make_timestamptz(substr(p.name, 15, 4)::int, substr(p.name, 19, 2)::int, 1,
                                  0, 0, 0, 'UTC');
        INSERT INTO witness_v4_partitions
            VALUES (p.name, witness_us(first), witness_us(first + interval '1 month'));
        EXECUTE format('ALTER TABLE measurements DETACH PARTITION %I', p.name);
    END LOOP;
END $$;

DROP TABLE measurements;

-- As in v1, with bigint times, and the (started_at, id) index of v3.
CREATE TABLE measurements (
    id                uuid NOT NULL,
    probe_id          text COLLATE "C" NOT NULL REFERENCES probes(id),
    received_at       bigint NOT NULL,
    started_at        bigint NOT NULL,
    domain            text COLLATE "C" NOT NULL,
    url               text NOT NULL,
    category          text COLLATE "C",
    asn               bigint,
    country           text COLLATE "C",
    status            text COLLATE "C" NOT NULL,
    method            text COLLATE "C",
    reason            text NOT NULL,
    software_version  text NOT NULL,
    body              text NOT NULL
) PARTITION BY RANGE (started_at);
CREATE INDEX measurements_site ON measurements (domain, asn, started_at);
CREATE INDEX measurements_network ON measurements (asn, started_at);
CREATE INDEX measurements_started ON measurements (started_at, id);
CREATE INDEX measurements_received ON measurements USING brin (received_at);

DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT * FROM witness_v4_partitions ORDER BY name LOOP
        EXECUTE format('ALTER TABLE %I ALTER COLUMN received_at TYPE bigint '
                       'USING witness_us(received_at), ALTER COLUMN started_at TYPE bigint '
                       'USING witness_us(started_at)', p.name);
        -- The check lets ATTACH skip its scan of the rows; it is dropped once attached.
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT witness_v4_bounds '
                       'CHECK (started_at >= %s AND started_at < %s)', p.name, p.lo, p.hi);
        EXECUTE format('ALTER TABLE measurements ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                       p.name, p.lo, p.hi);
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT witness_v4_bounds', p.name);
    END LOOP;
END $$;

DROP TABLE witness_v4_partitions;
DROP FUNCTION witness_us(timestamptz);
