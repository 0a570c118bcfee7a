//! Row mapping: reading a row of either database by column name, and each record's columns
//! and conversion from a row.

use super::*;

/// A row of either database, read by column name.
pub(crate) trait SqlRow: Send + Sync {
    /// An integer column (NULL is `None`).
    fn int(&self, column: &str) -> StoreResult<Option<i64>>;
    /// A text column (NULL is `None`).
    fn text(&self, column: &str) -> StoreResult<Option<String>>;

    /// A non-NULL integer.
    fn num(&self, column: &str) -> StoreResult<i64> {
        self.int(column)?
            .ok_or_else(|| StoreError::Corrupt(format!("{column} is NULL")))
    }
    /// A non-NULL text.
    fn string(&self, column: &str) -> StoreResult<String> {
        self.text(column)?
            .ok_or_else(|| StoreError::Corrupt(format!("{column} is NULL")))
    }
    /// A count (negative reads as 0).
    fn count(&self, column: &str) -> StoreResult<u64> {
        Ok(u64::try_from(self.num(column)?).unwrap_or(0))
    }
    /// A non-NULL time.
    fn time(&self, column: &str) -> StoreResult<DateTime<Utc>> {
        time_of(self.num(column)?)
    }
    /// A time or NULL.
    fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        self.int(column)?.map(time_of).transpose()
    }
    /// A network number.
    fn asn(&self, column: &str) -> StoreResult<u32> {
        asn_of(self.num(column)?)
    }
    /// A network number or NULL.
    fn opt_asn(&self, column: &str) -> StoreResult<Option<u32>> {
        self.int(column)?.map(asn_of).transpose()
    }
    /// A censor's hop (a TTL) or NULL.
    fn opt_hop(&self, column: &str) -> StoreResult<Option<u8>> {
        self.int(column)?
            .map(|v| u8::try_from(v).map_err(|_| StoreError::Corrupt(format!("{column} {v}"))))
            .transpose()
    }
    /// A value of one of the model's closed sets (status, kind, transition...).
    fn parsed<T: FromStr>(&self, column: &str) -> StoreResult<T>
    where
        Self: Sized,
    {
        let s = self.string(column)?;
        s.parse()
            .map_err(|_| StoreError::Corrupt(format!("{column} {s:?}")))
    }
    /// A method; NULL and `''` (the method of a shutdown's key) are none.
    fn method(&self, column: &str) -> StoreResult<Option<Method>> {
        match self.text(column)?.as_deref() {
            None | Some("") => Ok(None),
            Some(m) => m
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("method {m:?}"))),
        }
    }
}

macro_rules! sql_row {
    ($row:ty) => {
        impl SqlRow for $row {
            fn int(&self, column: &str) -> StoreResult<Option<i64>> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn text(&self, column: &str) -> StoreResult<Option<String>> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
        }
    };
}
sql_row!(sqlx::sqlite::SqliteRow);
sql_row!(sqlx::postgres::PgRow);

pub(super) fn asn_of(v: i64) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("asn {v}")))
}

pub(super) fn evidence(s: &str) -> StoreResult<Evidence> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("evidence: {e}")))
}

pub(super) fn to_json(e: &Evidence) -> StoreResult<String> {
    serde_json::to_string(e).map_err(|e| StoreError::Corrupt(format!("evidence: {e}")))
}

/// The columns of [`event_from_row`].
pub(crate) const EVENT_COLUMNS: &[&str] = &[
    "id",
    "kind",
    "domain",
    "asn",
    "method",
    "country",
    "category",
    "started_at",
    "ended_at",
    "evidence",
    "end_evidence",
];

/// [`EVENT_COLUMNS`] of the table aliased `alias` (`""`: unqualified).
pub(crate) fn event_columns(alias: &str) -> String {
    EVENT_COLUMNS
        .iter()
        .map(|c| {
            if alias.is_empty() {
                c.to_string()
            } else {
                format!("{alias}.{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn event_from_row(r: &impl SqlRow) -> StoreResult<Event> {
    let domain = r.string("domain")?;
    Ok(Event {
        id: r.string("id")?,
        kind: r.parsed("kind")?,
        domain: (!domain.is_empty()).then_some(domain),
        asn: r.asn("asn")?,
        country: r.text("country")?,
        category: r.text("category")?,
        method: r.method("method")?,
        started_at: r.time("started_at")?,
        ended_at: r.opt_time("ended_at")?,
        evidence: evidence(&r.string("evidence")?)?,
        end_evidence: r
            .text("end_evidence")?
            .as_deref()
            .map(evidence)
            .transpose()?,
    })
}

/// A claimed outbox row joined with its event ([`event_columns`]`("e")`).
pub(crate) fn notification_from_row(r: &impl SqlRow) -> StoreResult<Notification> {
    Ok(Notification {
        id: r.num("outbox_id")?,
        event: event_from_row(r)?,
        transition: r.parsed("transition")?,
        url: r.string("url")?,
        attempts: u32::try_from(r.num("attempts")?).unwrap_or(0),
    })
}

/// The columns of [`measurement_from_row`].
pub(super) fn measurement_columns(d: Dialect) -> String {
    format!(
        "{} AS id, received_at, started_at, domain, url, category, asn, country, status, method, \
         reason, software_version, body, CAST(censor_hop AS BIGINT) AS censor_hop, censor_asn",
        d.id_text("id")
    )
}

pub(crate) fn measurement_from_row(r: &impl SqlRow) -> StoreResult<MeasurementRecord> {
    let id = r.string("id")?;
    Ok(MeasurementRecord {
        id: Uuid::parse_str(&id)
            .map_err(|_| StoreError::Corrupt(format!("measurement id {id:?}")))?,
        received_at: r.time("received_at")?,
        started_at: r.time("started_at")?,
        domain: r.string("domain")?,
        url: r.string("url")?,
        category: r.text("category")?,
        asn: r.opt_asn("asn")?,
        country: r.text("country")?,
        status: r.parsed("status")?,
        method: r.method("method")?,
        reason: r.string("reason")?,
        software_version: r.string("software_version")?,
        body: r.string("body")?,
        censor_hop: r.opt_hop("censor_hop")?,
        censor_asn: r.opt_asn("censor_asn")?,
    })
}

/// The columns of [`obs_from_row`], from `measurements`.
pub(super) fn obs_columns(d: Dialect) -> String {
    format!(
        "{} AS id, probe_id, started_at, status, method, \
         CAST(censor_hop AS BIGINT) AS censor_hop, censor_asn",
        d.id_text("id")
    )
}

pub(super) fn obs_from_row(r: &impl SqlRow) -> StoreResult<Obs> {
    Ok(Obs {
        id: r.string("id")?,
        probe: r.string("probe_id")?,
        at: r.time("started_at")?,
        status: r.parsed("status")?,
        method: r.method("method")?,
        censor_hop: r.opt_hop("censor_hop")?,
        censor_asn: r.opt_asn("censor_asn")?,
    })
}

/// The aggregate columns of [`event_state_from_row`], from `events` grouped by key and method.
pub(super) fn event_state_columns(d: Dialect) -> String {
    format!(
        "method, MAX(CASE WHEN ended_at IS NULL THEN started_at END) AS open_since, \
         MAX({}(open_decided_at, COALESCE(close_decided_at, 0))) AS floor",
        d.greatest()
    )
}

pub(super) fn event_state_from_row(r: &impl SqlRow) -> StoreResult<EventState> {
    Ok(EventState {
        method: r.method("method")?,
        open_since: r.opt_time("open_since")?,
        floor: r.opt_time("floor")?,
    })
}

pub(super) fn latest_group_from_row(r: &impl SqlRow) -> StoreResult<LatestGroup> {
    Ok(LatestGroup {
        domain: r.string("domain")?,
        asn: r.asn("asn")?,
        country: r.text("country")?,
        category: r.text("category")?,
        status: r.parsed("status")?,
        method: r.method("method")?,
        probes: r.count("probes")?,
        last_measured: r.time("last")?,
    })
}
