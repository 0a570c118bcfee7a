-- Witness collector, SQLite schema v4: times are Unix microseconds (UTC), as in the PostgreSQL
-- store since its v4, so one store layer (src/store/sql.rs) reads and writes both alike.
-- Milliseconds times 1000: nothing is lost, and later records keep their sub-millisecond part.
UPDATE invites SET created_at = created_at * 1000, expires_at = expires_at * 1000,
                   revoked_at = revoked_at * 1000;
UPDATE probes SET created_at = created_at * 1000, revoked_at = revoked_at * 1000,
                  last_seen_at = last_seen_at * 1000;
UPDATE measurements SET received_at = received_at * 1000, started_at = started_at * 1000;
UPDATE events SET started_at = started_at * 1000, ended_at = ended_at * 1000,
                  open_decided_at = open_decided_at * 1000,
                  close_decided_at = close_decided_at * 1000, created_at = created_at * 1000;
UPDATE outbox SET created_at = created_at * 1000, next_attempt_at = next_attempt_at * 1000,
                  delivered_at = delivered_at * 1000, abandoned_at = abandoned_at * 1000;
UPDATE latest_verdicts SET started_at = started_at * 1000;
UPDATE blocked_methods SET last_at = last_at * 1000;
UPDATE probe_hours SET hour = hour * 1000, last_received_at = last_received_at * 1000,
                       last_started_at = last_started_at * 1000;
