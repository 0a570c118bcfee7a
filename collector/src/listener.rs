//! The HTTP/1.1 accept loop of the collector: a connection cap and a header-read timeout in
//! front of the axum router.
//!
//! `axum::serve` has neither: it accepts every connection and never times out a client that
//! sends half a request line, so 50 connections dribbling headers stay open for ever and the
//! file descriptor table is the only limit. This loop is axum's own (hyper's HTTP/1 server over
//! tokio), plus:
//! - a semaphore of `server.max_connections`. At the cap, the connection idle the longest (no
//!   request in flight) is closed to make room for the new one; only when none is idle is the
//!   new connection closed at once (waiting in the kernel backlog would let a flood delay every
//!   honest client). Refusing the newest, as this loop first did, let 1,024 kept-alive
//!   connections sending a cheap request every 8 s keep every honest client out (issue #20);
//! - `server.max_connections_per_client`: connections from one address (IPv6: its /64) at
//!   once, so one client cannot take the cap (off behind a proxy, where every connection comes
//!   from the proxy);
//! - hyper's `header_read_timeout` (which also bounds the idle time between requests of a
//!   kept-alive connection, since hyper starts it whenever it waits for a request head);
//! - a connection that has not finished after the shutdown grace period is dropped.
//!
//! Body-read timeouts and per-route body limits are in [`crate::body`], where the handlers read
//! bodies after authenticating.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tower_service::Service;

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time to send a request head (and idle time between requests).
    pub header_read_timeout: Duration,
    /// Connections open at once from one client address; 0: no limit.
    pub max_per_client: usize,
}

/// How long a connection admitted in place of an idle one waits for the idle one's slot.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

/// The open connections: which are idle since when, and how many each client holds.
#[derive(Default)]
struct Registry {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    /// Idle connections, oldest first.
    idle: BTreeSet<(Instant, u64)>,
    per_client: HashMap<IpAddr, usize>,
}

struct Entry {
    client: IpAddr,
    /// Requests in flight (from the request head until the response body is sent).
    busy: u32,
    idle_since: Instant,
    /// Asked to close: never idle again.
    evicted: bool,
    close: Arc<Notify>,
}

/// What a client's connections are counted under: its address, or its /64 for IPv6.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        v4 => v4,
    }
}

type Shared = Arc<Mutex<Registry>>;

fn lock(r: &Shared) -> std::sync::MutexGuard<'_, Registry> {
    match r.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Registry {
    /// May `client` open one more connection?
    fn has_share(&self, client: IpAddr, max_per_client: usize) -> bool {
        max_per_client == 0 || self.per_client.get(&client).copied().unwrap_or(0) < max_per_client
    }

    /// Register a connection from `client`, idle until its first request.
    fn open(&mut self, client: IpAddr) -> (u64, Arc<Notify>) {
        *self.per_client.entry(client).or_default() += 1;
        let id = self.next_id;
        self.next_id += 1;
        let now = Instant::now();
        let close = Arc::new(Notify::new());
        self.conns.insert(
            id,
            Entry {
                client,
                busy: 0,
                idle_since: now,
                evicted: false,
                close: close.clone(),
            },
        );
        self.idle.insert((now, id));
        (id, close)
    }

    fn closed(&mut self, id: u64) {
        if let Some(e) = self.conns.remove(&id) {
            self.idle.remove(&(e.idle_since, id));
            if let Some(n) = self.per_client.get_mut(&e.client) {
                *n -= 1;
                if *n == 0 {
                    self.per_client.remove(&e.client);
                }
            }
        }
    }

    fn busy(&mut self, id: u64) {
        if let Some(e) = self.conns.get_mut(&id) {
            if e.busy == 0 {
                self.idle.remove(&(e.idle_since, id));
            }
            e.busy += 1;
        }
    }

    fn done(&mut self, id: u64) {
        if let Some(e) = self.conns.get_mut(&id) {
            e.busy = e.busy.saturating_sub(1);
            if e.busy == 0 && !e.evicted {
                e.idle_since = Instant::now();
                self.idle.insert((e.idle_since, id));
            }
        }
    }

    fn is_idle(&self, id: u64) -> bool {
        self.conns.get(&id).is_some_and(|e| e.busy == 0)
    }

    /// Ask the connection idle the longest to close; false when none is idle.
    fn evict_oldest_idle(&mut self) -> bool {
        let Some((_, id)) = self.idle.pop_first() else {
            return false;
        };
        if let Some(e) = self.conns.get_mut(&id) {
            e.evicted = true;
            e.close.notify_one();
        }
        true
    }
}

/// Marks its connection busy while alive: held by the handler, then by the response body
/// until hyper has sent (or dropped) it.
struct BusyGuard {
    registry: Shared,
    id: u64,
}

impl BusyGuard {
    fn new(registry: &Shared, id: u64) -> Self {
        lock(registry).busy(id);
        BusyGuard {
            registry: registry.clone(),
            id,
        }
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        lock(&self.registry).done(self.id);
    }
}

/// Unregisters its connection when its task ends, however it ends.
struct OpenGuard {
    registry: Shared,
    id: u64,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        lock(&self.registry).closed(self.id);
    }
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
    let registry: Shared = Arc::default();
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
        let client = client_of(peer.ip());
        let permit = slots.clone().try_acquire_owned().ok();
        // Over the client's share, or over the cap with no idle connection to close: close at
        // once (dropping the stream). Not logged per connection: that would be a log flood
        // under attack; the metric is the open-connection gauge.
        let admitted = {
            let mut reg = lock(&registry);
            if !reg.has_share(client, limits.max_per_client)
                || (permit.is_none() && !reg.evict_oldest_idle())
            {
                None
            } else {
                Some(reg.open(client))
            }
        };
        let Some((id, close)) = admitted else {
            drop(stream);
            continue;
        };
        let open_guard = OpenGuard {
            registry: registry.clone(),
            id,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut stop = stop_rx.clone();
        let slots = slots.clone();
        let registry = registry.clone();
        let registry_conn = registry.clone();
        conns.spawn(async move {
            let _open = open_guard;
            // In place of an evicted idle connection: its slot comes free as it closes.
            let _permit = match permit {
                Some(p) => p,
                None => {
                    // Not idle while it waits: no other newcomer may take its place.
                    let _waiting = BusyGuard::new(&registry, id);
                    match tokio::time::timeout(EVICTION_WAIT, slots.acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        _ => return,
                    }
                }
            };
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut router = router.clone();
                let busy = BusyGuard::new(&registry, id);
                async move {
                    let response = router.call(req).await;
                    let response = response.unwrap_or_else(|never| match never {});
                    // Busy until the body is sent: an export streaming out is not idle.
                    Ok::<_, Infallible>(response.map(|body| {
                        axum::body::Body::new(body.map_frame(move |f| {
                            let _ = &busy;
                            f
                        }))
                    }))
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
                // Idle the longest at the cap: dropped now if still idle (hyper's graceful
                // shutdown would wait for a request that may never come), else closed after
                // its response.
                _ = close.notified() => {
                    if lock(&registry_conn).is_idle(id) {
                        return;
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_goes_first_and_busy_ones_never() {
        let mut r = Registry::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let (c1, n1) = r.open(a);
        std::thread::sleep(Duration::from_millis(2));
        let (c2, _) = r.open(a);
        std::thread::sleep(Duration::from_millis(2));
        let (c3, _) = r.open(a);
        r.busy(c2);
        assert!(r.evict_oldest_idle());
        assert!(r.conns[&c1].evicted);
        // Notified: the connection's task wakes and closes it.
        assert!(futures::FutureExt::now_or_never(n1.notified()).is_some());
        assert!(r.evict_oldest_idle());
        assert!(r.conns[&c3].evicted);
        assert!(!r.evict_oldest_idle(), "c2 is busy");
        // Once done, c2 is idle again and can go.
        r.done(c2);
        assert!(r.evict_oldest_idle());
        // An evicted connection never becomes idle again.
        r.busy(c1);
        r.done(c1);
        assert!(!r.evict_oldest_idle());
        for c in [c1, c2, c3] {
            r.closed(c);
        }
        assert!(r.conns.is_empty() && r.idle.is_empty() && r.per_client.is_empty());
    }

    #[test]
    fn a_client_has_its_share_and_ipv6_counts_by_64() {
        let mut r = Registry::default();
        let v6 = |s: &str| client_of(s.parse().unwrap());
        assert_eq!(v6("2001:db8:1:2::1"), v6("2001:db8:1:2:ffff::9"));
        let c = v6("2001:db8:1:2::1");
        assert!(r.has_share(c, 2));
        r.open(c);
        r.open(c);
        assert!(!r.has_share(c, 2));
        assert!(r.has_share(c, 0), "0: no limit");
        assert!(r.has_share(v6("2001:db8:1:3::1"), 2));
    }
}
