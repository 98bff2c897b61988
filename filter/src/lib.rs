//! # assimd-filter
//!
//! Pure computation for assimd: the traits the rest builds on ([`Dynamics`], [`obs::ObservationOperator`]),
//! the observation types and operators with their adjoints, ensembles, and skill statistics.
//! No I/O, no async runtime: every algorithm here is testable with analytic stand-ins.

pub mod dynamics;
pub use dynamics::Dynamics;
