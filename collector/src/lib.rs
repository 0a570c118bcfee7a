//! Witness collector: ingests probe measurements, turns verdicts into time series per site ×
//! network × method, notices when a site becomes blocked (or unblocked) on a network or a
//! network goes offline, and serves control measurements.
//!
//! Layout:
//! - [`state`]: [`AppState`], what every handler and background task shares;
//! - [`app`]: every router, [`app::serve`];
//! - [`api`]: one module per endpoint group (ingest, register, control, read, metrics);
//! - [`ingest`]: storing an upload's records (validation, the store's row, evaluation);
//! - [`model`]: the domain types (events, evidence, verdict groups, site status);
//! - [`aggregate`]: the pure event rule (table-tested, no I/O);
//! - [`readmodel`]: the current state per site and network, kept on ingest, for every reader;
//! - [`events`]: runs the rule against the store after each upload;
//! - [`store`]: the [`store::Store`] trait, its SQLite and PostgreSQL implementations;
//! - [`validate`]: per-record upload validation (pure);
//! - [`asn`]: the operator's IP → ASN table (the probe's network, its routers' networks);
//! - [`metrics`], [`webhook`], [`control`], [`config`], [`auth`], [`ratelimit`], [`tokens`].
//!
//! Privacy: the uploader's address is never stored or logged; network and country come from
//! the measurement's own `probe` field.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod aggregate;
pub mod api;
pub mod app;
pub mod asn;
pub mod auth;
pub mod body;
pub mod config;
pub mod control;
pub mod csvsafe;
pub mod error;
pub mod events;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod ratelimit;
pub mod readgate;
pub mod readmodel;
pub mod state;
pub mod store;
pub mod tokens;
pub mod ui;
pub mod validate;
pub mod webhook;

pub use app::{serve, serve_with};
pub use config::Config;
pub use state::AppState;
