//! The score-based analysis: condition the prior on the background ensemble, then draw one guided
//! posterior sample per member.

use super::{Denoiser, Sampler};
use crate::analysis::Analysis;
use crate::enkf::Inflation;
use crate::ensemble::Ensemble;
use crate::obs::ObsBatch;
use crate::FilterError;
use rand::RngCore;
use std::sync::Arc;

/// A learned prior that, given a cycle's background ensemble, yields the conditioned denoiser.
pub trait ScorePrior: Send + Sync {
    /// Run the conditioning (e.g. the set encoder over the members) once for this cycle.
    fn condition(&self, background: &Ensemble) -> Result<Box<dyn Denoiser>, FilterError>;
}

/// Where each member's reverse diffusion starts (before the σ_start noise is added).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The member's own background (keeps the ensemble's diversity).
    Member,
    /// The background ensemble mean (all members start alike; the noise makes them differ).
    Mean,
}

/// The score-based filter's analysis step.
pub struct ScoreFilter {
    /// The conditioned prior.
    pub prior: Arc<dyn ScorePrior>,
    /// The guided sampler.
    pub sampler: Sampler,
    /// Starting point of the diffusion.
    pub start: Start,
    /// Spread control after sampling (RTPS towards the background spread; ρ unused).
    pub spread: Inflation,
}

impl Analysis for ScoreFilter {
    fn name(&self) -> &'static str {
        "score"
    }

    fn analyse(&self, ens: &mut Ensemble, batch: &ObsBatch, rng: &mut dyn RngCore) -> Result<(), FilterError> {
        let background_std = ens.std();
        let den = self.prior.condition(ens)?;
        let d = den.dim();
        let mean = ens.mean();
        let mut z = Vec::with_capacity(ens.n_members() * d);
        for x in ens.members() {
            let start = match self.start {
                Start::Member => x,
                Start::Mean => &mean[..],
            };
            z.extend(den.encode(start)?);
        }
        self.sampler.sample(&*den, &mut z, batch, rng)?;
        for (k, zk) in z.chunks_exact(d).enumerate() {
            let x = den.decode(zk)?;
            ens.member_mut(k).copy_from_slice(&x);
        }
        self.spread.relax(ens, &background_std);
        Ok(())
    }
}
