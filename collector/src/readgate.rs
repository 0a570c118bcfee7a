//! Fair shares of the store for anonymous reads.
//!
//! Reads are open to anyone and some are costly (a status in the past scans the measurements of
//! its period). They used to take store connections without limit: 16 clients asking for past
//! ranges held every connection of the pool, and a 50-record upload went from 21 ms to 8.6 s
//! waiting for one to authenticate (issue #20). Now a read request (any `GET` but the health
//! check) holds a slot of `server.max_concurrent_reads`, below the store's pool size so uploads
//! always find a connection, and one client at most `server.max_reads_per_client` of them. A
//! slot is held until the response body is sent (an export streams from its connection). A
//! client over its share waits for one of its own to end, a read with no free slot for any
//! slot, both at most [`QUEUE_WAIT`]: then 429 (over its share) or 503 (all slots busy).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use http_body_util::BodyExt;
use tokio::sync::{Notify, Semaphore};

use crate::error::ApiError;
use crate::state::AppState;

/// How long a read waits for a slot before 503.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The read slots and each client's count.
#[derive(Debug)]
pub struct ReadGate {
    slots: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<String, usize>>>,
    max_per_client: usize,
    /// Woken whenever a share ends.
    released: Arc<Notify>,
}

/// A client's hold on one of its shares; released on drop.
struct Share {
    per_client: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
    released: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut map = lock(&self.per_client);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
        drop(map);
        self.released.notify_waiters();
    }
}

impl ReadGate {
    /// `total` reads at once, `per_client` of them from one client.
    pub fn new(total: usize, per_client: usize) -> Self {
        ReadGate {
            slots: Arc::new(Semaphore::new(total.max(1))),
            per_client: Arc::default(),
            max_per_client: per_client.max(1),
            released: Arc::default(),
        }
    }

    /// A share for `key`, waiting until `deadline` for one of its own to end.
    async fn share_by(&self, key: String, deadline: tokio::time::Instant) -> Option<Share> {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before the check, so a release in between is not missed.
            released.as_mut().enable();
            if let Some(s) = self.share(key.clone()) {
                return Some(s);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return None;
            }
        }
    }

    fn share(&self, key: String) -> Option<Share> {
        let mut map = lock(&self.per_client);
        let n = map.entry(key.clone()).or_default();
        if *n >= self.max_per_client {
            return None;
        }
        *n += 1;
        Some(Share {
            per_client: self.per_client.clone(),
            key,
            released: self.released.clone(),
        })
    }
}

/// Whether a request is a read that takes a slot.
fn is_gated(req: &Request) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD) && req.uri().path() != "/api/v1/health"
}

/// The middleware: take a share and a slot for a read, hold them until its body is sent.
pub async fn gate(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    req: Request,
    next: Next,
) -> Response {
    if !is_gated(&req) {
        return next.run(req).await;
    }
    let key = crate::api::client_address(
        &state,
        req.headers(),
        peer.map(|Extension(ConnectInfo(a))| a),
    )
    .map_or_else(|| "unknown".to_string(), |ip| state.client_keys.key(ip));
    let gate = &state.read_gate;
    let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
    let Some(share) = gate.share_by(key, deadline).await else {
        return ApiError::RateLimited(Duration::from_secs(1)).into_response();
    };
    let permit = match tokio::time::timeout_at(deadline, gate.slots.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        _ => {
            return ApiError::Unavailable("too many reads at once: retry in a few seconds".into())
                .into_response()
        }
    };
    let response = next.run(req).await;
    response.map(|body| {
        axum::body::Body::new(body.map_frame(move |f| {
            let _ = (&share, &permit);
            f
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_over_its_share_waits_for_one_of_its_own() {
        let g = Arc::new(ReadGate::new(4, 1));
        let held = g.share("a".into()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.share_by("a".into(), deadline).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        assert!(waiter.await.unwrap());
        // Nobody releases: refused at the deadline.
        let _held = g.share("b".into()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        assert!(g.share_by("b".into(), deadline).await.is_none());
    }

    #[test]
    fn a_client_gets_its_share_and_no_more() {
        let g = ReadGate::new(4, 2);
        let a1 = g.share("a".into()).unwrap();
        let _a2 = g.share("a".into()).unwrap();
        assert!(g.share("a".into()).is_none());
        assert!(g.share("b".into()).is_some());
        drop(a1);
        assert!(g.share("a".into()).is_some());
    }
}
