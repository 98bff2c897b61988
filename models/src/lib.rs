//! # assimd-models
//!
//! The forecast models of assimd's testbeds (Lorenz-96 and the two-layer quasi-geostrophic model) as
//! implementations of [`assimd_filter::Dynamics`].

pub mod bundle;
pub mod l96;
pub mod qg2l;
pub mod testbed;
