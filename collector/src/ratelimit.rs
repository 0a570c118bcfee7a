//! In-memory token buckets. Nothing here is persisted and keys are never logged. Uploads and
//! control requests have one bucket per probe id; failed invites one bucket per client
//! ([`ClientKeys`]: a salted hash of the address, never the address); open registration a
//! bucket per client, per network prefix and a global one ([`RegistrationLimiter`]).
//!
//! Every map of buckets is an LRU of a fixed size ([`MAX_KEYS`]): finding, inserting and
//! evicting are O(1), so a flood of new keys costs each request the same as one key did. (The
//! map it replaces swept itself under its lock once full, on every new key: ten times the CPU
//! per request and health checks from 22 to 178 ms in the security review, issue #20.) An
//! evicted bucket is the least recently used one; its client starts again with a full bucket,
//! which errs on the side of letting an honest client in.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;
use sha2::{Digest, Sha256};

/// Most keys one limiter keeps.
pub const MAX_KEYS: usize = 100_000;

/// Turns client addresses into bucket keys: SHA-256 of a per-process random salt and the
/// address (IPv6: its /64, what one subscriber usually gets). The salt lives only in memory
/// and changes at every start, so the keys cannot be reversed by trying all IPv4 addresses,
/// and nothing linking a key to an address outlives the process.
#[derive(Debug)]
pub struct ClientKeys {
    salt: [u8; 32],
}

impl Default for ClientKeys {
    fn default() -> Self {
        ClientKeys {
            salt: rand::random(),
        }
    }
}

impl ClientKeys {
    /// The key of `ip`.
    pub fn key(&self, ip: IpAddr) -> String {
        let mut h = Sha256::new();
        h.update(self.salt);
        match ip.to_canonical() {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(&v6.octets()[..8]),
        }
        hex::encode(&h.finalize()[..12])
    }

    /// The key of the network prefix of `ip`: its /24 (IPv4) or /48 (IPv6), what one
    /// organisation usually holds, so addresses of one attacker network share one bucket.
    pub fn prefix_key(&self, ip: IpAddr) -> String {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(b"prefix");
        match ip.to_canonical() {
            IpAddr::V4(v4) => h.update(&v4.octets()[..3]),
            IpAddr::V6(v6) => h.update(&v6.octets()[..6]),
        }
        hex::encode(&h.finalize()[..12])
    }
}

/// One token bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket holding `burst` tokens, refilled at `per_sec`.
    pub fn new(burst: u32, per_sec: f64) -> Self {
        TokenBucket {
            capacity: f64::from(burst.max(1)),
            per_sec,
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// Take one token, or say how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if self.per_sec > 0.0 {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        } else {
            Err(Duration::from_secs(3600))
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// A bucket per key, at most [`MAX_KEYS`] keys (least recently used evicted first).
#[derive(Debug)]
pub struct KeyedLimiter {
    burst: u32,
    per_sec: f64,
    buckets: Mutex<LruCache<String, TokenBucket>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl KeyedLimiter {
    fn new(burst: u32, per_sec: f64, max_keys: usize) -> Self {
        KeyedLimiter {
            burst,
            per_sec,
            buckets: Mutex::new(LruCache::new(max_keys.max(1))),
        }
    }

    /// `burst` requests at once, `per_minute` sustained, per key.
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        Self::new(burst, f64::from(per_minute) / 60.0, MAX_KEYS)
    }

    /// `burst` at once, `per_hour` sustained, per key.
    pub fn per_hour(per_hour: u32, burst: u32) -> Self {
        Self::new(burst, f64::from(per_hour) / 3600.0, MAX_KEYS)
    }

    /// Would [`check`](Self::check) succeed? Takes nothing: used to refuse early a client
    /// whose failures are spent, and [`check`](Self::check) then charges a failure.
    pub fn peek(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = lock(&self.buckets);
        match map.get_mut(key) {
            None => Ok(()),
            Some(b) => b.clone().take(now),
        }
    }

    /// Take a token for `key`, or say how long to wait.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = lock(&self.buckets);
        if let Some(b) = map.get_mut(key) {
            return b.take(now);
        }
        let mut b = TokenBucket::new(self.burst, self.per_sec);
        let taken = b.take(now);
        // Over capacity, the least recently used bucket goes: O(1).
        map.insert(key.to_string(), b);
        taken
    }

    /// Keys held (tests and the bound's proof).
    pub fn len(&self) -> usize {
        lock(&self.buckets).len()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Open registration: a bucket per client, one per network prefix ([`ClientKeys::prefix_key`])
/// and a global one, all checked before any is spent, so a refused request costs the client
/// nothing.
///
/// The global bucket bounds what is registered in an hour; alone, it could be held empty by a
/// few networks (three addresses drained it and took each refill first in the security review,
/// issue #20). So a prefix whose bucket is full, that is with no registration within its
/// refill period, may go on when the global bucket is empty, into a reserve of
/// `global_burst` more (a debt the refill pays back first). An attacker's prefixes, which keep
/// registering, are never fresh, so they can spend the reserve once each per refill period: a
/// volunteer from any other network gets in unless the attacker holds more prefixes than the
/// reserve. At most `per_hour + 2 × burst` registrations an hour get through in all.
#[derive(Debug)]
pub struct RegistrationLimiter {
    state: Mutex<RegistrationState>,
    client: (u32, f64),
    prefix: (u32, f64),
    /// How far below empty fresh prefixes may take the global bucket.
    reserve: f64,
}

#[derive(Debug)]
struct RegistrationState {
    clients: LruCache<String, TokenBucket>,
    prefixes: LruCache<String, TokenBucket>,
    global: TokenBucket,
}

impl RegistrationLimiter {
    /// Hourly rates; each bucket's burst is its hourly rate, the global one's `global_burst`.
    pub fn per_hour(client: u32, prefix: u32, global: u32, global_burst: u32) -> Self {
        let rate = |n: u32| (n, f64::from(n) / 3600.0);
        RegistrationLimiter {
            state: Mutex::new(RegistrationState {
                clients: LruCache::new(MAX_KEYS),
                prefixes: LruCache::new(MAX_KEYS),
                global: TokenBucket::new(global_burst, f64::from(global) / 3600.0),
            }),
            client: rate(client),
            prefix: rate(prefix),
            reserve: f64::from(global_burst.max(1)),
        }
    }

    /// Take a registration for `client` in `prefix`, or say how long to wait. Nothing is
    /// spent unless everything passes; a refused client leaves no key behind.
    pub fn check(&self, client: &str, prefix: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let current = |map: &mut LruCache<String, TokenBucket>, key: &str, (burst, rate)| {
            let mut b = map
                .get(key)
                .cloned()
                .unwrap_or_else(|| TokenBucket::new(burst, rate));
            b.refill(now);
            b
        };
        let mut c = current(&mut st.clients, client, self.client);
        let mut p = current(&mut st.prefixes, prefix, self.prefix);
        let floor = if p.is_full(now) { -self.reserve } else { 0.0 };
        let mut g = st.global.clone();
        g.refill(now);
        let global_wait = if g.tokens - 1.0 >= floor {
            None
        } else if g.per_sec > 0.0 {
            Some(Duration::from_secs_f64(
                (floor + 1.0 - g.tokens) / g.per_sec,
            ))
        } else {
            Some(Duration::from_secs(3600))
        };
        let waits = [
            c.clone().take(now).err(),
            p.clone().take(now).err(),
            global_wait,
        ];
        if let Some(wait) = waits.into_iter().flatten().max() {
            return Err(wait);
        }
        let _ = c.take(now);
        let _ = p.take(now);
        g.tokens -= 1.0;
        st.global = g;
        st.clients.insert(client.to_string(), c);
        st.prefixes.insert(prefix.to_string(), p);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, 1.0);
        b.last = t0;
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert!(b.take(t0 + Duration::from_millis(1100)).is_ok());
    }

    #[test]
    fn client_keys_hide_the_address_and_group_ipv6_by_64() {
        let k = ClientKeys::default();
        let a = k.key("192.0.2.1".parse().unwrap());
        assert_eq!(a, k.key("::ffff:192.0.2.1".parse().unwrap()));
        assert_ne!(a, k.key("192.0.2.2".parse().unwrap()));
        // 24 hex digits of a salted hash: neither the address nor its octets in any form (a
        // "192" inside the hex would be chance, 0.5% of salts: not checked).
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()), "{a}");
        assert!(!a.contains("c0000201"), "the octets in hex: {a}");
        assert_eq!(
            k.key("2001:db8:1:2::1".parse().unwrap()),
            k.key("2001:db8:1:2:ffff::9".parse().unwrap())
        );
        assert_ne!(
            k.key("2001:db8:1:2::1".parse().unwrap()),
            k.key("2001:db8:1:3::1".parse().unwrap())
        );
        // Another process, another salt.
        assert_ne!(a, ClientKeys::default().key("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn peek_does_not_take() {
        let l = KeyedLimiter::per_hour(1, 1);
        assert!(l.peek("a").is_ok());
        assert!(l.peek("a").is_ok());
        assert!(l.check("a").is_ok());
        assert!(l.peek("a").is_err());
    }

    #[test]
    fn the_map_is_bounded_and_a_flood_of_keys_costs_o1() {
        let l = KeyedLimiter::new(1, 1.0 / 3600.0, 1000);
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_err());
        // 150 000 new keys (the review's flood past the old 100 000): each insert evicts the
        // least recently used key, so the map stays at its bound. The old sweep made this
        // quadratic (some 5e9 bucket visits here); the bound on time tells the two apart.
        let t0 = Instant::now();
        for i in 0..150_000u32 {
            let _ = l.check(&i.to_string());
        }
        assert_eq!(l.len(), 1000);
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        // "a" was evicted: it starts again with a full bucket.
        assert!(l.check("a").is_ok());
    }

    #[test]
    fn a_refused_registration_spends_nothing() {
        // Client bucket 2, prefix bucket 1, global 10.
        let l = RegistrationLimiter::per_hour(2, 1, 10, 10);
        assert!(l.check("c1", "p1").is_ok());
        // The prefix is spent: refused, and the client's second token is kept.
        assert!(l.check("c1", "p1").is_err());
        assert!(l.check("c1", "p2").is_ok());
        assert!(l.check("c1", "p3").is_err(), "client spent (2)");
    }

    #[test]
    fn an_empty_global_bucket_still_lets_a_fresh_prefix_in() {
        // Global burst 3 (and a reserve of 3 for fresh prefixes).
        let l = RegistrationLimiter::per_hour(100, 100, 1, 3);
        for i in 0..3 {
            assert!(l.check(&format!("a{i}"), "attacker").is_ok());
        }
        // The attacker's prefix has spent tokens: not fresh, refused on the empty global.
        for i in 3..20 {
            assert!(l.check(&format!("a{i}"), "attacker").is_err());
        }
        // A volunteer from another network is not refused.
        assert!(l.check("volunteer", "elsewhere").is_ok());
        // Once: the prefix is no longer fresh.
        assert!(l.check("volunteer2", "elsewhere").is_err());
        // Two more fresh prefixes fill the reserve; then even fresh ones wait for the refill.
        assert!(l.check("x", "fresh-1").is_ok());
        assert!(l.check("y", "fresh-2").is_ok());
        assert!(l.check("z", "fresh-3").is_err());
        // Refused clients left no key behind.
        assert_eq!(lock(&l.state).clients.len(), 6);
    }

    #[test]
    fn prefix_keys_group_ipv4_by_24_and_ipv6_by_48() {
        let k = ClientKeys::default();
        let p = |s: &str| k.prefix_key(s.parse().unwrap());
        assert_eq!(p("192.0.2.1"), p("192.0.2.200"));
        assert_eq!(p("192.0.2.1"), p("::ffff:192.0.2.9"));
        assert_ne!(p("192.0.2.1"), p("192.0.3.1"));
        assert_eq!(p("2001:db8:1::1"), p("2001:db8:1:ff::1"));
        assert_ne!(p("2001:db8:1::1"), p("2001:db8:2::1"));
        // Not the client key of the same address.
        assert_ne!(p("192.0.2.1"), k.key("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn keys_are_independent() {
        let l = KeyedLimiter::per_minute(1, 1);
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_err());
        assert!(l.check("b").is_ok());
    }
}
