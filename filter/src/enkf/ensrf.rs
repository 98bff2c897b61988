//! # EnSRF: the ensemble square-root filter under an explicit covariance
//!
//! The deterministic ensemble update of Whitaker & Hamill (2002), with the background covariance
//! given as P = U diag(λ) Uᵀ ([`SpectralCovariance`]) instead of the members' sample covariance.
//! With ensemble mean x̄, anomalies x'_k = x_k - x̄, H linearised at x̄ and S = H P Hᵀ + R:
//!
//!   x̄^a = x̄ + K (y - H(x̄)),        K = P Hᵀ S⁻¹,
//!   x'^a_k = x'_k - K̃ H x'_k,        K̃ = P Hᵀ S^{-1/2} (S^{1/2} + R^{1/2})⁻¹,
//!
//! S^{1/2} the symmetric square root. K̃ is chosen so that (I - K̃ H) P (I - K̃ H)ᵀ = (I - K H) P:
//! if the anomalies' sample covariance is P, that of the analysis anomalies is the Kalman analysis
//! covariance, without the sampling noise of perturbed observations ([`super::perturbed_obs_enkf`]).
//!
//! This is the simultaneous form (all m observations at once, one m × m eigen-decomposition of S).
//! Whitaker & Hamill's serial form assimilates independent observations one at a time, each with
//! the covariance left by the previous one, where K̃ = K / (1 + sqrt(R / (H P Hᵀ + R))) is a scalar
//! multiple of K; for diagonal R and linear H both end at the same Kalman analysis mean and
//! covariance (the members' anomalies may differ by a rotation).
//!
//! ## References
//! - Whitaker, J. S., Hamill, T. M. (2002). Ensemble data assimilation without perturbed
//!   observations. Mon. Wea. Rev. 130, 1913–1924.
//! - Tippett, M. K., Anderson, J. L., Bishop, C. H., Hamill, T. M., Whitaker, J. S. (2003).
//!   Ensemble square root filters. Mon. Wea. Rev. 131, 1485–1490.

use super::spectral::{ObservedCovariance, SpectralCovariance};
use crate::ensemble::Ensemble;
use crate::obs::{ObsBatch, ObservationOperator};
use crate::FilterError;
use nalgebra::{DMatrix, DVector};

/// The EnSRF analysis of `ens` under the background covariance `p` (module docs): the Kalman mean
/// update of the ensemble mean, and each anomaly x'_k ← x'_k - K̃ H x'_k. H is linearised at the
/// ensemble mean. Errors when S = H P Hᵀ + R is not positive definite.
pub fn ensrf(
    ens: &Ensemble,
    batch: &ObsBatch,
    p: SpectralCovariance,
) -> Result<Ensemble, FilterError> {
    let m = batch.len();
    let mean = ens.mean();
    let ObservedCovariance { hul, s: smat } = ObservedCovariance::new(&mean, batch, p);
    // P Hᵀ = U (H U diag λ)ᵀ; S = H P Hᵀ + R = V diag(s) Vᵀ.
    let pht = p.u * hul.transpose();
    let eig = smat.symmetric_eigen();
    if eig.eigenvalues.iter().any(|&v| v.is_nan() || v <= 0.0) {
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
        s_half_r[(j, j)] += batch.sigma[j]; // S^{1/2} + R^{1/2}, R diagonal
    }
    let inner = s_half_r
        .try_inverse()
        .ok_or_else(|| FilterError::Numerical("S^1/2 + R^1/2 is singular".into()))?;
    let k_mean = &pht * s_inv; // K
    let k_tilde = &pht * (s_inv_half * inner); // K̃
    let mut hm = vec![0.0; m];
    batch.op.apply(&mean, &mut hm);
    let innov = DVector::from_iterator(m, (0..m).map(|j| batch.y[j] - hm[j]));
    let mean_a = DVector::from_column_slice(&mean) + &k_mean * innov;
    let mut out = ens.clone();
    let mut ha = vec![0.0; m];
    for x in out.members_mut() {
        let a: Vec<f64> = x.iter().zip(&mean).map(|(xi, mi)| xi - mi).collect(); // anomaly x'_k
        batch.op.tangent(&mean, &a, &mut ha);
        let corr = &k_tilde * DVector::from_column_slice(&ha);
        for (i, xi) in x.iter_mut().enumerate() {
            *xi = mean_a[i] + a[i] - corr[i];
        }
    }
    Ok(out)
}
