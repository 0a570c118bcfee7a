-- Witness collector, PostgreSQL schema v6: where the censor sits (issue 13). Same columns,
-- tables and rules as migrations/sqlite/0006_censor_hop.sql.
--
-- measurements: back-filled from the stored records of the last 7 days only (more than any
-- aggregation window): older records are never evaluated again, and reading every stored
-- body would make the upgrade of a large database slow. Adding nullable columns without a
-- default is a change of the catalogue only, also on the partitions.
ALTER TABLE measurements ADD COLUMN censor_hop smallint, ADD COLUMN censor_asn bigint;

ALTER TABLE latest_verdicts ADD COLUMN censor_hop smallint, ADD COLUMN censor_asn bigint,
    ADD COLUMN censor_run integer NOT NULL DEFAULT 0;

-- The censor's ASN is the probe's `PathObservation::censor_asn`: the ASN of the censor's hop,
-- or of the last router before it that has one.
UPDATE measurements m SET
    censor_hop = (m.body::jsonb #>> '{path,censor_hop}')::smallint,
    censor_asn = (SELECT (h ->> 'asn')::bigint
                  FROM jsonb_array_elements(m.body::jsonb #> '{path,hops}') h
                  WHERE h ? 'asn'
                    AND (h ->> 'ttl')::int <= (m.body::jsonb #>> '{path,censor_hop}')::int
                  ORDER BY (h ->> 'ttl')::int DESC LIMIT 1)
WHERE m.status = 'blocked'
  AND m.started_at >= (extract(epoch FROM now())::bigint - 7 * 86400) * 1000000
  AND m.body LIKE '%"censor_hop":%'
  AND (m.body::jsonb #>> '{path,censor_hop}') IS NOT NULL;

UPDATE latest_verdicts lv SET
    censor_hop = (m.body::jsonb #>> '{path,censor_hop}')::smallint,
    censor_asn = (SELECT (h ->> 'asn')::bigint
                  FROM jsonb_array_elements(m.body::jsonb #> '{path,hops}') h
                  WHERE h ? 'asn'
                    AND (h ->> 'ttl')::int <= (m.body::jsonb #>> '{path,censor_hop}')::int
                  ORDER BY (h ->> 'ttl')::int DESC LIMIT 1)
FROM measurements m
WHERE lv.status = 'blocked' AND m.id = lv.measurement_id::uuid AND m.started_at = lv.started_at
  AND m.body LIKE '%"censor_hop":%';
UPDATE latest_verdicts SET censor_run = 1 WHERE censor_hop IS NOT NULL;

CREATE INDEX latest_verdicts_censor ON latest_verdicts (domain, asn, censor_hop, censor_asn,
                                                        started_at, censor_run)
    WHERE censor_hop IS NOT NULL;

CREATE TABLE censor_places (
    domain      text COLLATE "C" NOT NULL,
    asn         bigint NOT NULL,
    censor_hop  smallint NOT NULL,
    censor_asn  bigint,
    agreeing    bigint NOT NULL,
    decided_at  bigint NOT NULL,
    PRIMARY KEY (domain, asn)
);
