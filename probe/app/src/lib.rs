//! The `witness` app: the command line, the layered config, the durable spool, uploads and the
//! unattended daemon, on top of the measurement core (`witness_core`).
//!
//! One concept per module: `cli` (clap types, dispatch), `setup` (flags over file over
//! defaults, for run and daemon), `config` (the file), `consent` (the notice and the check),
//! `run` (one run), `daemon` (runs on a schedule), `exit` (the exit statuses), `spool`,
//! `upload`, `address` (the probe's own address), `report` and `categories` (what the
//! volunteer reads: the table, its colour, the categories).
//! Nothing imports `cli`: the commands' rooms read `setup`, `exit` and `report`, and `cli`
//! alone dispatches to them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod categories;
pub mod cli;
pub mod config;
pub mod consent;
pub mod daemon;
pub mod exit;
pub mod report;
pub mod run;
pub mod setup;
pub mod spool;
pub mod upload;
