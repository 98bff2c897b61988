//! # assimd
//!
//! The daemon and its offline tools: wire formats and validation ([`wire`]), the observing-network
//! simulator ([`simulate`]), the offline cycled OSSE runner ([`experiment`]) and its recorder of
//! training data ([`record`]), and the daemon itself ([`service`]: config, MQTT ingest, journal,
//! cycles, state store, metrics, simulator publisher, demo), its pictures ([`plot`]: per-cycle maps,
//! skill histories) and the progress bars of long offline work ([`progress`]).

pub mod experiment;
pub mod faults;
pub mod filters;
pub mod paired;
pub mod plot;
pub mod progress;
pub mod qc;
pub mod record;
pub mod service;
pub mod settings;
pub mod simulate;
pub mod wire;
