//! The query toolkit: a statement and its bound arguments, written once with `?` placeholders
//! for both databases, and the filter clauses the reads share.

use super::*;

/// A bound value: every column is an integer or text.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Arg {
    /// An integer (times are microseconds).
    Int(Option<i64>),
    /// Text.
    Text(Option<String>),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Arg {
        Arg::Int(Some(v))
    }
}
impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Arg {
        Arg::Int(v)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg::Int(Some(i64::from(v)))
    }
}
impl From<DateTime<Utc>> for Arg {
    fn from(t: DateTime<Utc>) -> Arg {
        Arg::Int(Some(micros_of(t)))
    }
}
impl From<Option<DateTime<Utc>>> for Arg {
    fn from(t: Option<DateTime<Utc>>) -> Arg {
        Arg::Int(t.map(micros_of))
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Arg {
        Arg::Text(Some(v.to_string()))
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Arg {
        Arg::Text(Some(v))
    }
}
impl From<&String> for Arg {
    fn from(v: &String) -> Arg {
        Arg::Text(Some(v.clone()))
    }
}
impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Arg {
        Arg::Text(v.map(str::to_string))
    }
}
impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Arg {
        Arg::Text(v.clone())
    }
}

/// A statement and its arguments. SQL is written with `?` for parameters; for PostgreSQL each
/// is numbered (`$1`, `$2`, ...) as it is pushed, so one text serves both databases.
#[derive(Clone, Debug)]
pub(crate) struct Query {
    dialect: Dialect,
    sql: String,
    args: Vec<Arg>,
    params: usize,
}

impl Query {
    /// A statement starting with `sql`.
    pub fn new(dialect: Dialect, sql: &str) -> Query {
        let mut q = Query {
            dialect,
            sql: String::with_capacity(sql.len() + 64),
            args: Vec::new(),
            params: 0,
        };
        q.push(sql);
        q
    }

    /// Append SQL; each `?` outside a quoted literal is a parameter, given with [`Query::arg`].
    pub fn push(&mut self, sql: &str) -> &mut Query {
        if self.dialect == Dialect::Sqlite {
            self.sql.push_str(sql);
            return self;
        }
        let mut quoted = false;
        for c in sql.chars() {
            match c {
                '\'' => {
                    quoted = !quoted;
                    self.sql.push(c);
                }
                '?' if !quoted => {
                    self.params += 1;
                    self.sql.push('$');
                    self.sql.push_str(&self.params.to_string());
                }
                _ => self.sql.push(c),
            }
        }
        self
    }

    /// The value of the next `?`.
    pub fn arg(&mut self, a: impl Into<Arg>) -> &mut Query {
        self.args.push(a.into());
        self
    }

    /// Append a parameter and its value.
    pub fn bind(&mut self, a: impl Into<Arg>) -> &mut Query {
        self.push("?").arg(a)
    }

    /// Append `, `-separated parameters.
    pub fn bind_list<A: Into<Arg>>(&mut self, values: impl IntoIterator<Item = A>) -> &mut Query {
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v);
        }
        self
    }

    /// The statement's text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Its arguments, in order.
    pub fn args(&self) -> &[Arg] {
        &self.args
    }
}

/// Appends the `AND ...` filters on time (`time_column`), network, country, category, site and
/// status: the columns `measurements` and `latest_verdicts` share.
pub(super) fn push_filters(q: &mut Query, f: &Filter, time_column: &str) {
    if let Some(s) = f.since {
        q.push(&format!(" AND {time_column} >= ")).bind(s);
    }
    if let Some(u) = f.until {
        q.push(&format!(" AND {time_column} <= ")).bind(u);
    }
    if let Some(a) = f.asn {
        q.push(" AND asn = ").bind(a);
    }
    if let Some(c) = &f.country {
        q.push(" AND country = ").bind(c);
    }
    if let Some(c) = &f.category {
        q.push(" AND category = ").bind(c);
    }
    if let Some(d) = &f.domain {
        q.push(" AND domain = ").bind(d);
    }
    if let Some(s) = f.status {
        q.push(" AND status = ").bind(s.as_str());
    }
}

/// The key's columns as stored (`''` for the absent domain and method of shutdowns).
pub(super) fn push_key(q: &mut Query, key: &EventKey) {
    q.arg(key.kind.as_str())
        .arg(key.domain.as_deref().unwrap_or(""))
        .arg(key.asn)
        .arg(key.method.map_or("", |m| m.as_str()));
}

/// The latest decision time of one key (parameters: kind, domain, asn, method); NULL without
/// events.
pub(super) fn floor_of_key(d: Dialect) -> String {
    format!(
        "SELECT MAX({}(f.open_decided_at, COALESCE(f.close_decided_at, 0))) FROM events f \
         WHERE f.kind = ? AND f.domain = ? AND f.asn = ? AND f.method = ?",
        d.greatest()
    )
}

/// A [`Query`] as sqlx's, for any database that binds 64-bit integers and text.
pub(crate) fn bound<'q, DB: sqlx::Database>(
    q: &'q Query,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    q.args()
        .iter()
        .fold(sqlx::query::<DB>(q.sql()), |s, a| match a {
            Arg::Int(v) => s.bind(*v),
            Arg::Text(v) => s.bind(v.as_deref()),
        })
}
