//! End-to-end fixtures for Witness: real loopback servers that play the internet and the
//! censor, so the real `witness` binary can be tested without root.
//!
//! The probe binds its sockets to a source address: [`CENSORED_SOURCE`] (127.0.0.2) is "the
//! censored probe", anything else (e.g. [`CONTROL_SOURCE`], 127.0.0.3) is uncensored. The
//! in-process censors decide by that peer address ([`Policy`]). Kernel-level censorship in
//! network namespaces is a separate lab.
//!
//! - [`pki`]: the trusted lab CA, expired leaves, the imitated Kazakh state chain;
//! - [`dns`]: a UDP+TCP DNS server answering per name (lies, NXDOMAIN, drops, injection...);
//! - [`origin`]: a TLS or cleartext HTTP/1.1 origin with per-site censorship behaviours;
//! - [`world`]: a scenario builder tying them together on distinct loopback addresses;
//! - [`api`]: async clients of a running collector's API (register, upload, raw reads);
//! - [`bins`]: builds and locates the real binaries;
//! - [`client`]: small clients for tests, bound to a chosen source address;
//! - [`postgres`]: a real PostgreSQL server in a temporary directory, a database per test;
//! - [`synthetic`]: [`measurement`], a record with nothing observed but its verdict;
//! - [`release`]: the artifacts of `deploy/release.sh` for the tests that check them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod bins;
pub mod client;
pub mod collector;
pub mod dashboards;
pub mod dns;
pub mod fleet;
pub mod http;
pub mod ooni;
pub mod origin;
pub mod pki;
pub mod postgres;
pub mod promstack;
pub mod release;
pub mod synthetic;
mod tasks;
pub mod throttle;
pub mod volunteer;
pub mod webhook;
pub mod world;

pub use bins::{collector_bin, reflector_bin, witness_bin};
pub use collector::CollectorProcess;
pub use dns::{DnsBehaviour, DnsServer};
pub use origin::{
    Audience, Behaviour, Origin, OriginConfig, Page, Policy, Rule, SiteConfig, Transport,
    CENSORED_SOURCE, CONTROL_SOURCE,
};
pub use pki::{LabPki, TlsConfigs};
pub use synthetic::measurement;
pub use webhook::WebhookReceiver;
pub use world::{ListEntry, Site, SiteDns, World, WorldBuilder};
