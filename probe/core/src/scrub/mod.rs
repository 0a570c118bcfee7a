//! Removing the probe's own addresses from everything that is stored or printed.
//!
//! A volunteer's IP address identifies them. OONI learned that it leaks through error strings,
//! echoed headers and page titles, so every such text passes through here before it is recorded.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{LazyLock, RwLock};

use regex::Regex;

mod encodings;
pub mod record;

pub use encodings::Needles;

/// What replaces a scrubbed address.
pub const SCRUBBED: &str = "[scrubbed]";

static IPV4: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3}\b")
        .expect("static regex")
});

// Candidate IPv6 tokens; each is confirmed with the std parser so times like 12:30:45 stay.
static IPV6_CANDIDATE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*").expect("static regex")
});

/// Replace every IPv4 and IPv6 address in `text`. Used for error strings, where any address
/// might be ours.
pub fn scrub_ips(text: &str) -> String {
    // IPv6 first, so a v4-mapped address (::ffff:10.0.0.1) goes as one token.
    let v6 = IPV6_CANDIDATE.replace_all(text, |c: &regex::Captures<'_>| {
        let tok = &c[0];
        let trimmed = tok.trim_matches(|ch| ch == ':' || ch == '.');
        if tok.parse::<std::net::Ipv6Addr>().is_ok()
            || (trimmed.len() > 2 && trimmed.parse::<std::net::Ipv6Addr>().is_ok())
        {
            SCRUBBED.to_string()
        } else {
            tok.to_string()
        }
    });
    IPV4.replace_all(&v6, SCRUBBED).into_owned()
}

/// The addresses known to be the probe's own: its interfaces' addresses, the local socket
/// addresses seen during a run, the public address the control service saw (and, in the app,
/// the last ones learned). Shared by all measurements of a run.
#[derive(Debug, Default)]
pub struct OwnAddresses {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    addrs: BTreeSet<IpAddr>,
    /// Built on first use after a change: compiling the searches costs more than one text.
    needles: Option<std::sync::Arc<Needles>>,
    /// The public address the control service saw during this run, if it answered.
    public: Option<IpAddr>,
}

impl OwnAddresses {
    /// Remember an address as ours. Loopback and unspecified addresses are ignored: they
    /// identify nobody, and scrubbing them would hide lab results (see [`Self::declare`]).
    pub fn add(&self, ip: IpAddr) {
        if ip.is_unspecified() || ip.is_loopback() {
            return;
        }
        self.declare(ip);
    }

    /// Remember an address as ours even on loopback: the configured source address, which
    /// the probe's packets carry by definition.
    pub fn declare(&self, ip: IpAddr) {
        if ip.is_unspecified() {
            return;
        }
        if let Ok(mut inner) = self.inner.write() {
            if inner.addrs.insert(ip) {
                inner.needles = None;
            }
        }
    }

    /// The public address the control service saw: ours from now on, and proof that this
    /// run knows its public address (records are held back from upload until one is known).
    pub fn learn_public(&self, ip: IpAddr) {
        self.add(ip);
        if let Ok(mut inner) = self.inner.write() {
            inner.public = Some(ip);
        }
    }

    /// The public address learned during this run, if any.
    pub fn public(&self) -> Option<IpAddr> {
        self.inner.read().ok().and_then(|i| i.public)
    }

    /// Add the addresses of the interfaces that carry the default routes (IPv4 and IPv6),
    /// found by connecting a UDP socket, which sends nothing.
    pub fn add_local_interfaces(&self) {
        for probe in ["192.0.2.1:9", "[2001:db8::1]:9"] {
            let bind = if probe.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let local = std::net::UdpSocket::bind(bind)
                .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()));
            if let Ok(a) = local {
                self.add(a.ip());
            }
        }
    }

    /// Every address known as ours.
    pub fn all(&self) -> Vec<IpAddr> {
        self.inner
            .read()
            .map(|i| i.addrs.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The searches for our addresses.
    pub fn needles(&self) -> std::sync::Arc<Needles> {
        if let Some(n) = self.inner.read().ok().and_then(|i| i.needles.clone()) {
            return n;
        }
        let Ok(mut inner) = self.inner.write() else {
            return std::sync::Arc::new(Needles::new([]));
        };
        let n = std::sync::Arc::new(Needles::new(inner.addrs.iter().copied()));
        inner.needles = Some(n.clone());
        n
    }

    /// Replace our own addresses in `text`, in every encoding [`Needles`] knows, leaving other
    /// addresses (a server's) intact.
    pub fn scrub(&self, text: &str) -> String {
        self.needles().scrub(text)
    }

    /// Whether `ip` is one of ours.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.inner
            .read()
            .map(|s| s.addrs.contains(ip))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod ip_tests {
    use super::*;

    #[test]
    fn scrubs_v4_and_v6_but_not_times() {
        let cases = [
            ("peer 192.0.2.7:443 reset", "peer [scrubbed]:443 reset"),
            (
                "from fe80::1 and 2001:db8:0:1::5",
                "from [scrubbed] and [scrubbed]",
            ),
            ("at 12:30:45 nothing", "at 12:30:45 nothing"),
            ("version 1.2.3 ok", "version 1.2.3 ok"),
            ("::ffff:10.0.0.1", "[scrubbed]"),
        ];
        for (input, want) in cases {
            assert_eq!(scrub_ips(input), want, "input {input:?}");
        }
    }

    #[test]
    fn own_addresses_only() {
        let own = OwnAddresses::default();
        own.add("203.0.113.9".parse().unwrap());
        own.add("127.0.0.1".parse().unwrap());
        assert_eq!(
            own.scrub("you are 203.0.113.9, server 198.51.100.1, lo 127.0.0.1"),
            "you are [scrubbed], server 198.51.100.1, lo 127.0.0.1"
        );
    }
}
