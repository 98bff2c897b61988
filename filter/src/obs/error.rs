//! Observation error model: the diagonal of R per variable and instrument.

use super::{Modality, Observation};
use crate::geometry::StateSpace;
use serde::{Deserialize, Serialize};

/// Diagonal R: by default each observation's own reported σ; an entry here overrides it for one
/// (modality, variable) pair, for operators who know their instruments better than the messages say.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorModel {
    /// (modality, variable name, σ) overrides.
    pub overrides: Vec<(Modality, String, f64)>,
}

impl ErrorModel {
    /// σ to use for `o`.
    pub fn sigma(&self, space: &StateSpace, o: &Observation) -> f64 {
        let name = &space.variables[o.var].name;
        self.overrides
            .iter()
            .find(|(m, v, _)| *m == o.modality && v == name)
            .map_or(o.sigma, |&(_, _, s)| s)
    }

    /// Apply the model to a set of observations in place.
    pub fn apply(&self, space: &StateSpace, obs: &mut [Observation]) {
        for o in obs {
            o.sigma = self.sigma(space, o);
        }
    }
}
