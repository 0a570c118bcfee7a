//! The closed failure taxonomy shared by the probe, the control service and the collector.
//!
//! A network failure is data, not an error: every step records what failed under one of these
//! stable names, so that analyses and dashboards can group them. Anything we cannot classify
//! becomes `unknown_failure: <text>` with every IP address scrubbed from the text.

use std::fmt;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What went wrong in one measurement step.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The resolver said the name does not exist.
    DnsNxdomain,
    /// The resolver answered, but with no address for the name.
    DnsNoAnswer,
    /// The resolver answered SERVFAIL.
    DnsServfail,
    /// The resolver refused the query.
    DnsRefused,
    /// No answer from the resolver within the timeout.
    DnsTimeout,
    /// The resolver's answer could not be parsed (garbage instead of DNS).
    DnsBadResponse,
    /// The peer refused the connection (RST on SYN, or nothing listening).
    ConnectionRefused,
    /// The connection was reset after it was established.
    ConnectionReset,
    /// The host is unreachable (ICMP, or no route).
    HostUnreachable,
    /// The local network is unreachable: no route at all, typically no uplink.
    NetworkUnreachable,
    /// An operation did not complete within its timeout.
    GenericTimeout,
    /// The peer closed the connection unexpectedly.
    Eof,
    /// The certificate chain does not lead to a trusted root.
    SslUnknownAuthority,
    /// The certificate is not valid for the requested name.
    SslInvalidHostname,
    /// The certificate is otherwise invalid (expired, not yet valid, malformed, revoked).
    SslInvalidCertificate,
    /// The TLS handshake failed (alert, protocol error, garbage instead of TLS).
    SslFailedHandshake,
    /// The server's HTTP response could not be parsed, or its headers were too large.
    HttpInvalidResponse,
    /// More redirects than the limit, or a redirect loop.
    HttpTooManyRedirects,
    /// A redirect to a URL we cannot follow (bad Location, unsupported scheme).
    HttpInvalidRedirect,
    /// The step was not attempted because the network looks cut off.
    NetworkOffline,
    /// The target's total deadline ran out while this step (or redirect hop) was running: a
    /// budget spent, not a failure of the network or the site by itself.
    DeadlineExceeded,
    /// Anything else, with IP addresses scrubbed from the text.
    Unknown(String),
}

const NAMES: &[(&str, Failure)] = &[
    ("dns_nxdomain", Failure::DnsNxdomain),
    ("dns_no_answer", Failure::DnsNoAnswer),
    ("dns_servfail", Failure::DnsServfail),
    ("dns_refused", Failure::DnsRefused),
    ("dns_timeout", Failure::DnsTimeout),
    ("dns_bad_response", Failure::DnsBadResponse),
    ("connection_refused", Failure::ConnectionRefused),
    ("connection_reset", Failure::ConnectionReset),
    ("host_unreachable", Failure::HostUnreachable),
    ("network_unreachable", Failure::NetworkUnreachable),
    ("generic_timeout", Failure::GenericTimeout),
    ("eof", Failure::Eof),
    ("ssl_unknown_authority", Failure::SslUnknownAuthority),
    ("ssl_invalid_hostname", Failure::SslInvalidHostname),
    ("ssl_invalid_certificate", Failure::SslInvalidCertificate),
    ("ssl_failed_handshake", Failure::SslFailedHandshake),
    ("http_invalid_response", Failure::HttpInvalidResponse),
    ("http_too_many_redirects", Failure::HttpTooManyRedirects),
    ("http_invalid_redirect", Failure::HttpInvalidRedirect),
    ("network_offline", Failure::NetworkOffline),
    ("deadline_exceeded", Failure::DeadlineExceeded),
];

/// Prefix of the catch-all failure name.
pub const UNKNOWN_PREFIX: &str = "unknown_failure";

/// Longest text kept in an `unknown_failure`, so a hostile peer cannot bloat records.
const MAX_UNKNOWN_LEN: usize = 200;

impl Failure {
    /// Every named failure (without the catch-all), for documentation and validation.
    pub fn all_names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(n, _)| *n)
    }

    /// The stable name, without any detail (`unknown_failure` for the catch-all).
    pub fn name(&self) -> &'static str {
        match self {
            Failure::Unknown(_) => UNKNOWN_PREFIX,
            other => NAMES
                .iter()
                .find(|(_, f)| f == other)
                .map(|(n, _)| *n)
                .unwrap_or(UNKNOWN_PREFIX),
        }
    }

    /// A catch-all failure with IP addresses scrubbed and the text bounded.
    pub fn unknown(text: impl AsRef<str>) -> Self {
        let mut s = crate::scrub::scrub_ips(text.as_ref());
        if s.len() > MAX_UNKNOWN_LEN {
            let mut end = MAX_UNKNOWN_LEN;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
        }
        Failure::Unknown(s)
    }

    /// Failures that mean "the network interfered or the peer went away mid-exchange",
    /// as opposed to a certificate problem.
    pub fn is_interruption(&self) -> bool {
        matches!(
            self,
            Failure::ConnectionReset
                | Failure::GenericTimeout
                | Failure::Eof
                | Failure::SslFailedHandshake
                | Failure::ConnectionRefused
        )
    }

    /// Failures of certificate validation.
    pub fn is_certificate(&self) -> bool {
        matches!(
            self,
            Failure::SslUnknownAuthority
                | Failure::SslInvalidHostname
                | Failure::SslInvalidCertificate
        )
    }

    /// Failures that say the local network itself is unusable.
    pub fn is_local_network(&self) -> bool {
        matches!(self, Failure::NetworkUnreachable | Failure::NetworkOffline)
    }

    /// Classify an I/O error from a socket operation.
    pub fn from_io(err: &io::Error) -> Self {
        use io::ErrorKind as K;
        match err.kind() {
            K::ConnectionRefused => Failure::ConnectionRefused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Failure::ConnectionReset,
            K::TimedOut | K::WouldBlock => Failure::GenericTimeout,
            K::UnexpectedEof => Failure::Eof,
            K::HostUnreachable => Failure::HostUnreachable,
            K::NetworkUnreachable | K::AddrNotAvailable | K::NetworkDown => {
                Failure::NetworkUnreachable
            }
            _ => {
                // Raw OS errors the std kinds do not cover on every platform.
                match err.raw_os_error() {
                    Some(101) => Failure::NetworkUnreachable, // ENETUNREACH
                    Some(113) => Failure::HostUnreachable,    // EHOSTUNREACH
                    Some(104) => Failure::ConnectionReset,    // ECONNRESET
                    Some(111) => Failure::ConnectionRefused,  // ECONNREFUSED
                    Some(110) => Failure::GenericTimeout,     // ETIMEDOUT
                    _ => {
                        // rustls wraps its errors in io::Error; look inside.
                        if let Some(inner) = err.get_ref() {
                            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                                return Failure::from_rustls(tls);
                            }
                        }
                        Failure::unknown(err.to_string())
                    }
                }
            }
        }
    }

    /// Classify a rustls error (handshake or certificate).
    pub fn from_rustls(err: &rustls::Error) -> Self {
        use rustls::CertificateError as C;
        match err {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => {
                    Failure::SslUnknownAuthority
                }
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    Failure::SslInvalidHostname
                }
                _ => Failure::SslInvalidCertificate,
            },
            rustls::Error::AlertReceived(_)
            | rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::PeerIncompatible(_)
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::DecryptError
            | rustls::Error::NoCertificatesPresented => Failure::SslFailedHandshake,
            other => Failure::unknown(other.to_string()),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unknown(text) => write!(f, "{UNKNOWN_PREFIX}: {text}"),
            other => f.write_str(other.name()),
        }
    }
}

/// Parsing a failure name fails for names outside the taxonomy.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown failure name {0:?}: expected one of the documented names or `unknown_failure: ...`"
)]
pub struct UnknownFailureName(String);

impl FromStr for Failure {
    type Err = UnknownFailureName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some((_, f)) = NAMES.iter().find(|(n, _)| *n == s) {
            return Ok(f.clone());
        }
        if let Some(rest) = s.strip_prefix(UNKNOWN_PREFIX) {
            let rest = rest.strip_prefix(':').unwrap_or(rest).trim_start();
            return Ok(Failure::unknown(rest));
        }
        Err(UnknownFailureName(s.chars().take(80).collect()))
    }
}

impl Serialize for Failure {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Failure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in Failure::all_names() {
            let f: Failure = name.parse().unwrap();
            assert_eq!(f.to_string(), name);
            assert_eq!(f.name(), name);
        }
    }

    #[test]
    fn unknown_is_scrubbed_and_bounded() {
        let f = Failure::unknown("connect to 10.1.2.3:443 and 2001:db8::1 failed");
        let s = f.to_string();
        assert!(s.starts_with("unknown_failure: "), "{s}");
        assert!(!s.contains("10.1.2.3"), "{s}");
        assert!(!s.contains("2001:db8::1"), "{s}");
        let long = Failure::unknown("é".repeat(1000));
        assert!(long.to_string().len() <= MAX_UNKNOWN_LEN + 20);
    }

    #[test]
    fn unknown_names_are_rejected() {
        assert!("dns_whatever".parse::<Failure>().is_err());
        assert_eq!(
            "unknown_failure: boom".parse::<Failure>().unwrap(),
            Failure::Unknown("boom".into())
        );
    }

    #[test]
    fn io_errors_are_classified() {
        let cases = [
            (io::ErrorKind::ConnectionRefused, "connection_refused"),
            (io::ErrorKind::ConnectionReset, "connection_reset"),
            (io::ErrorKind::TimedOut, "generic_timeout"),
            (io::ErrorKind::UnexpectedEof, "eof"),
        ];
        for (kind, name) in cases {
            assert_eq!(Failure::from_io(&io::Error::from(kind)).name(), name);
        }
        assert_eq!(
            Failure::from_io(&io::Error::from_raw_os_error(101)).name(),
            "network_unreachable"
        );
    }
}
