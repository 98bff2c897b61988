//! The analysis step every filter implements.

use crate::ensemble::Ensemble;
use crate::obs::ObsBatch;
use crate::FilterError;
use rand::RngCore;

/// An analysis: background ensemble + observations -> analysis ensemble, in place.
pub trait Analysis: Send + Sync {
    /// Short name (`enkf`, `etkf`, `letkf`, `score`), the `filter` label of the metrics.
    fn name(&self) -> &'static str;

    /// Replace the background ensemble `ens` by the analysis given `batch`. `rng` serves
    /// stochastic methods (perturbed observations, diffusion noise); deterministic ones ignore it.
    fn analyse(
        &self,
        ens: &mut Ensemble,
        batch: &ObsBatch,
        rng: &mut dyn RngCore,
    ) -> Result<(), FilterError>;
}
