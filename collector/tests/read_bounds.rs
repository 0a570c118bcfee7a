//! `[store] read_timeout` (issue #20, item 6): a read that keeps the database busy is stopped,
//! on both stores, so a few costly anonymous queries cannot hold connections for as long as
//! they like; the error maps to a 503 that tells the client to narrow its query.

use std::time::{Duration, Instant};

use witness_collector::error::ApiError;
use witness_collector::store::postgres::PostgresStore;
use witness_collector::store::sqlite::SqliteStore;
use witness_collector::store::StoreError;
use witness_tests::postgres::{PgOptions, PgServer};

/// A query that runs for ever (a counting recursive CTE) is interrupted after the bound of
/// execution time; a client merely waiting is not (only execution counts).
#[tokio::test]
async fn a_sqlite_read_is_stopped_at_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    let store = SqliteStore::open_with(&url, 2, Duration::from_millis(300))
        .await
        .unwrap();
    let t0 = Instant::now();
    let endless = sqlx::query_scalar::<_, i64>(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n",
    )
    .fetch_one(store.pool());
    let err = tokio::time::timeout(Duration::from_secs(10), endless)
        .await
        .expect("the endless query was not stopped")
        .expect_err("an endless query finished");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    let api = ApiError::from(StoreError::Db(err));
    assert!(matches!(api, ApiError::Unavailable(_)), "{api:?}");
    // The bound is per acquire: the next read has its whole budget again.
    let one: i64 = sqlx::query_scalar("SELECT 1")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(one, 1);
}

/// PostgreSQL: reads carry `statement_timeout`; the error is PostgreSQL's query_canceled.
#[tokio::test]
async fn a_postgres_read_is_stopped_at_the_read_timeout() {
    if !PgServer::available("read_bounds") {
        return;
    }
    let server = PgServer::start(PgOptions::default()).expect("PostgreSQL");
    let db = server.database().expect("database");
    let store = PostgresStore::open_with(&server.url(&db.name), 2, Duration::from_millis(300))
        .await
        .expect("open");
    let t0 = Instant::now();
    let err = sqlx::query("SELECT pg_sleep(5)")
        .execute(store.pool())
        .await
        .expect_err("the sleep was not cut");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let api = ApiError::from(StoreError::Db(err));
    assert!(matches!(api, ApiError::Unavailable(_)), "{api:?}");
}
