//! Events: their states per key, opening and closing them as compare-and-set on the key's last
//! decision time, the censor place a site's block moved to, and the event list. Every change
//! queues its notifications in the same transaction ([`SqlStore::enqueue`]).

use async_trait::async_trait;

use super::*;

/// The open (or the ended) events of `f`, newest first, at most `limit`.
pub(super) async fn events_part<S: SqlStore>(
    s: &S,
    f: &Filter,
    open: bool,
    limit: u32,
) -> StoreResult<Vec<Event>> {
    let mut q = S::query(&format!(
        "SELECT {} FROM events WHERE 1 = 1",
        event_columns("")
    ));
    if let Some(k) = f.kind {
        q.push(" AND kind = ").bind(k.as_str());
    }
    let f_site = Filter {
        since: None,
        until: None,
        status: None,
        ..f.clone()
    };
    push_filters(&mut q, &f_site, "started_at");
    // Events overlapping [since, until].
    if let Some(since) = f.since {
        q.push(" AND (ended_at IS NULL OR ended_at >= ")
            .bind(since)
            .push(")");
    }
    if let Some(u) = f.until {
        q.push(" AND started_at <= ").bind(u);
    }
    q.push(if open {
        " AND ended_at IS NULL"
    } else {
        " AND ended_at IS NOT NULL"
    });
    q.push(" ORDER BY started_at DESC, id LIMIT ").bind(limit);
    s.all(&q).await?.iter().map(event_from_row).collect()
}

#[async_trait]
impl<S: SqlStore> EventStore for S {
    async fn event_states(
        &self,
        kind: EventKind,
        domain: Option<&str>,
        asn: u32,
    ) -> StoreResult<Vec<EventState>> {
        let mut q = S::query(&format!(
            "SELECT {} FROM events WHERE kind = ? AND domain = ? AND asn = ? GROUP BY method",
            event_state_columns(S::DIALECT)
        ));
        q.arg(kind.as_str()).arg(domain.unwrap_or("")).arg(asn);
        self.all(&q)
            .await?
            .iter()
            .map(event_state_from_row)
            .collect()
    }

    async fn block_states_many(
        &self,
        keys: &[(String, u32)],
    ) -> StoreResult<HashMap<(String, u32), Vec<EventState>>> {
        let wanted: HashSet<&(String, u32)> = keys.iter().collect();
        let mut out: HashMap<(String, u32), Vec<EventState>> = HashMap::new();
        for part in keys.chunks(400) {
            let mut q = S::query(&format!(
                "SELECT domain, asn, {} FROM events WHERE kind = 'new_block' AND domain IN (",
                event_state_columns(S::DIALECT)
            ));
            q.bind_list(part.iter().map(|(d, _)| d.as_str()))
                .push(") GROUP BY domain, asn, method");
            for r in self.all(&q).await? {
                let key = (r.string("domain")?, r.asn("asn")?);
                if !wanted.contains(&key) {
                    continue;
                }
                out.entry(key).or_default().push(event_state_from_row(&r)?);
            }
        }
        Ok(out)
    }

    async fn open_event(&self, ev: &NewEvent, urls: &[String]) -> StoreResult<Option<Event>> {
        let now = Utc::now();
        let d = S::DIALECT;
        let mut tx = self.begin().await?;
        S::lock_event_key(&mut tx, &ev.key).await?;
        // Inserted only if the key's last decision is still the one the decision was computed
        // from (checked in the statement itself: under SQLite's write lock, and after the key's
        // lock on PostgreSQL); the partial unique index `events_one_open` backs up the
        // one-open-event rule.
        let mut q = S::query(&format!(
            "INSERT INTO events (id, kind, domain, asn, method, country, category, started_at, \
             open_decided_at, evidence, created_at) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE ({}) {} ? ON CONFLICT DO NOTHING",
            floor_of_key(d),
            d.same()
        ));
        q.arg(&ev.id);
        push_key(&mut q, &ev.key);
        q.arg(&ev.country)
            .arg(&ev.category)
            .arg(ev.started_at)
            .arg(ev.decided_at)
            .arg(to_json(&ev.evidence)?)
            .arg(now);
        push_key(&mut q, &ev.key);
        q.arg(ev.floor);
        if S::tx_exec(&mut tx, &q).await? == 0 {
            S::rollback(tx).await?;
            return Ok(None);
        }
        S::enqueue(
            &mut tx,
            &ev.id,
            Transition::of(ev.key.kind, true),
            urls,
            now,
        )
        .await?;
        S::commit(tx).await?;
        Ok(Some(Event {
            id: ev.id.clone(),
            kind: ev.key.kind,
            domain: ev.key.domain.clone(),
            asn: ev.key.asn,
            country: ev.country.clone(),
            category: ev.category.clone(),
            method: ev.key.method,
            started_at: ev.started_at,
            ended_at: None,
            evidence: ev.evidence.clone(),
            end_evidence: None,
        }))
    }

    async fn close_event(&self, c: &CloseEvent, urls: &[String]) -> StoreResult<Option<Event>> {
        let now = Utc::now();
        let d = S::DIALECT;
        let mut tx = self.begin().await?;
        S::lock_event_key(&mut tx, &c.key).await?;
        let mut q = S::query(&format!(
            "UPDATE events SET ended_at = {}(?, started_at), close_decided_at = ?, \
             end_evidence = ? \
             WHERE kind = ? AND domain = ? AND asn = ? AND method = ? AND ended_at IS NULL \
               AND ({}) {} ? \
             RETURNING {}",
            d.greatest(),
            floor_of_key(d),
            d.same(),
            event_columns("")
        ));
        q.arg(c.ended_at)
            .arg(c.decided_at)
            .arg(to_json(&c.evidence)?);
        push_key(&mut q, &c.key);
        push_key(&mut q, &c.key);
        q.arg(c.floor);
        let rows = S::tx_all(&mut tx, &q).await?;
        let Some(row) = rows.first() else {
            S::rollback(tx).await?;
            return Ok(None);
        };
        let event = event_from_row(row)?;
        S::enqueue(
            &mut tx,
            &event.id,
            Transition::of(c.key.kind, false),
            urls,
            now,
        )
        .await?;
        S::commit(tx).await?;
        Ok(Some(event))
    }

    async fn sites_with_block_activity(
        &self,
        keys: &[(String, u32)],
        since: DateTime<Utc>,
    ) -> StoreResult<HashSet<(String, u32)>> {
        let mut out = HashSet::new();
        // In slices, to stay far below SQLite's bound-parameter limit.
        for part in keys.chunks(500) {
            let domains = || part.iter().map(|(d, _)| d.as_str());
            let mut q = S::query("SELECT domain, asn FROM blocked_methods WHERE last_at > ");
            q.bind(since).push(" AND domain IN (").bind_list(domains());
            q.push(
                ") UNION SELECT domain, asn FROM events WHERE kind = 'new_block' \
                 AND ended_at IS NULL AND domain IN (",
            )
            .bind_list(domains())
            .push(")");
            for r in self.all(&q).await? {
                out.insert((r.string("domain")?, r.asn("asn")?));
            }
        }
        let wanted: HashSet<&(String, u32)> = keys.iter().collect();
        out.retain(|k| wanted.contains(k));
        Ok(out)
    }

    async fn record_censor_place(
        &self,
        d: &PlaceDecision,
        urls: &[String],
    ) -> StoreResult<Option<Event>> {
        let now = Utc::now();
        let key = EventKey {
            kind: EventKind::BlockMoved,
            domain: Some(d.domain.clone()),
            asn: d.asn,
            method: None,
        };
        let mut tx = self.begin().await?;
        S::lock_event_key(&mut tx, &key).await?;
        // A write first (SQLite then holds its write lock for the whole transaction): the
        // first place agreed for a key is only remembered.
        let mut q = S::query(
            "INSERT INTO censor_places (domain, asn, censor_hop, censor_asn, agreeing, \
             decided_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (domain, asn) DO NOTHING",
        );
        q.arg(d.domain.as_str())
            .arg(d.asn)
            .arg(i64::from(d.place.hop))
            .arg(d.place.asn.map(i64::from))
            .arg(i64::try_from(d.agreeing).unwrap_or(i64::MAX))
            .arg(d.decided_at);
        if S::tx_exec(&mut tx, &q).await? == 1 {
            S::commit(tx).await?;
            return Ok(None);
        }
        let mut q = S::query(
            "SELECT CAST(censor_hop AS BIGINT) AS censor_hop, censor_asn, decided_at \
             FROM censor_places WHERE domain = ? AND asn = ?",
        );
        q.arg(d.domain.as_str()).arg(d.asn);
        let rows = S::tx_all(&mut tx, &q).await?;
        let Some(row) = rows.first() else {
            S::rollback(tx).await?;
            return Ok(None);
        };
        if row.time("decided_at")? >= d.decided_at {
            S::rollback(tx).await?;
            return Ok(None);
        }
        let previous = CensorPlace {
            hop: row
                .opt_hop("censor_hop")?
                .ok_or_else(|| StoreError::Corrupt("censor_hop is NULL".into()))?,
            asn: row.opt_asn("censor_asn")?,
        };
        let mut q = S::query(
            "UPDATE censor_places SET censor_hop = ?, censor_asn = ?, agreeing = ?, \
             decided_at = ? WHERE domain = ? AND asn = ?",
        );
        q.arg(i64::from(d.place.hop))
            .arg(d.place.asn.map(i64::from))
            .arg(i64::try_from(d.agreeing).unwrap_or(i64::MAX))
            .arg(d.decided_at)
            .arg(d.domain.as_str())
            .arg(d.asn);
        S::tx_exec(&mut tx, &q).await?;
        if previous == d.place || !d.blocked {
            S::commit(tx).await?;
            return Ok(None);
        }
        let evidence = Evidence {
            censor: Some(d.place),
            previous_censor: Some(previous),
            ..d.evidence.clone()
        };
        let mut q = S::query(
            "INSERT INTO events (id, kind, domain, asn, method, country, category, started_at, \
             ended_at, open_decided_at, close_decided_at, evidence, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        );
        q.arg(d.event_id.as_str());
        push_key(&mut q, &key);
        q.arg(&d.country)
            .arg(&d.category)
            .arg(d.started_at)
            .arg(d.started_at)
            .arg(d.decided_at)
            .arg(d.decided_at)
            .arg(to_json(&evidence)?)
            .arg(now);
        S::tx_exec(&mut tx, &q).await?;
        S::enqueue(&mut tx, &d.event_id, Transition::BlockMoved, urls, now).await?;
        S::commit(tx).await?;
        Ok(Some(Event {
            id: d.event_id.clone(),
            kind: EventKind::BlockMoved,
            domain: Some(d.domain.clone()),
            asn: d.asn,
            country: d.country.clone(),
            category: d.category.clone(),
            method: None,
            started_at: d.started_at,
            ended_at: Some(d.started_at),
            evidence,
            end_evidence: None,
        }))
    }

    async fn events(&self, f: &Filter) -> StoreResult<Vec<Event>> {
        // Open events first, then the ended ones, each newest first: a flood of short events
        // cannot push an open one out of the page. Two queries, each a bounded range (the
        // open ones are few, and the unique index holds exactly them).
        let mut out = match f.open {
            Some(false) => Vec::new(),
            _ => events_part(self, f, true, f.limit).await?,
        };
        let left = f
            .limit
            .saturating_sub(u32::try_from(out.len()).unwrap_or(u32::MAX));
        if f.open != Some(true) && left > 0 {
            out.extend(events_part(self, f, false, left).await?);
        }
        Ok(out)
    }
}
