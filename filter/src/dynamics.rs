//! # Dynamics
//!
//! The forecast model M of a cycle, x(t + Δt) = M(x(t)), as every filter sees it: a map on a flat
//! state vector. Implementations live in `assimd-models` (Lorenz-96, two-layer QG); the filters and the
//! tests here only need this trait.

/// A deterministic forecast model acting on a flat `f64` state vector.
///
/// Implementations must be `Send + Sync` so that ensemble members can be advanced in parallel; any
/// scratch memory belongs to the call, not to `self`.
pub trait Dynamics: Send + Sync {
    /// Length of the state vector.
    fn state_dim(&self) -> usize;

    /// Model time step in seconds of the physical clock the testbed stands for (l96: 6 h per 0.05).
    fn step_seconds(&self) -> f64;

    /// Number of model steps in one assimilation cycle.
    fn steps_per_cycle(&self) -> usize;

    /// Advance `x` in place by `n` model steps.
    fn advance(&self, x: &mut [f64], n: usize);

    /// Advance `x` in place by one assimilation cycle.
    fn forecast(&self, x: &mut [f64]) {
        self.advance(x, self.steps_per_cycle());
    }

    /// Length of one cycle in seconds.
    fn cycle_seconds(&self) -> f64 {
        self.step_seconds() * self.steps_per_cycle() as f64
    }
}
