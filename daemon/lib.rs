//! # assimd
//!
//! The daemon and its offline tools: wire formats and validation ([`wire`]), the observing-network
//! simulator ([`simulate`]), the offline cycled OSSE runner ([`experiment`]) and its recorder of
//! training data ([`record`]).

pub mod experiment;
pub mod record;
pub mod simulate;
pub mod wire;
