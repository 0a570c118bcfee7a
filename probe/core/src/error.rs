//! Typed errors at the core's boundary: what the app and the collector can get back from the
//! core, each variant saying what was wrong. Network failures during a measurement are not
//! errors: they are data, recorded in the closed failure taxonomy ([`crate::failure`]).

use crate::scrub::scrub_ips;

/// The engine (or one of its parts) could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// rustls refused the TLS configuration (protocol versions, provider).
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The certificate verifier could not be built from the root store.
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    /// The encrypted control resolver could not be built.
    #[error("cannot build the control resolver {resolver}: {message}")]
    ControlResolver {
        /// The resolver, as configured (`NAME@IP:PORT`).
        resolver: String,
        /// The resolver library's message.
        message: String,
    },
}

/// The control service could not be asked, or did not answer usably. The text never carries
/// an IP address (it may end up in a measurement's `control_failure`).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The HTTP client could not be built.
    #[error("cannot build the control client: {0}")]
    Client(#[source] reqwest::Error),
    /// The control URL and an API path do not make a URL.
    #[error("bad control URL: {0}")]
    BadUrl(#[from] url::ParseError),
    /// The request failed before an answer (timeout, connect, transport).
    #[error("control service {kind}: {detail}")]
    Request {
        /// `timed out`, `could not connect` or `request failed`.
        kind: &'static str,
        /// The client's message, addresses scrubbed.
        detail: String,
    },
    /// The service answered with an error status.
    #[error("control service answered HTTP {status}{}", .body.as_deref().map(|b| format!(": {b}")).unwrap_or_default())]
    Status {
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body, addresses scrubbed, when there was one.
        body: Option<String>,
    },
    /// The answer was larger than the probe accepts.
    #[error("control answer too large (over {0} bytes)")]
    TooLarge(usize),
    /// No answer before the target's deadline (plus a grace period).
    #[error("control service did not answer within the target's deadline")]
    Deadline,
    /// The answer is not a control reply.
    #[error("control answer is not valid: {0}")]
    Invalid(#[source] serde_json::Error),
}

impl ControlError {
    /// From a request error, classified and scrubbed of addresses.
    pub(crate) fn request(e: &reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "could not connect"
        } else {
            "request failed"
        };
        ControlError::Request {
            kind,
            detail: scrub_ips(&e.to_string()),
        }
    }
}

/// A string that is not an IP address or `IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or IP:PORT")]
pub struct AddrError(pub String);

/// A name that is not one of an enumeration's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {value:?}; expected one of: {expected}")]
pub struct UnknownValue {
    /// What was given.
    pub value: String,
    /// The accepted values, comma separated.
    pub expected: String,
}
