//! The score-based analysis: condition the prior on the background ensemble, then draw one guided
//! posterior sample per member.

use super::sampler::tangent_basis;
use super::{Denoiser, Sampler};
use crate::analysis::Analysis;
use crate::enkf::Inflation;
use crate::ensemble::Ensemble;
use crate::obs::{ObsBatch, ObservationOperator};
use crate::FilterError;
use nalgebra::{DMatrix, DVector};
use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};
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
    /// Each member's perturbed-observation Kalman update under the prior's covariance (when the
    /// denoiser has one, see [`Denoiser::prior_covariance`]; else its own background): the exact
    /// posterior's noised marginal for a Gaussian prior, so that a small σ_start loses nothing.
    Analysis,
    /// As [`Start::Analysis`] with the deterministic square-root update of Whitaker & Hamill (2002)
    /// instead of perturbed observations: the mean gets the Kalman update, each anomaly
    /// x'_k ← x'_k - K̃ H x'_k with K̃ = P Hᵀ S^{-1/2} (S^{1/2} + R^{1/2})⁻¹, S = H P Hᵀ + R (symmetric
    /// square roots). No sampling noise from perturbed observations.
    SquareRoot,
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
    /// the denoiser knows no prior covariance (latent bundles): typically the LETKF baseline.
    pub baseline: Option<Box<dyn Analysis>>,
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
            (Start::Analysis, Some((u, lam))) if !batch.is_empty() => {
                Some(perturbed_obs_update(ens, batch, u, lam, rng)?)
            }
            (Start::SquareRoot, Some((u, lam))) if !batch.is_empty() => {
                Some(square_root_update(ens, batch, u, lam)?)
            }
            (Start::Analysis | Start::SquareRoot, None) if !batch.is_empty() => {
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
        // The diffusion's result enters as an increment on the starting members, x_start +
        // decode(z) - decode(encode(x_start)), so the codec's reconstruction error never enters the
        // cycled state (for pixel-space models decode ∘ encode is the identity and this is decode(z)).
        let x_start = z;
        let mut z = den.encode(&x_start)?;
        let x_rec = den.decode(&z)?;
        let background_var = if self.sampler.config.lo_steps > 0 {
            let zb = Ensemble::from_flat(ens.n_members(), den.dim(), den.encode(ens.as_flat())?)?;
            zb.variance().iter().sum::<f64>() / den.dim() as f64
        } else {
            0.0
        };
        self.sampler.sample(&*den, &mut z, batch, rng)?;
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

/// The prior P = U diag(λ) Uᵀ seen from the observations, H linearised at `x`: (H U) diag(λ) and
/// S = H P Hᵀ + R; then P Hᵀ = U ((H U) diag(λ))ᵀ.
struct ObsSpacePrior {
    hul: DMatrix<f64>,
    s: DMatrix<f64>,
}

impl ObsSpacePrior {
    fn new(x: &[f64], batch: &ObsBatch, u: &DMatrix<f64>, lam: &DVector<f64>) -> Self {
        let hu = tangent_basis(batch, x, u);
        let mut hul = hu.clone();
        for (k, l) in lam.iter().enumerate() {
            hul.column_mut(k).scale_mut(*l);
        }
        let mut s = &hul * hu.transpose();
        for (j, sj) in batch.sigma.iter().enumerate() {
            s[(j, j)] += sj * sj;
        }
        ObsSpacePrior { hul, s }
    }
}

/// x_k + K (y + ε_k - H x_k), K = P Hᵀ (H P Hᵀ + R)⁻¹, ε_k ~ N(0, R), for P = U diag(λ) Uᵀ; H is
/// linearised at the ensemble mean.
fn perturbed_obs_update(
    ens: &Ensemble,
    batch: &ObsBatch,
    u: &DMatrix<f64>,
    lam: &DVector<f64>,
    rng: &mut dyn RngCore,
) -> Result<Ensemble, FilterError> {
    let m = batch.len();
    let ObsSpacePrior { hul, s, .. } = ObsSpacePrior::new(&ens.mean(), batch, u, lam);
    let chol = s
        .cholesky()
        .ok_or_else(|| FilterError::Numerical("H P Hᵀ + R is not positive definite".into()))?;
    let mut out = ens.clone();
    let mut hx = vec![0.0; m];
    for x in out.members_mut() {
        batch.op.apply(x, &mut hx);
        let d = DVector::from_iterator(
            m,
            (0..m).map(|j| {
                let e: f64 = <StandardNormal as Distribution<f64>>::sample(&StandardNormal, rng);
                batch.y[j] + batch.sigma[j] * e - hx[j]
            }),
        );
        let w = chol.solve(&d);
        let inc = u * (hul.transpose() * w);
        for (xi, di) in x.iter_mut().zip(inc.iter()) {
            *xi += di;
        }
    }
    Ok(out)
}

/// The deterministic square-root update of [`Start::SquareRoot`], for P = U diag(λ) Uᵀ; H is
/// linearised at the ensemble mean.
fn square_root_update(
    ens: &Ensemble,
    batch: &ObsBatch,
    u: &DMatrix<f64>,
    lam: &DVector<f64>,
) -> Result<Ensemble, FilterError> {
    let m = batch.len();
    let mean = ens.mean();
    let ObsSpacePrior { hul, s: smat } = ObsSpacePrior::new(&mean, batch, u, lam);
    // P Hᵀ = U (H U diag λ)ᵀ; S = H P Hᵀ + R = V diag(s) Vᵀ.
    let pht = u * hul.transpose();
    let eig = smat.symmetric_eigen();
    if eig.eigenvalues.iter().any(|&v| !(v > 0.0)) {
        return Err(FilterError::Numerical(
            "H P Hᵀ + R is not positive definite".into(),
        ));
    }
    let v = &eig.eigenvectors;
    let s_inv = v * DMatrix::from_diagonal(&eig.eigenvalues.map(|x| 1.0 / x)) * v.transpose();
    let s_inv_half =
        v * DMatrix::from_diagonal(&eig.eigenvalues.map(|x| 1.0 / x.sqrt())) * v.transpose();
    let mut s_half_r = v * DMatrix::from_diagonal(&eig.eigenvalues.map(f64::sqrt)) * v.transpose();
    for j in 0..m {
        s_half_r[(j, j)] += batch.sigma[j];
    }
    let inner = s_half_r
        .try_inverse()
        .ok_or_else(|| FilterError::Numerical("S^1/2 + R^1/2 is singular".into()))?;
    let k_mean = &pht * s_inv;
    let k_tilde = &pht * (s_inv_half * inner);
    let mut hm = vec![0.0; m];
    batch.op.apply(&mean, &mut hm);
    let innov = DVector::from_iterator(m, (0..m).map(|j| batch.y[j] - hm[j]));
    let mean_a = DVector::from_column_slice(&mean) + &k_mean * innov;
    let mut out = ens.clone();
    let mut ha = vec![0.0; m];
    for x in out.members_mut() {
        let a: Vec<f64> = x.iter().zip(&mean).map(|(xi, mi)| xi - mi).collect();
        batch.op.tangent(&mean, &a, &mut ha);
        let corr = &k_tilde * DVector::from_column_slice(&ha);
        for (i, xi) in x.iter_mut().enumerate() {
            *xi = mean_a[i] + a[i] - corr[i];
        }
    }
    Ok(out)
}
