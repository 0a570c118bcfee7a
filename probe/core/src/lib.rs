//! Witness measurement core: measures whether sites are reachable from this network and, when
//! they are not, how they are blocked. The `witness` app (CLI, config, spool, upload, daemon)
//! and the collector (control service, measurement format) both build on it; it pulls in no
//! CLI or terminal code.
//!
//! Layout, one module per concern:
//! - [`model`]: the measurement format shared with the control service and the collector;
//! - [`ooni`]: the same records in OONI's data format, for OONI's tools;
//! - [`failure`]: the closed failure taxonomy;
//! - [`checks`]: one module per step (DNS, TCP, TLS, HTTP), each recording observations;
//! - [`engine`]: runs the steps for many targets concurrently ([`slots`]: how many at once);
//! - [`verdict`]: the pure function from observations to a verdict;
//! - [`targets`], [`fingerprints`], [`bogon`]: inputs and reference data;
//! - [`spec`]: the string forms of settings, shared by the app and the collector;
//! - [`error`]: the typed errors the core returns to the app and the collector;
//! - [`control`]: the control protocol: [`control::client`] below the engine, [`control::service`] above it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apps;
pub mod bogon;
pub mod checks;
pub mod control;
pub mod engine;
pub mod error;
pub mod failure;
pub mod fingerprints;
pub mod model;
pub mod ooni;
pub mod scrub;
pub mod slots;
pub mod spec;
pub mod sysresolver;
pub mod targets;
pub mod verdict;

pub use failure::Failure;
pub use model::{Measurement, Method, Status, Verdict};
