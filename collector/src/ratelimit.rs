//! In-memory token buckets. Nothing here is persisted and keys are never logged. Uploads and
//! control requests have one bucket per probe id; open registration and failed invites one
//! bucket per client ([`ClientKeys`]: a salted hash of the address, never the address) under a
//! global bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

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

/// A bucket per key, with a bound on the number of keys kept.
#[derive(Debug)]
pub struct KeyedLimiter {
    burst: u32,
    per_sec: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl KeyedLimiter {
    /// `burst` requests at once, `per_minute` sustained, per key.
    pub fn per_minute(per_minute: u32, burst: u32) -> Self {
        KeyedLimiter {
            burst,
            per_sec: f64::from(per_minute) / 60.0,
            max_keys: 100_000,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Would [`check`](Self::check) succeed? Takes nothing: used to refuse early a client
    /// whose failures are spent, and [`check`](Self::check) then charges a failure.
    pub fn peek(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = match self.buckets.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        match map.get_mut(key) {
            None => Ok(()),
            Some(b) => {
                b.refill(now);
                if b.tokens >= 1.0 {
                    Ok(())
                } else {
                    let mut probe = b.clone();
                    probe.take(now)
                }
            }
        }
    }

    /// `burst` at once, `per_hour` sustained, per key.
    pub fn per_hour(per_hour: u32, burst: u32) -> Self {
        KeyedLimiter {
            burst,
            per_sec: f64::from(per_hour) / 3600.0,
            max_keys: 100_000,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take a token for `key`, or say how long to wait.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = match self.buckets.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= self.max_keys && !map.contains_key(key) {
            // Full buckets carry no state worth keeping.
            map.retain(|_, b| !b.is_full(now));
        }
        map.entry(key.to_string())
            .or_insert_with(|| TokenBucket::new(self.burst, self.per_sec))
            .take(now)
    }
}

/// One global bucket.
#[derive(Debug)]
pub struct GlobalLimiter(Mutex<TokenBucket>);

impl GlobalLimiter {
    /// `burst` at once, `per_hour` sustained.
    pub fn per_hour(per_hour: u32, burst: u32) -> Self {
        GlobalLimiter(Mutex::new(TokenBucket::new(
            burst,
            f64::from(per_hour) / 3600.0,
        )))
    }

    /// Take a token, or say how long to wait.
    pub fn check(&self) -> Result<(), Duration> {
        let mut b = match self.0.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        b.take(Instant::now())
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
    fn keys_are_independent() {
        let l = KeyedLimiter::per_minute(1, 1);
        assert!(l.check("a").is_ok());
        assert!(l.check("a").is_err());
        assert!(l.check("b").is_ok());
    }
}
