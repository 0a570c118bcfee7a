//! TLS: handshake with the target's SNI on a measured TCP connection, record the chain the
//! server presented whatever it is, and verify it separately.
//!
//! Verification is done after the handshake, not inside it, so a chain that does not verify
//! (a state interception CA, an expired certificate) is still recorded and the HTTP step can
//! still see what the interceptor serves. The handshake itself still checks the server's
//! signature over the transcript, so a peer cannot fake a key it does not hold.
//!
//! The ClientHello is deliberately small: rustls with the `ring` provider offers X25519 and
//! P-256 key shares, no post-quantum share. A ~1.5 kB post-quantum ClientHello can split the SNI
//! over two TCP segments, which per-packet DPI (and the lab's string match) would miss, and the
//! probe would then see a different network from the one its users' browsers see.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{ms_since, MeasureConfig};
use crate::error::SetupError;
use crate::failure::Failure;
use crate::model::{CertificateInfo, TlsObservation};

/// Most certificates of a chain recorded.
const MAX_CHAIN: usize = 8;
/// Most SAN names recorded per certificate.
const MAX_SAN: usize = 16;

/// Known state interception CAs of Kazakhstan, matched on the names in a chain.
///
/// Sources: Raman et al., IMC 2020 (2019 campaign: root `C=KZ, CN=Qaznet Trust Network`,
/// intermediate `C=KZ, CN=Security Certificate`); Dec 2020 root `Information Security
/// Certification Authority CA`; OONI 2024 (issuer `C=KZ, O=ISCA, CN=Information Security
/// Certification Authority`). Each entry: (label, required substrings of a subject or issuer).
pub const INTERCEPTION_CAS: &[(&str, &[&str])] = &[
    ("Qaznet Trust Network", &["CN=Qaznet Trust Network"]),
    (
        "Security Certificate (KZ)",
        &["C=KZ", "CN=Security Certificate"],
    ),
    (
        "Information Security Certification Authority CA",
        &["CN=Information Security Certification Authority CA"],
    ),
    (
        "ISCA (KZ)",
        &["C=KZ", "CN=Information Security Certification Authority"],
    ),
];

/// SHA-256 of SubjectPublicKeyInfo of known interception keys (label, hex). The public reports
/// give names and validity, not key hashes, so this starts empty; `interception_spki` in the
/// configuration adds keys as they become known.
pub const INTERCEPTION_SPKI: &[(&str, &str)] = &[];

/// The crypto provider: ring, see the module docs for why.
pub fn provider() -> Arc<CryptoProvider> {
    static P: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    P.clone()
}

/// Trusted roots: Mozilla's (webpki-roots) plus the configured extra CAs.
pub fn root_store(cfg: &MeasureConfig) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for ca in &cfg.extra_cas {
        // A bad extra CA was already rejected when the config was loaded.
        let _ = roots.add(ca.clone());
    }
    roots
}

/// A normal verifying client configuration (for DoH/DoT and the control client).
pub fn verifying_client_config(cfg: &MeasureConfig) -> Result<ClientConfig, SetupError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(cfg))
        .with_no_client_auth())
}

/// Per-run TLS state: the recording client configuration and the verifier used afterwards.
#[derive(Clone)]
pub struct TlsContext {
    connector: TlsConnector,
    /// The same client without the SNI extension, for the A/B test's nameless ClientHello.
    no_sni: TlsConnector,
    verifier: Arc<WebPkiServerVerifier>,
    extra_spki: Vec<(String, String)>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("extra_spki", &self.extra_spki)
            .finish_non_exhaustive()
    }
}

impl TlsContext {
    /// Build from the measurement configuration.
    pub fn new(cfg: &MeasureConfig) -> Result<Self, SetupError> {
        Self::with_roots(root_store(cfg))
    }

    /// Like [`TlsContext::new`], verifying against these roots instead of Mozilla's (an app
    /// with its own CA, as Signal).
    pub fn with_roots(roots: RootCertStore) -> Result<Self, SetupError> {
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordingVerifier::new(provider())))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every handshake is a fresh measurement: no resumption that would skip the certificate.
        config.resumption = rustls::client::Resumption::disabled();
        let mut nameless = config.clone();
        nameless.enable_sni = false;
        Ok(TlsContext {
            connector: TlsConnector::from(Arc::new(config)),
            no_sni: TlsConnector::from(Arc::new(nameless)),
            verifier,
            extra_spki: Vec::new(),
        })
    }

    /// Add interception keys from the configuration (label, SPKI SHA-256 hex).
    pub fn with_interception_spki(mut self, keys: Vec<(String, String)>) -> Self {
        self.extra_spki = keys;
        self
    }

    /// Handshake on `stream` with `server_name` as SNI; returns the observation and, when the
    /// handshake completed, the stream for the HTTP step.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        server_name: &str,
        decoy: bool,
        cfg: &MeasureConfig,
        t0: Instant,
    ) -> (TlsObservation, Option<TlsStream<TcpStream>>) {
        let mut obs = TlsObservation {
            addr,
            server_name: server_name.to_string(),
            decoy,
            t_ms: ms_since(t0),
            duration_ms: 0.0,
            failure: None,
            tls_version: None,
            cipher_suite: None,
            peer_certificates: vec![],
            verification_failure: None,
            interception_ca: None,
        };
        let sni = match ServerName::try_from(server_name.to_string()) {
            Ok(n) => n,
            Err(e) => {
                obs.failure = Some(Failure::unknown(format!("bad server name: {e}")));
                return (obs, None);
            }
        };
        let start = Instant::now();
        let res =
            tokio::time::timeout(cfg.timeout, self.connector.connect(sni.clone(), stream)).await;
        obs.duration_ms = ms_since(start);
        let tls = match res {
            Err(_) => {
                obs.failure = Some(Failure::GenericTimeout);
                return (obs, None);
            }
            Ok(Err(e)) => {
                obs.failure = Some(Failure::from_io(&e));
                return (obs, None);
            }
            Ok(Ok(s)) => s,
        };
        let (_, conn) = tls.get_ref();
        obs.tls_version = conn.protocol_version().map(|v| format!("{v:?}"));
        obs.cipher_suite = conn
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite()));
        let chain: Vec<CertificateDer<'static>> = conn
            .peer_certificates()
            .map(|c| {
                c.iter()
                    .take(MAX_CHAIN)
                    .map(|c| c.clone().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        obs.peer_certificates = chain.iter().map(|c| describe(c)).collect();
        obs.verification_failure = self.verify(&chain, &sni);
        obs.interception_ca = self.interception_ca(&obs.peer_certificates);
        (obs, Some(tls))
    }

    /// A handshake for the A/B test on `stream`: `sni` is sent (`None`: no SNI extension at
    /// all), and the chain presented is verified for `site`, the site's own name, whatever was
    /// sent. Bounded by `timeout`; the connection is dropped afterwards.
    pub async fn bare_handshake(
        &self,
        stream: TcpStream,
        sni: Option<&str>,
        site: &str,
        timeout: std::time::Duration,
    ) -> BareHandshake {
        let mut out = BareHandshake::default();
        let (connector, name) = match sni {
            Some(n) => (&self.connector, n),
            None => (&self.no_sni, site),
        };
        let (Ok(sent), Ok(site_name)) = (
            ServerName::try_from(name.to_string()),
            ServerName::try_from(site.to_string()),
        ) else {
            out.failure = Some(Failure::unknown("bad server name"));
            return out;
        };
        let tls = match tokio::time::timeout(timeout, connector.connect(sent, stream)).await {
            Err(_) => {
                out.failure = Some(Failure::GenericTimeout);
                return out;
            }
            Ok(Err(e)) => {
                out.failure = Some(Failure::from_io(&e));
                return out;
            }
            Ok(Ok(s)) => s,
        };
        let chain: Vec<CertificateDer<'static>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| {
                c.iter()
                    .take(MAX_CHAIN)
                    .map(|c| c.clone().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let described: Vec<CertificateInfo> = chain.iter().map(|c| describe(c)).collect();
        out.leaf_sha256 = described.first().map(|c| c.sha256.clone());
        out.valid_for_site = self.verify(&chain, &site_name).is_none();
        out.interception_ca = self.interception_ca(&described);
        out
    }

    /// Verify a chain against the trusted roots; `None` when it verifies.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        name: &ServerName<'_>,
    ) -> Option<Failure> {
        let Some((leaf, rest)) = chain.split_first() else {
            return Some(Failure::SslInvalidCertificate);
        };
        match self
            .verifier
            .verify_server_cert(leaf, rest, name, &[], UnixTime::now())
        {
            Ok(_) => None,
            Err(e) => Some(Failure::from_rustls(&e)),
        }
    }

    /// The known interception CA a chain belongs to, by name or by key.
    pub fn interception_ca(&self, chain: &[CertificateInfo]) -> Option<String> {
        for cert in chain {
            for (label, needles) in INTERCEPTION_CAS {
                for dn in [&cert.subject, &cert.issuer] {
                    if needles.iter().all(|n| dn_contains(dn, n)) {
                        return Some((*label).to_string());
                    }
                }
            }
            let known = INTERCEPTION_SPKI
                .iter()
                .map(|(l, h)| (l.to_string(), h.to_string()))
                .chain(self.extra_spki.iter().cloned());
            for (label, hash) in known {
                if cert.spki_sha256.eq_ignore_ascii_case(&hash) {
                    return Some(label);
                }
            }
        }
        None
    }
}

/// What one A/B handshake got (see [`TlsContext::bare_handshake`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BareHandshake {
    /// Why the handshake failed; `None` when it completed, whatever the certificate.
    pub failure: Option<Failure>,
    /// SHA-256 of the leaf presented, hex.
    pub leaf_sha256: Option<String>,
    /// Whether the chain verifies for the site's name.
    pub valid_for_site: bool,
    /// The known state interception CA the chain leads to, if any.
    pub interception_ca: Option<String>,
}

/// Whether an RFC 4514 style DN contains the attribute `needle` (e.g. `C=KZ`) as a whole
/// component, case-insensitively, whatever the separators.
fn dn_contains(dn: &str, needle: &str) -> bool {
    dn.split([',', '+'])
        .map(str::trim)
        .any(|part| part.eq_ignore_ascii_case(needle))
}

/// Describe one certificate; unparseable certificates still get their fingerprint.
pub fn describe(der: &CertificateDer<'_>) -> CertificateInfo {
    let sha256 = hex::encode(Sha256::digest(der.as_ref()));
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, cert)) => {
            let san = cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .filter_map(|g| match g {
                            x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
                            _ => None,
                        })
                        .take(MAX_SAN)
                        .collect()
                })
                .unwrap_or_default();
            let ts = |t: x509_parser::time::ASN1Time| {
                chrono::DateTime::from_timestamp(t.timestamp(), 0).map(|d| d.to_rfc3339())
            };
            CertificateInfo {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                sha256,
                spki_sha256: hex::encode(Sha256::digest(cert.public_key().raw)),
                not_before: ts(cert.validity().not_before),
                not_after: ts(cert.validity().not_after),
                san,
            }
        }
        Err(_) => CertificateInfo {
            subject: String::new(),
            issuer: String::new(),
            sha256,
            spki_sha256: String::new(),
            not_before: None,
            not_after: None,
            san: vec![],
        },
    }
}

pub use danger::RecordingVerifier;

/// The verifier that accepts any chain so it can be recorded. Dangerous by design; only used
/// for measurement connections (and by the test suites to inspect untrusted chains), never for
/// uploads or the control client.
mod danger {
    use super::*;

    /// Accepts every certificate chain (the measurement verifies it afterwards with
    /// [`TlsContext::verify`]); still checks the handshake signatures with `provider`.
    #[derive(Debug)]
    pub struct RecordingVerifier {
        provider: Arc<CryptoProvider>,
    }

    impl RecordingVerifier {
        /// A verifier whose handshake signatures are checked with `provider`'s algorithms.
        pub fn new(provider: Arc<CryptoProvider>) -> Self {
            RecordingVerifier { provider }
        }
    }

    impl ServerCertVerifier for RecordingVerifier {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(subject: &str, issuer: &str) -> CertificateInfo {
        CertificateInfo {
            subject: subject.into(),
            issuer: issuer.into(),
            sha256: String::new(),
            spki_sha256: "ab".into(),
            not_before: None,
            not_after: None,
            san: vec![],
        }
    }

    #[test]
    fn state_cas_are_recognised_by_name() {
        let ctx = TlsContext::new(&MeasureConfig::default()).unwrap();
        let cases = [
            (
                "CN=www.facebook.com",
                "C=KZ, CN=Security Certificate",
                Some("Security Certificate (KZ)"),
            ),
            (
                "C=KZ, CN=Security Certificate",
                "C=KZ, CN=Qaznet Trust Network",
                Some("Qaznet Trust Network"),
            ),
            (
                "CN=x",
                "C=KZ, O=ISCA, CN=Information Security Certification Authority",
                Some("ISCA (KZ)"),
            ),
            (
                "CN=x",
                "CN=Information Security Certification Authority CA",
                Some("Information Security Certification Authority CA"),
            ),
            ("CN=x", "C=US, CN=Security Certificate", None),
            ("CN=example.com", "C=US, O=Let's Encrypt, CN=R3", None),
        ];
        for (subject, issuer, want) in cases {
            assert_eq!(
                ctx.interception_ca(&[info(subject, issuer)]).as_deref(),
                want,
                "{subject} / {issuer}"
            );
        }
        let by_key = ctx
            .clone()
            .with_interception_spki(vec![("lab key".into(), "AB".into())]);
        assert_eq!(
            by_key.interception_ca(&[info("CN=x", "CN=y")]).as_deref(),
            Some("lab key")
        );
    }
}
