//! # Stochastic (perturbed-observation) EnKF
//!
//! The EnKF of Burgers, van Leeuwen & Evensen (1998): each member is updated towards its own
//! perturbed copy of the observations,
//!
//!   x_k^a = x_k + K (y + ε_k - H(x_k)),   ε_k ~ N(0, R),   K = P Hᵀ (H P Hᵀ + R)⁻¹,
//!
//! so that for a Gaussian prior and linear H the analysis members are draws from the Kalman
//! posterior: E[x^a] = x̄ + K (y - H x̄), Cov[x^a] = (I - K H) P (I - K H)ᵀ + K R Kᵀ = (I - K H) P
//! (without the perturbations the second term, and so the analysis spread, would be missing).
//! Two forms share the perturbations ε_k:
//!
//! - [`StochasticEnkf`]: P is the members' sample covariance, P Hᵀ = X Yᵀ/(N-1) and
//!   H P Hᵀ = Y Yᵀ/(N-1) from the anomalies X of the members and Y of their observed values
//!   (module docs of `enkf`); the ε_k are centred (zero ensemble mean), so the analysis mean is
//!   exactly the Kalman mean of the sample moments.
//! - [`perturbed_obs_enkf`]: P = U diag(λ) Uᵀ given explicitly ([`SpectralCovariance`]), H
//!   linearised at the ensemble mean; the ε_k are not centred (each member is an independent draw).
//!
//! ## References
//! - Burgers, G., van Leeuwen, P. J., Evensen, G. (1998). Analysis scheme in the ensemble Kalman
//!   filter. Mon. Wea. Rev. 126, 1719–1724.
//! - Houtekamer, P. L., Mitchell, H. L. (1998). Data assimilation using an ensemble Kalman filter
//!   technique. Mon. Wea. Rev. 126, 796–811.
//! - Evensen, G. (2003). The ensemble Kalman filter: theoretical formulation and practical
//!   implementation. Ocean Dynamics 53, 343–367.

use super::spectral::{ObservedCovariance, SpectralCovariance};
use super::{Inflation, ObservedEnsemble};
use crate::analysis::Analysis;
use crate::ensemble::Ensemble;
use crate::obs::{ObsBatch, ObservationOperator};
use crate::FilterError;
use nalgebra::{DMatrix, DVector};
use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};

/// The observation perturbations ε (m × N), column k ~ N(0, R) with R = diag(σ²): drawn member by
/// member, observation by observation within a member.
fn observation_perturbations(sigma: &[f64], n: usize, rng: &mut dyn RngCore) -> DMatrix<f64> {
    DMatrix::from_fn(sigma.len(), n, |j, _| {
        sigma[j] * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, rng)
    })
}

/// The perturbed-observation EnKF of the module docs under an explicit background covariance `p`:
/// x_k + K (y + ε_k - H(x_k)), K = P Hᵀ (H P Hᵀ + R)⁻¹, ε_k ~ N(0, R), H linearised at the ensemble
/// mean for K. Errors when H P Hᵀ + R is not positive definite.
pub fn perturbed_obs_enkf(
    ens: &Ensemble,
    batch: &ObsBatch,
    p: SpectralCovariance,
    rng: &mut dyn RngCore,
) -> Result<Ensemble, FilterError> {
    let m = batch.len();
    let ObservedCovariance { hul, s } = ObservedCovariance::new(&ens.mean(), batch, p);
    let chol = s
        .cholesky()
        .ok_or_else(|| FilterError::Numerical("H P Hᵀ + R is not positive definite".into()))?;
    let eps = observation_perturbations(&batch.sigma, ens.n_members(), rng);
    let mut out = ens.clone();
    let mut hx = vec![0.0; m];
    for (k, x) in out.members_mut().enumerate() {
        batch.op.apply(x, &mut hx);
        // Perturbed innovation y + ε_k - H(x_k).
        let d = DVector::from_iterator(m, (0..m).map(|j| batch.y[j] + eps[(j, k)] - hx[j]));
        let w = chol.solve(&d); // S⁻¹ d
        let inc = p.u * (hul.transpose() * w); // P Hᵀ S⁻¹ d = U ((H U) diag λ)ᵀ S⁻¹ d
        for (xi, di) in x.iter_mut().zip(inc.iter()) {
            *xi += di;
        }
    }
    Ok(out)
}

/// The stochastic EnKF of the module docs with the members' sample covariance, for small systems (an m × m Cholesky per cycle).
#[derive(Clone, Debug)]
pub struct StochasticEnkf {
    /// Inflation and RTPS.
    pub inflation: Inflation,
}

impl Analysis for StochasticEnkf {
    fn name(&self) -> &'static str {
        "enkf"
    }

    fn analyse(
        &self,
        ens: &mut Ensemble,
        batch: &ObsBatch,
        rng: &mut dyn RngCore,
    ) -> Result<(), FilterError> {
        let n = ens.n_members();
        if n < 2 {
            return Err(FilterError::InvalidParameter(
                "the stochastic EnKF needs at least 2 members".into(),
            ));
        }
        let background_std = ens.std();
        self.inflation.inflate(ens);
        if batch.is_empty() {
            return Ok(());
        }
        let m = batch.len();
        let oe = ObservedEnsemble::new(ens, batch);
        let y = &oe.y_anom;
        // S = Y Yᵀ + (N-1) R
        let mut s = y * y.transpose();
        for (j, sig) in batch.sigma.iter().enumerate() {
            s[(j, j)] += (n - 1) as f64 * sig * sig;
        }
        let chol = s.cholesky().ok_or_else(|| {
            FilterError::InvalidParameter("innovation covariance is not positive definite".into())
        })?;
        // Perturbed innovations D[:, k] = y + ε_k - y_k with centred ε (zero ensemble mean).
        let mut eps = observation_perturbations(&batch.sigma, n, rng);
        let eps_mean = eps.column_mean();
        for mut col in eps.column_iter_mut() {
            col -= &eps_mean;
        }
        let mut d = eps;
        for k in 0..n {
            for j in 0..m {
                // y_k = ȳ + Y[:, k], so y + ε - y_k = innovation + ε - Y[:, k]
                d[(j, k)] += oe.innovation[j] - y[(j, k)];
            }
        }
        // Increments (X Yᵀ) (S⁻¹ D): n·m·N work, never an N × N matrix (N may be large in tests).
        let z: DMatrix<f64> = chol.solve(&d);
        let mean = ens.mean();
        let dim = ens.dim();
        let mut xyt: DMatrix<f64> = DMatrix::zeros(dim, m); // X Yᵀ
        for (k, x) in ens.members().enumerate() {
            for i in 0..dim {
                let a = x[i] - mean[i];
                for j in 0..m {
                    xyt[(i, j)] += a * y[(j, k)];
                }
            }
        }
        let inc = xyt * z;
        for k in 0..n {
            for (i, xi) in ens.member_mut(k).iter_mut().enumerate() {
                *xi += inc[(i, k)];
            }
        }
        self.inflation.relax(ens, &background_std);
        Ok(())
    }
}
