//! # Observations and observation operators
//!
//! An observation is y = H(x) + ε, ε ~ N(0, R), with R diagonal (one σ per observation, set per
//! variable and instrument by [`ErrorModel`]). Two kinds of instruments, as in DESIGN §3:
//!
//! - **station**: the variable interpolated at the station's latitude/longitude,
//!   H_k(x) = Σ_{p ∈ stencil} w_p · v(x)_p (bilinear on the QG box, linear along the Lorenz-96 ring);
//! - **satellite footprint**: the mean of the variable over the grid points inside a disc of diameter
//!   `footprint_km` around the footprint centre, H_k(x) = (1/|D_k|) Σ_{p ∈ D_k} v(x)_p (bilinear
//!   interpolation at the centre when the disc holds no grid point).
//!
//! Here v(x)_p = Σ_f c_f x[f·n_points + p] is the observed quantity of [`crate::geometry::Variable`].
//! Both operators are linear in x, so H is stored as one sparse matrix ([`SparseOperator`]); the
//! [`ObservationOperator`] trait nevertheless carries the linearisation point so that nonlinear
//! operators fit the same filters: the tangent linear `H'(x) dx` and the adjoint `H'(x)^T dy`.

mod error;
mod operator;

pub use error::ErrorModel;
pub use operator::{checks, ObservationOperator, SparseOperator};

use crate::geometry::StateSpace;
use serde::{Deserialize, Serialize};

/// What kind of instrument made an observation: the modality of DESIGN §2 and of the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// In-situ point report.
    Station,
    /// Satellite footprint mean.
    Satellite,
}

impl Modality {
    /// Label used in metrics and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Station => "station",
            Modality::Satellite => "satellite",
        }
    }
}

/// Where an observation looks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Footprint {
    /// The value at a point (bilinear interpolation).
    Point,
    /// The mean over a disc of this diameter in km.
    Disc {
        /// Disc diameter in km.
        diameter_km: f64,
    },
}

/// One scalar observation, already validated against the state space.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Instrument kind.
    pub modality: Modality,
    /// Index into [`StateSpace::variables`].
    pub var: usize,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Point or footprint mean.
    pub footprint: Footprint,
    /// Observed value.
    pub value: f64,
    /// Observation error standard deviation (square root of the diagonal of R).
    pub sigma: f64,
}

/// The observations of one cycle, with their operator H and error standard deviations.
pub struct ObsBatch {
    /// The observations, in the order of `y`.
    pub obs: Vec<Observation>,
    /// Observed values.
    pub y: Vec<f64>,
    /// Error standard deviations, sqrt(diag R).
    pub sigma: Vec<f64>,
    /// H for these observations.
    pub op: SparseOperator,
}

impl ObsBatch {
    /// Build the batch and its operator. Fails if an observation lies outside the domain or names
    /// an unknown variable (validated messages never do).
    pub fn new(space: &StateSpace, obs: Vec<Observation>) -> Result<Self, crate::FilterError> {
        let op = SparseOperator::for_observations(space, &obs)?;
        let y = obs.iter().map(|o| o.value).collect();
        let sigma = obs.iter().map(|o| o.sigma).collect();
        Ok(ObsBatch { obs, y, sigma, op })
    }

    /// Number of scalar observations.
    pub fn len(&self) -> usize {
        self.obs.len()
    }

    /// Whether there are no observations.
    pub fn is_empty(&self) -> bool {
        self.obs.is_empty()
    }

    /// Count of observations per modality.
    pub fn count(&self, m: Modality) -> usize {
        self.obs.iter().filter(|o| o.modality == m).count()
    }
}
