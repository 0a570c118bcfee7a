//! App and tool tests: messaging apps endpoint by endpoint (as OONI's Telegram, WhatsApp,
//! Signal and Facebook Messenger tests), Tor (directory authorities, default bridges,
//! Snowflake), and VPN and proxy protocols against a Witness protocol reflector.
//!
//! The rooms: [`probe`] the I/O of stream endpoints (TCP, TLS, HTTPS, Tor's DirPort);
//! [`verdict`] the pure verdict. The lists are read by [`crate::targets::apps`], the engine
//! runs them (`engine/apps.rs`), and the records are ordinary [`crate::model::Measurement`]s
//! with an `app` part, so they take the same spool, upload and collector series as websites.

pub mod probe;
pub mod protocols;
pub mod reflect;
pub mod verdict;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Signal's CA roots, as OONI's Signal test embeds them (ooni/spec ts-029-signal,
/// 2023-12-01-001): Signal's service certificates chain to these, not to the web PKI.
pub const SIGNAL_CA_PEM: &str = include_str!("signal-ca.pem");

/// Signal's roots, parsed.
pub fn signal_roots() -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(SIGNAL_CA_PEM.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn signal_roots_parse() {
        assert_eq!(super::signal_roots().len(), 2);
    }
}
