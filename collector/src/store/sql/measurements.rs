//! The measurements themselves: the batch insert, the series the event rules evaluate, the
//! history and raw reads, the streamed export, and the period scan of the latest verdicts.

use async_trait::async_trait;

use super::*;

#[async_trait]
impl<S: SqlStore> MeasurementStore for S {
    async fn insert_measurements(
        &self,
        probe_id: &str,
        now: DateTime<Utc>,
        records: &[MeasurementRecord],
    ) -> StoreResult<Vec<bool>> {
        self.insert_batch(probe_id, now, records).await
    }

    async fn site_series(
        &self,
        domain: &str,
        asn: u32,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<Obs>> {
        let mut q = S::query(&format!(
            "SELECT {} FROM measurements \
             WHERE domain = ? AND asn = ? AND started_at > ? ORDER BY started_at, id",
            obs_columns(S::DIALECT)
        ));
        q.arg(domain).arg(asn).arg(since);
        self.all(&q).await?.iter().map(obs_from_row).collect()
    }

    async fn site_series_many(
        &self,
        keys: &[(String, u32)],
        since: DateTime<Utc>,
    ) -> StoreResult<HashMap<(String, u32), Vec<Obs>>> {
        let wanted: HashSet<&(String, u32)> = keys.iter().collect();
        let mut out: HashMap<(String, u32), Vec<Obs>> = HashMap::new();
        // In slices, far below SQLite's bound-parameter limit. The IN lists cross every
        // domain with every network of the slice (an upload comes from one network, so this
        // is exact in practice); rows of pairs not asked for are dropped.
        for part in keys.chunks(400) {
            let mut asns: Vec<u32> = part.iter().map(|(_, a)| *a).collect();
            asns.sort_unstable();
            asns.dedup();
            let mut q = S::query(&format!(
                "SELECT domain, asn, {} FROM measurements WHERE domain IN (",
                obs_columns(S::DIALECT)
            ));
            q.bind_list(part.iter().map(|(d, _)| d.as_str()))
                .push(") AND asn IN (")
                .bind_list(asns)
                .push(") AND started_at > ")
                .bind(since)
                .push(" ORDER BY domain, asn, started_at, id");
            for r in self.all(&q).await? {
                let key = (r.string("domain")?, r.asn("asn")?);
                if !wanted.contains(&key) {
                    continue;
                }
                out.entry(key).or_default().push(obs_from_row(&r)?);
            }
        }
        Ok(out)
    }

    async fn network_presence(&self, asn: u32, since: DateTime<Utc>) -> StoreResult<Vec<Presence>> {
        // One row per probe, minute and offline flag keeps this small for a busy network.
        let mut q = S::query(&format!(
            "SELECT probe_id, CAST(CASE WHEN status = 'offline' THEN 1 ELSE 0 END AS BIGINT) \
                    AS off, MIN(started_at) AS first_at, MAX(started_at) AS last_at, \
                    COUNT(*) AS n, MAX({}) AS sample \
             FROM measurements WHERE asn = ? AND started_at > ? \
             GROUP BY probe_id, off, started_at / 60000000",
            S::DIALECT.id_text("id")
        ));
        q.arg(asn).arg(since);
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(Presence {
                    probe: r.string("probe_id")?,
                    first_at: r.time("first_at")?,
                    last_at: r.time("last_at")?,
                    offline: r.num("off")? != 0,
                    count: r.count("n")?,
                    sample_id: r.string("sample")?,
                })
            })
            .collect()
    }

    async fn latest_groups_scan(&self, f: &Filter) -> StoreResult<Vec<LatestGroup>> {
        let mut q = S::query(
            "WITH ranked AS (SELECT domain, asn, country, category, status, method, started_at, \
             ROW_NUMBER() OVER (PARTITION BY domain, asn, probe_id \
                                ORDER BY started_at DESC, id DESC) AS rn \
             FROM measurements WHERE asn IS NOT NULL AND status <> 'offline'",
        );
        push_filters(&mut q, f, "started_at");
        q.push(
            ") SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, status, \
             method, COUNT(*) AS probes, MAX(started_at) AS last FROM ranked WHERE rn = 1 \
             GROUP BY domain, asn, status, method ORDER BY domain, asn",
        );
        self.all(&q)
            .await?
            .iter()
            .map(latest_group_from_row)
            .collect()
    }

    async fn history(&self, domain: &str, f: &Filter) -> StoreResult<Vec<HistoryRow>> {
        let mut q = S::query(&format!(
            "SELECT (started_at / {HOUR_US}) * {HOUR_US} AS hour, asn, country, status, method, \
             COUNT(*) AS n, COUNT(DISTINCT probe_id) AS probes FROM measurements WHERE domain = "
        ));
        q.bind(domain);
        let f = Filter {
            domain: None,
            ..f.clone()
        };
        push_filters(&mut q, &f, "started_at");
        // NULLS FIRST: SQLite's default, said for PostgreSQL, so both stores answer alike.
        q.push(
            " GROUP BY 1, asn, country, status, method \
             ORDER BY hour, asn NULLS FIRST, status LIMIT ",
        )
        .bind(f.limit);
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(HistoryRow {
                    hour: r.time("hour")?,
                    asn: r.opt_asn("asn")?,
                    country: r.text("country")?,
                    status: r.parsed::<Status>("status")?,
                    method: r.method("method")?,
                    measurements: r.count("n")?,
                    probes: r.count("probes")?,
                })
            })
            .collect()
    }

    async fn measurements(&self, f: &Filter) -> StoreResult<Vec<MeasurementRecord>> {
        let mut q = S::query(&format!(
            "SELECT {} FROM measurements WHERE 1 = 1",
            measurement_columns(S::DIALECT)
        ));
        push_filters(&mut q, f, "started_at");
        q.push(" ORDER BY started_at, id LIMIT ").bind(f.limit);
        self.all(&q)
            .await?
            .iter()
            .map(measurement_from_row)
            .collect()
    }

    async fn export_measurements(
        &self,
        f: &Filter,
        after: Option<Cursor>,
        limit: u32,
        out: tokio::sync::mpsc::Sender<MeasurementRecord>,
    ) -> StoreResult<()> {
        let mut q = S::query(&format!(
            "SELECT {} FROM measurements WHERE 1 = 1",
            measurement_columns(S::DIALECT)
        ));
        push_filters(&mut q, f, "started_at");
        if let Some(c) = after {
            // The first bound alone selects a range of the (started_at, id) index (and, on
            // PostgreSQL, prunes the partitions before it).
            q.push(" AND started_at >= ")
                .bind(c.started_at)
                .push(" AND (started_at > ")
                .bind(c.started_at)
                .push(" OR id > ")
                .bind(c.id.to_string())
                .push(S::DIALECT.id_param())
                .push(")");
        }
        q.push(" ORDER BY started_at, id LIMIT ").bind(limit);
        self.stream_measurements(&q, out).await
    }
}
