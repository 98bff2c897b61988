//! The score-based analysis: condition the prior on the background ensemble, then draw one guided
//! posterior sample per member.

use super::{Denoiser, Sampler};
use crate::analysis::Analysis;
use crate::enkf::{ensrf, perturbed_obs_enkf, Inflation, SpectralCovariance};
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
    /// Each member's perturbed-observation EnKF update under the prior's covariance
    /// ([`crate::enkf::perturbed_obs_enkf`], Burgers et al. 1998), when the denoiser has one (see
    /// [`Denoiser::prior_covariance`]); else the [`ScoreFilter::baseline`] analysis, or the member's
    /// own background without one. For a Gaussian prior these are draws from the exact posterior,
    /// so their noised versions are the noised posterior and a small σ_start loses nothing.
    Analysis,
    /// As [`Start::Analysis`] with the deterministic EnSRF update ([`crate::enkf::ensrf()`],
    /// Whitaker & Hamill 2002) instead of perturbed observations: the mean gets the Kalman update,
    /// each anomaly x'_k ← x'_k - K̃ H x'_k with K̃ = P Hᵀ S^{-1/2} (S^{1/2} + R^{1/2})⁻¹,
    /// S = H P Hᵀ + R. No sampling noise from perturbed observations.
    SquareRoot,
    /// Each member's [`ScoreFilter::baseline`] analysis (typically the LETKF's), whatever prior
    /// covariance the denoiser has: the same start for a learned and an analytic prior, so that
    /// the two differ only by the prior the diffusion samples from (the long-window pilot's start).
    Baseline,
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
    /// The analysis that gives [`Start::Analysis`] / [`Start::SquareRoot`] their starting members when
    /// the denoiser knows no prior covariance (latent bundles), and [`Start::Baseline`] always:
    /// typically the LETKF baseline.
    pub baseline: Option<Box<dyn Analysis>>,
    /// When set, σ_start of each analysis is this factor times the background's spread (the root
    /// mean square over the state of the members' standard deviations, in the space the diffusion
    /// runs in: the latent of a latent bundle, the state otherwise) instead of the sampler's
    /// fixed σ_start, so that the noise, and what the prior reshapes, follows the background's
    /// uncertainty (the long-window pilot: 1.0). Never below twice the sampler's σ_min.
    pub sigma_start_spread: Option<f64>,
}

impl Analysis for ScoreFilter {
    fn name(&self) -> &'static str {
        "score"
    }

    fn analyse(
        &self,
        ens: &mut Ensemble,
        batch: &ObsBatch,
        rng: &mut dyn RngCore,
    ) -> Result<(), FilterError> {
        let background_std = ens.std();
        let den = self.prior.condition(ens)?;
        let mean = ens.mean();
        let mut z = Vec::with_capacity(ens.as_flat().len());
        let updated = match (self.start, den.prior_covariance()) {
            (Start::Analysis, Some((u, lam))) if !batch.is_empty() => Some(perturbed_obs_enkf(
                ens,
                batch,
                SpectralCovariance { u, lam },
                rng,
            )?),
            (Start::SquareRoot, Some((u, lam))) if !batch.is_empty() => {
                Some(ensrf(ens, batch, SpectralCovariance { u, lam })?)
            }
            (Start::Baseline, _) | (Start::Analysis | Start::SquareRoot, None)
                if !batch.is_empty() =>
            {
                match &self.baseline {
                    Some(a) => {
                        let mut e = ens.clone();
                        a.analyse(&mut e, batch, rng)?;
                        Some(e)
                    }
                    None => None,
                }
            }
            _ => None,
        };
        for (k, x) in ens.members().enumerate() {
            let start = match (self.start, &updated) {
                (Start::Mean, _) => &mean[..],
                (_, Some(a)) => a.member(k),
                (_, None) => x,
            };
            z.extend_from_slice(start);
        }
        if self.sampler.config.diffusion_off() {
            // The start alone: the control that shows what the diffusion adds.
            ens.as_flat_mut().copy_from_slice(&z);
            self.spread.relax(ens, &background_std);
            return Ok(());
        }
        // The diffusion's result enters as an increment on the starting members, x_start +
        // decode(z) - decode(encode(x_start)), so the codec's reconstruction error never enters the
        // cycled state (for pixel-space models decode ∘ encode is the identity and this is decode(z)).
        let x_start = z;
        let mut z = den.encode(&x_start)?;
        let x_rec = den.decode(&z)?;
        // The background ensemble in the space the diffusion runs in (the latent of a latent bundle:
        // its members encoded; the state itself for a pixel-space bundle), for latent optimisation
        // and a spread-relative σ_start.
        let zb = if self.sampler.config.lo_steps > 0 || self.sigma_start_spread.is_some() {
            Some(Ensemble::from_flat(
                ens.n_members(),
                den.dim(),
                den.encode(ens.as_flat())?,
            )?)
        } else {
            None
        };
        let background_var = match (&zb, self.sampler.config.lo_steps > 0) {
            (Some(zb), true) => zb.variance().iter().sum::<f64>() / den.dim() as f64,
            _ => 0.0,
        };
        match (self.sigma_start_spread, &zb) {
            (Some(f), Some(zb)) => {
                let std = zb.std();
                let spread =
                    (std.iter().map(|s| s * s).sum::<f64>() / std.len().max(1) as f64).sqrt();
                let c = &self.sampler.config;
                let sampler = Sampler::new(super::SamplerConfig {
                    sigma_start: (f * spread).max(2.0 * c.sigma_min),
                    ..c.clone()
                })?;
                sampler.sample(&*den, &mut z, batch, rng)?;
            }
            _ => self.sampler.sample(&*den, &mut z, batch, rng)?,
        }
        self.sampler
            .optimise(&*den, &mut z, batch, background_var)?;
        let x = den.decode(&z)?;
        // Written as decode(z) + (x_start - x_rec) so that an identity codec gives decode(z) exactly.
        for (((e, s), a), r) in ens
            .as_flat_mut()
            .iter_mut()
            .zip(&x_start)
            .zip(&x)
            .zip(&x_rec)
        {
            *e = a + (s - r);
        }
        self.spread.relax(ens, &background_std);
        Ok(())
    }
}
