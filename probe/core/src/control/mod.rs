//! The control service API, in two halves around the engine: [`client`] (the probe's side,
//! which the engine calls) and [`service`] (the server side the collector runs, which builds
//! an engine). The engine imports only the client, the service imports the engine: no circle.
//!
//! `POST {base}/api/v1/control` with a [`ControlRequest`] and `Authorization: Bearer TOKEN`
//! answers a [`ControlReply`]; `POST {base}/api/v1/control/batch` with a
//! [`ControlBatchRequest`] streams one [`ControlBatchLine`] per URL; `GET {base}/api/v1/health`
//! answers 200 when the service is up. See `docs/collector-api.md`.

pub mod client;
pub mod service;

/// The wire types both halves speak (defined with the measurement format in [`crate::model`]).
pub use crate::model::{
    AsnReply, AsnRequest, ControlBatchLine, ControlBatchRequest, ControlReply, ControlRequest,
    ControlResponse, MAX_ASN_ADDRS, MAX_CONTROL_ADDRS, MAX_CONTROL_BATCH,
};
pub use client::ControlClient;
pub use service::{
    bytes_read, check_addrs, check_target, measure_target, serve_control, ControlRefusal,
    ControlServiceConfig, ControlTarget,
};
