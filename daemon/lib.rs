//! # assimd
//!
//! The daemon and its offline tools: wire formats and validation ([`wire`]), the observing-network
//! simulator ([`simulate`]) and the offline cycled OSSE runner ([`experiment`]).

pub mod experiment;
pub mod simulate;
pub mod wire;
