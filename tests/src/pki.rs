//! The lab's certificates: a trusted lab CA, per-site leaves, an expired leaf, and an untrusted
//! "state" CA that imitates Kazakhstan's interception chain (root `C=KZ, CN=Qaznet Trust Network`,
//! intermediate `C=KZ, CN=Security Certificate`, Raman et al., IMC 2020).
//!
//! The probe trusts the lab CA through `--extra-ca FILE` ([`LabPki::write_ca_pem`]); it never
//! trusts the state CA, exactly as browsers do not.
//!
//! All keys are ECDSA P-256: rcgen cannot generate RSA keys with the ring backend. The real state
//! chain used RSA 2048/4096; the probe must recognise the chain by its names, not its key type.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// Common name of the lab CA the probe is told to trust.
pub const LAB_CA_NAME: &str = "Witness Lab Root CA";
/// Common name of the imitated Kazakh state root (2016-2046 in reality, as here).
pub const STATE_ROOT_NAME: &str = "Qaznet Trust Network";
/// Common name of the imitated Kazakh intermediate that signs forged leaves.
pub const STATE_INTERMEDIATE_NAME: &str = "Security Certificate";

/// The ring crypto provider every lab TLS endpoint uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// All certificate authorities of one lab.
pub struct LabPki {
    ca: CertifiedIssuer<'static, KeyPair>,
    state_root: CertifiedIssuer<'static, KeyPair>,
    state_intermediate: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for LabPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabPki").finish_non_exhaustive()
    }
}

/// The three certificates a site can present, each as a ready `ServerConfig` whose resolver
/// picks the certificate by SNI.
#[derive(Clone, Debug)]
pub struct TlsConfigs {
    /// Valid leaves signed by the lab CA.
    pub valid: Arc<ServerConfig>,
    /// Leaves signed by the lab CA that expired a month ago.
    pub expired: Arc<ServerConfig>,
    /// Forged leaves (same subject and SAN) from the state intermediate, chain leaf + intermediate.
    pub forged: Arc<ServerConfig>,
}

impl LabPki {
    /// Generates a fresh lab CA and a fresh state chain.
    pub fn new() -> Result<Self> {
        let now = OffsetDateTime::now_utc();
        let ca = CertifiedIssuer::self_signed(
            ca_params(
                &[
                    (DnType::OrganizationName, "Witness Lab"),
                    (DnType::CommonName, LAB_CA_NAME),
                ],
                now - Duration::days(1),
                now + Duration::days(3650),
            ),
            KeyPair::generate()?,
        )?;
        let state_root = CertifiedIssuer::self_signed(
            ca_params(
                &[
                    (DnType::CountryName, "KZ"),
                    (DnType::CommonName, STATE_ROOT_NAME),
                ],
                rcgen::date_time_ymd(2016, 2, 2),
                rcgen::date_time_ymd(2046, 2, 2),
            ),
            KeyPair::generate()?,
        )?;
        let state_intermediate = CertifiedIssuer::signed_by(
            ca_params(
                &[
                    (DnType::CountryName, "KZ"),
                    (DnType::CommonName, STATE_INTERMEDIATE_NAME),
                ],
                rcgen::date_time_ymd(2016, 2, 2),
                rcgen::date_time_ymd(2046, 2, 2),
            ),
            KeyPair::generate()?,
            &state_root,
        )?;
        Ok(Self {
            ca,
            state_root,
            state_intermediate,
        })
    }

    /// The lab CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The lab CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// Writes the lab CA PEM to `path` (what the probe reads with `--extra-ca`).
    pub fn write_ca_pem(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.ca_pem()).with_context(|| format!("writing {}", path.display()))
    }

    /// A root store that trusts only the lab CA, for test clients.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca_der())
            .expect("the lab CA is a well-formed certificate");
        roots
    }

    /// The imitated state root, DER (never sent by the MITM, never trusted).
    pub fn state_root_der(&self) -> CertificateDer<'static> {
        self.state_root.der().clone()
    }

    /// The imitated state intermediate, DER.
    pub fn state_intermediate_der(&self) -> CertificateDer<'static> {
        self.state_intermediate.der().clone()
    }

    /// A valid leaf for `names` (first name is the subject CN), signed by the lab CA.
    pub fn leaf(&self, names: &[&str]) -> Result<Arc<CertifiedKey>> {
        let now = OffsetDateTime::now_utc();
        let (not_before, not_after) = (now - Duration::days(1), now + Duration::days(90));
        self.issue(names, not_before, not_after, &self.ca, Vec::new())
    }

    /// A valid leaf for `names` signed by the lab CA, as PEM (certificate, PKCS#8 key): for
    /// servers that read files, such as the lab's unbound (DoH, DoT).
    pub fn leaf_pem(&self, names: &[&str]) -> Result<(String, String)> {
        let now = OffsetDateTime::now_utc();
        let first = names.first().context("a leaf needs at least one name")?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *first);
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(90);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A leaf for `names` that expired 30 days ago, signed by the lab CA.
    pub fn expired_leaf(&self, names: &[&str]) -> Result<Arc<CertifiedKey>> {
        let now = OffsetDateTime::now_utc();
        let (not_before, not_after) = (now - Duration::days(400), now - Duration::days(30));
        self.issue(names, not_before, not_after, &self.ca, Vec::new())
    }

    /// A forged leaf for `names` copying the real subject and SAN, signed by the state
    /// intermediate; the chain sent is leaf + intermediate, as an intercepting middlebox does.
    pub fn forged_leaf(&self, names: &[&str]) -> Result<Arc<CertifiedKey>> {
        let now = OffsetDateTime::now_utc();
        let (not_before, not_after) = (now - Duration::days(1), now + Duration::days(90));
        let intermediate = vec![self.state_intermediate_der()];
        self.issue(
            names,
            not_before,
            not_after,
            &self.state_intermediate,
            intermediate,
        )
    }

    /// Server configs for a listener hosting `sites` (each a list of names; the first site is
    /// the default when the client sends no or an unknown SNI).
    pub fn tls_configs(&self, sites: &[Vec<String>]) -> Result<TlsConfigs> {
        let build = |issue: &dyn Fn(&[&str]) -> Result<Arc<CertifiedKey>>| -> Result<_> {
            let mut resolver = SniResolver::default();
            for names in sites {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                resolver.insert(&names, issue(&names)?);
            }
            server_config(Arc::new(resolver))
        };
        Ok(TlsConfigs {
            valid: build(&|n| self.leaf(n))?,
            expired: build(&|n| self.expired_leaf(n))?,
            forged: build(&|n| self.forged_leaf(n))?,
        })
    }

    fn issue(
        &self,
        names: &[&str],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        issuer: &Issuer<'static, KeyPair>,
        rest_of_chain: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<CertifiedKey>> {
        let first = names.first().context("a leaf needs at least one name")?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *first);
        params.not_before = not_before;
        params.not_after = not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(rest_of_chain);
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok(Arc::new(CertifiedKey::from_der(
            chain,
            key_der,
            &provider(),
        )?))
    }
}

fn ca_params(
    subject: &[(DnType, &str)],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for (ty, value) in subject {
        params.distinguished_name.push(ty.clone(), *value);
    }
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// Chooses a certificate by SNI, like a virtual-hosting web server; without SNI, or with an
/// unknown one, it presents the first site's certificate (the client then sees a name mismatch).
#[derive(Debug, Default)]
pub struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Presents `key` for each of `names` (case-insensitive).
    pub fn insert(&mut self, names: &[&str], key: Arc<CertifiedKey>) {
        for name in names {
            self.by_name.insert(name.to_ascii_lowercase(), key.clone());
        }
        self.default.get_or_insert(key);
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        client_hello
            .server_name()
            .and_then(|sni| self.by_name.get(&sni.to_ascii_lowercase()))
            .or(self.default.as_ref())
            .cloned()
    }
}

/// A TLS 1.2/1.3 server config on the ring provider, offering HTTP/1.1 over ALPN.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
