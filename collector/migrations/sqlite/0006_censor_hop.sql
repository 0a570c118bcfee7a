-- Witness collector, SQLite schema v6: where the censor sits (issue 13).
--
-- Probes localise a block (the record's `path`): the censor's hop, counted from the probe, and
-- its autonomous system when known. The collector keeps both per measurement and per probe's
-- latest verdict, and aggregates them per site and network (src/aggregate.rs, agreed_place).
--
-- measurements: the event rule reads the place from the series of a site (src/events.rs).
-- Back-filled from the stored records of the last 7 days only (more than any aggregation
-- window): older records are never evaluated again, and reading every stored body would make
-- the upgrade of a large database slow. Records without `path` (all before the probes learned
-- to localise) stay NULL.
ALTER TABLE measurements ADD COLUMN censor_hop INTEGER;
ALTER TABLE measurements ADD COLUMN censor_asn INTEGER;

-- latest_verdicts: the status API, /metrics and the site page read the place from here.
-- censor_run counts the probe's consecutive latest verdicts naming the same place (the
-- single-probe rule needs min_measurements of them); 0 when not located.
ALTER TABLE latest_verdicts ADD COLUMN censor_hop INTEGER;
ALTER TABLE latest_verdicts ADD COLUMN censor_asn INTEGER;
ALTER TABLE latest_verdicts ADD COLUMN censor_run INTEGER NOT NULL DEFAULT 0;

-- The censor's ASN is the probe's `PathObservation::censor_asn`: the ASN of the censor's hop,
-- or of the last router before it that has one.
UPDATE measurements SET
    censor_hop = json_extract(body, '$.path.censor_hop'),
    censor_asn = (SELECT json_extract(h.value, '$.asn') FROM json_each(body, '$.path.hops') h
                  WHERE json_extract(h.value, '$.asn') IS NOT NULL
                    AND json_extract(h.value, '$.ttl') <= json_extract(body, '$.path.censor_hop')
                  ORDER BY json_extract(h.value, '$.ttl') DESC LIMIT 1)
WHERE status = 'blocked'
  AND started_at >= (CAST(strftime('%s', 'now') AS INTEGER) - 7 * 86400) * 1000000
  AND json_extract(body, '$.path.censor_hop') IS NOT NULL;

-- One row per probe, site and network: cheap, so every latest verdict is back-filled.
UPDATE latest_verdicts SET
    censor_hop = (SELECT json_extract(m.body, '$.path.censor_hop') FROM measurements m
                  WHERE m.id = latest_verdicts.measurement_id),
    censor_asn = (SELECT json_extract(h.value, '$.asn')
                  FROM measurements m, json_each(m.body, '$.path.hops') h
                  WHERE m.id = latest_verdicts.measurement_id
                    AND json_extract(h.value, '$.asn') IS NOT NULL
                    AND json_extract(h.value, '$.ttl') <= json_extract(m.body, '$.path.censor_hop')
                  ORDER BY json_extract(h.value, '$.ttl') DESC LIMIT 1)
WHERE status = 'blocked';
UPDATE latest_verdicts SET censor_run = 1 WHERE censor_hop IS NOT NULL;

-- The place reads: located verdicts only (a small share of the rows), with every column read.
CREATE INDEX latest_verdicts_censor ON latest_verdicts (domain, asn, censor_hop, censor_asn,
                                                        started_at, censor_run)
    WHERE censor_hop IS NOT NULL;

-- The last place the probes agreed on per site and network, as the event evaluation decided it
-- (decided_at: the evaluation time, which only grows): a block_moved event is raised when a
-- newly agreed place differs from it while the site is still blocked. Filled as blocks are
-- evaluated; nothing to back-fill.
CREATE TABLE censor_places (
    domain      TEXT NOT NULL,
    asn         INTEGER NOT NULL,
    censor_hop  INTEGER NOT NULL,
    censor_asn  INTEGER,
    agreeing    INTEGER NOT NULL,
    decided_at  INTEGER NOT NULL,
    PRIMARY KEY (domain, asn)
) WITHOUT ROWID;
