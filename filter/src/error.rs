//! Errors of the filter crate.

/// What can go wrong in pure computation: always a caller's mistake, never retryable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// An observation cannot be turned into an operator row.
    #[error("invalid observation: {0}")]
    InvalidObservation(String),
    /// An operator was built with entries outside the state.
    #[error("invalid observation operator: {0}")]
    InvalidOperator(String),
    /// A parameter is out of its valid range; the message names the fix.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    /// Shapes do not agree.
    #[error("dimension mismatch: {0}")]
    Dimension(String),
    /// A computation broke down (e.g. a covariance that is not positive definite).
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// A learned model failed to run (the message names the graph and the cause).
    #[error("model: {0}")]
    Model(String),
}
