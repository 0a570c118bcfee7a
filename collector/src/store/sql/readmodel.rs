//! The query side of the read model: reads of the tables kept current on ingest
//! (`latest_verdicts`, `probe_hours`, `blocked_methods`), whose cost follows the number of
//! series, not of measurements, and of the open shutdown events. The rules that keep the tables
//! are in [`crate::readmodel::delta`].

use async_trait::async_trait;

use super::*;

#[async_trait]
impl<S: SqlStore> ReadModelStore for S {
    async fn open_shutdowns(&self) -> StoreResult<Vec<OpenShutdown>> {
        let q = S::query(
            "SELECT asn, country FROM events WHERE kind = 'shutdown' AND ended_at IS NULL \
             ORDER BY asn",
        );
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(OpenShutdown {
                    asn: r.asn("asn")?,
                    country: r.text("country")?,
                })
            })
            .collect()
    }

    async fn recent_sites(&self, since: DateTime<Utc>) -> StoreResult<Vec<RecentSite>> {
        let mut q = S::query(
            "SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, \
             MAX(started_at) AS latest FROM latest_verdicts \
             WHERE started_at >= ? GROUP BY domain, asn",
        );
        q.arg(since);
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(RecentSite {
                    domain: r.string("domain")?,
                    asn: r.asn("asn")?,
                    country: r.text("country")?,
                    category: r.text("category")?,
                    latest: r.time("latest")?,
                })
            })
            .collect()
    }

    async fn recent_networks(&self, since: DateTime<Utc>) -> StoreResult<Vec<RecentNetwork>> {
        let mut q = S::query(
            "SELECT asn, MAX(NULLIF(country, '')) AS country, MAX(last_started_at) AS latest \
             FROM probe_hours WHERE hour >= ? AND asn >= 0 AND last_started_at >= ? \
             GROUP BY asn",
        );
        q.arg(hour_of(since) - TimeDelta::hours(1)).arg(since);
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(RecentNetwork {
                    asn: r.asn("asn")?,
                    country: r.text("country")?,
                    latest: r.time("latest")?,
                })
            })
            .collect()
    }

    async fn latest_groups(&self, f: &Filter) -> StoreResult<Vec<LatestGroup>> {
        let mut q = S::query(
            "SELECT domain, asn, MAX(country) AS country, MAX(category) AS category, status, \
             method, COUNT(*) AS probes, MAX(started_at) AS last FROM latest_verdicts WHERE 1 = 1",
        );
        let f = Filter {
            until: None,
            status: None,
            ..f.clone()
        };
        push_filters(&mut q, &f, "started_at");
        // Grouped and ordered as the index `latest_verdicts_series` is (migration 0005), which
        // holds every column read: one scan of the index, no sort, no table access.
        q.push(" GROUP BY domain, asn, status, method ORDER BY domain, asn, status, method");
        self.all(&q)
            .await?
            .iter()
            .map(latest_group_from_row)
            .collect()
    }

    async fn place_groups(&self, f: &Filter) -> StoreResult<Vec<PlaceGroup>> {
        // The partial index `latest_verdicts_censor` (migration 0006) holds the located rows.
        let mut q = S::query(
            "SELECT domain, asn, CAST(censor_hop AS BIGINT) AS hop, censor_asn, \
             COUNT(*) AS probes, CAST(MAX(censor_run) AS BIGINT) AS run FROM latest_verdicts \
             WHERE censor_hop IS NOT NULL",
        );
        let f = Filter {
            until: None,
            status: None,
            ..f.clone()
        };
        push_filters(&mut q, &f, "started_at");
        // Ordered as grouped (and the hop not aliased to its column's name), so the index's
        // order serves both: one scan of it, no sort.
        q.push(
            " GROUP BY domain, asn, censor_hop, censor_asn \
             ORDER BY domain, asn, censor_hop, censor_asn",
        );
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok(PlaceGroup {
                    domain: r.string("domain")?,
                    asn: r.asn("asn")?,
                    place: CensorPlace {
                        hop: r
                            .opt_hop("hop")?
                            .ok_or_else(|| StoreError::Corrupt("censor_hop is NULL".into()))?,
                        asn: r.opt_asn("censor_asn")?,
                    },
                    probes: r.count("probes")?,
                    run: r.count("run")?,
                })
            })
            .collect()
    }

    async fn blocked_methods_seen(
        &self,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<(String, u32, Method)>> {
        let mut q = S::query("SELECT domain, asn, method FROM blocked_methods WHERE last_at >= ?");
        q.arg(since);
        self.all(&q)
            .await?
            .iter()
            .map(|r| Ok((r.string("domain")?, r.asn("asn")?, r.parsed("method")?)))
            .collect()
    }

    async fn probe_networks(&self, f: &Filter) -> StoreResult<Vec<ProbeNetworkRow>> {
        let mut q = S::query(
            "SELECT asn, country, COUNT(DISTINCT probe_id) AS probes, \
             CAST(SUM(measurements) AS BIGINT) AS n, MAX(last_received_at) AS last \
             FROM probe_hours WHERE 1 = 1",
        );
        // Hours overlapping [since, until].
        if let Some(s) = f.since {
            q.push(" AND hour > ").bind(s - TimeDelta::hours(1));
        }
        if let Some(u) = f.until {
            q.push(" AND hour <= ").bind(u);
        }
        if let Some(a) = f.asn {
            q.push(" AND asn = ").bind(a);
        }
        if let Some(c) = &f.country {
            q.push(" AND country = ").bind(c);
        }
        q.push(" GROUP BY asn, country ORDER BY asn, country LIMIT ")
            .bind(f.limit);
        self.all(&q)
            .await?
            .iter()
            .map(|r| {
                let last = r.num("last")?;
                let asn = r.num("asn")?;
                let country = r.string("country")?;
                Ok(ProbeNetworkRow {
                    asn: (asn >= 0).then(|| asn_of(asn)).transpose()?,
                    country: (!country.is_empty()).then_some(country),
                    probes: r.count("probes")?,
                    measurements: r.count("n")?,
                    // Hour precision: enough to see a network's activity, too coarse to
                    // follow one volunteer's habits.
                    last_seen: time_of(last - last.rem_euclid(HOUR_US))?,
                })
            })
            .collect()
    }

    async fn read_model_rows(&self, since: DateTime<Utc>) -> StoreResult<ReadModelRows> {
        let mut q = S::query(
            "SELECT domain, asn, probe_id, started_at, measurement_id, status, method, category, \
             country, CAST(censor_hop AS BIGINT) AS hop, censor_asn, \
             CAST(censor_run AS BIGINT) AS run FROM latest_verdicts WHERE started_at >= ?",
        );
        q.arg(since);
        let latest = self
            .all(&q)
            .await?
            .iter()
            .map(|r| {
                let censor = match r.opt_hop("hop")? {
                    Some(hop) => Some(CensorPlace {
                        hop,
                        asn: r.opt_asn("censor_asn")?,
                    }),
                    None => None,
                };
                Ok(LatestVerdictRow {
                    domain: r.string("domain")?,
                    asn: r.asn("asn")?,
                    probe_id: r.string("probe_id")?,
                    started_at: r.time("started_at")?,
                    measurement_id: r.string("measurement_id")?,
                    status: r.parsed("status")?,
                    method: r.method("method")?,
                    category: r.text("category")?,
                    country: r.text("country")?,
                    censor,
                    censor_run: r.count("run")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let mut q =
            S::query("SELECT domain, asn, method, last_at FROM blocked_methods WHERE last_at >= ?");
        q.arg(since);
        let blocked = self
            .all(&q)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.string("domain")?,
                    r.asn("asn")?,
                    r.parsed("method")?,
                    r.time("last_at")?,
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        // Hours overlapping [since, now], as probe_networks reads them.
        let mut q = S::query(
            "SELECT asn, country, probe_id, MAX(hour) AS hour FROM probe_hours WHERE hour > ? \
             GROUP BY asn, country, probe_id",
        );
        q.arg(since - TimeDelta::hours(1));
        let hours = self
            .all(&q)
            .await?
            .iter()
            .map(|r| {
                let asn = r.num("asn")?;
                let country = r.string("country")?;
                Ok(ProbeHourRow {
                    asn: (asn >= 0).then(|| asn_of(asn)).transpose()?,
                    country: (!country.is_empty()).then_some(country),
                    probe_id: r.string("probe_id")?,
                    hour: r.time("hour")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(ReadModelRows {
            latest,
            blocked,
            hours,
        })
    }
}
