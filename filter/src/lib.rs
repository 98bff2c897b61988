//! # assimd-filter
//!
//! Pure computation for assimd: the traits the rest builds on ([`Dynamics`],
//! [`obs::ObservationOperator`]), the grid and observation types with operators and their adjoints,
//! ensembles, and skill statistics. No I/O, no async runtime: every algorithm here is testable with
//! analytic stand-ins.

pub mod analysis;
pub mod dynamics;
pub mod enkf;
pub mod ensemble;
mod error;
pub mod geometry;
pub mod obs;
pub mod qc;
pub mod score;
pub mod stats;
#[cfg(test)]
mod testutil;

pub use analysis::Analysis;
pub use dynamics::Dynamics;
pub use ensemble::Ensemble;
pub use error::FilterError;
pub use geometry::{Geometry, StateSpace, Variable};
