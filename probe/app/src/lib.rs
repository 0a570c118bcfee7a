//! The `witness` app: the command line, the layered config, the durable spool, uploads and the
//! unattended daemon, on top of the measurement core (`witness_core`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod categories;
pub mod cli;
pub mod config;
pub mod consent;
pub mod daemon;
pub mod report;
pub mod run;
pub mod setup;
pub mod spool;
pub mod upload;
