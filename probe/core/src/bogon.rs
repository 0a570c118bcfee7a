//! Bogon addresses: those that no public site can have. A DNS answer pointing at one is a classic
//! sign of tampering, and the control service refuses to measure them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Reserved IPv4 ranges (RFC 6890 and friends).
const V4_BOGONS: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(100, 64, 0, 0), 10),
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 0, 0, 0), 24),
    (Ipv4Addr::new(192, 0, 2, 0), 24),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(198, 18, 0, 0), 15),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// Decides whether an address is a bogon, with ranges a lab declared public.
#[derive(Clone, Debug, Default)]
pub struct BogonFilter {
    /// Ranges treated as public although they are reserved (for labs built in 198.18.0.0/15).
    /// Empty by default.
    pub lab_public: Vec<IpNet>,
}

impl BogonFilter {
    /// A filter that treats `lab_public` as public.
    pub fn new(lab_public: Vec<IpNet>) -> Self {
        BogonFilter { lab_public }
    }

    /// True when `ip` cannot be a public server's address.
    pub fn is_bogon(&self, ip: IpAddr) -> bool {
        if self.lab_public.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        is_bogon(ip)
    }
}

/// True when `ip` is in a reserved, private, loopback, link-local, multicast or documentation
/// range.
pub fn is_bogon(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_bogon(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_bogon(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_unspecified()
                || v6.is_loopback()
                || (seg0 & 0xfe00) == 0xfc00 // unique local
                || (seg0 & 0xffc0) == 0xfe80 // link local
                || (seg0 & 0xff00) == 0xff00 // multicast
                || (seg0 == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)
                || (seg0 & 0xe000) != 0x2000 // outside global unicast 2000::/3
        }
    }
}

fn v4_bogon(ip: Ipv4Addr) -> bool {
    let n = u32::from(ip);
    V4_BOGONS.iter().any(|(net, len)| {
        let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
        n & mask == u32::from(*net) & mask
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("10.1.2.3", true),
            ("127.0.0.1", true),
            ("192.168.1.1", true),
            ("198.18.0.5", true),
            ("198.20.0.1", false),
            ("8.8.8.8", false),
            ("2a00:1450:4001::1", false),
            ("::1", true),
            ("fe80::1", true),
            ("fd00::1", true),
            ("::ffff:10.0.0.1", true),
        ];
        for (ip, want) in cases {
            assert_eq!(is_bogon(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn lab_ranges_are_public_only_when_declared() {
        let ip: IpAddr = "198.18.1.1".parse().unwrap();
        assert!(BogonFilter::default().is_bogon(ip));
        assert!(!BogonFilter::new(vec!["198.18.0.0/15".parse().unwrap()]).is_bogon(ip));
    }
}
