//! The HTTP/1.1 accept loop of the collector: a connection cap and a header-read timeout in
//! front of the axum router.
//!
//! `axum::serve` has neither: it accepts every connection and never times out a client that
//! sends half a request line, so 50 connections dribbling headers stay open for ever and the
//! file descriptor table is the only limit. This loop is axum's own (hyper's HTTP/1 server over
//! tokio), plus:
//! - a semaphore of `server.max_connections`: a connection over the cap is accepted and closed
//!   at once (waiting in the kernel backlog would let a flood delay every honest client);
//! - hyper's `header_read_timeout` (which also bounds the idle time between requests of a
//!   kept-alive connection, since hyper starts it whenever it waits for a request head);
//! - a connection that has not finished after the shutdown grace period is dropped.
//!
//! Body-read timeouts and per-route body limits are in [`crate::body`], where the handlers read
//! bodies after authenticating.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower_service::Service;

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time to send a request head (and idle time between requests).
    pub header_read_timeout: Duration,
}

/// Largest request head (request line and headers). Generous for any real client; hyper's own
/// default would let a client park ~400 KiB per connection.
const MAX_HEADER_BYTES: usize = 32 * 1024;

/// How long in-flight requests get to finish after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serve `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the connections that
                    // hold the descriptors time out.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the cap: close at once (dropping the stream). Not logged per connection:
            // that would be a log flood under attack; the metric is the open-connection gauge.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut router = router.clone();
                async move {
                    let response = router.call(req).await;
                    Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_header_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        });
    }
    let _ = stop_tx.send(true);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), drain)
        .await
        .is_err()
    {
        conns.abort_all();
    }
    Ok(())
}
