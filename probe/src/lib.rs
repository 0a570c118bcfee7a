//! Witness probe: measures whether sites are reachable from this network and, when they are
//! not, how they are blocked.
//!
//! Layout, one module per concern:
//! - [`model`]: the measurement format shared with the control service and the collector;
//! - [`failure`]: the closed failure taxonomy;
//! - [`checks`]: one module per step (DNS, TCP, TLS, HTTP), each recording observations;
//! - [`engine`]: runs the steps for many targets concurrently;
//! - [`verdict`]: the pure function from observations to a verdict;
//! - [`targets`], [`fingerprints`], [`bogon`]: inputs and reference data.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bogon;
pub mod checks;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod failure;
pub mod fingerprints;
pub mod model;
pub mod report;
pub mod scrub;
pub mod spool;
pub mod targets;
pub mod upload;
pub mod verdict;

pub use failure::Failure;
pub use model::{Measurement, Method, Status, Verdict};
