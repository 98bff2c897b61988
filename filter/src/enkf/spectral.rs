//! A background covariance given explicitly in spectral form, P = U diag(λ) Uᵀ, and what the
//! Kalman update needs of it in observation space.
//!
//! With H linearised at a state x (its tangent applied column by column, so nonlinear operators
//! work), the update needs only
//!
//!   H U (m × k),   P Hᵀ = U ((H U) diag(λ))ᵀ,   S = H P Hᵀ + R = (H U) diag(λ) (H U)ᵀ + R,
//!
//! never P itself (n × n).

use crate::obs::{ObsBatch, ObservationOperator};
use nalgebra::{DMatrix, DVector};

/// A background covariance P = U diag(λ) Uᵀ known in closed form rather than estimated from the
/// members (for instance the localised ensemble Gaussian of the score filter's prior), for the
/// explicit-covariance updates [`super::ensrf()`] and [`super::perturbed_obs_enkf`].
#[derive(Clone, Copy, Debug)]
pub struct SpectralCovariance<'a> {
    /// U (n × k): orthonormal columns, the eigenvectors of P.
    pub u: &'a DMatrix<f64>,
    /// λ (k): the eigenvalues of P, all ≥ 0.
    pub lam: &'a DVector<f64>,
}

/// H U: the observation operator linearised at `x` applied to every column of `u` (m × k).
pub(crate) fn tangent_basis(batch: &ObsBatch, x: &[f64], u: &DMatrix<f64>) -> DMatrix<f64> {
    let m = batch.len();
    let mut hu = DMatrix::zeros(m, u.ncols());
    let mut col = vec![0.0; m];
    for k in 0..u.ncols() {
        batch.op.tangent(x, u.column(k).as_slice(), &mut col);
        hu.column_mut(k).copy_from_slice(&col);
    }
    hu
}

/// P = U diag(λ) Uᵀ seen from the observations, H linearised at `x`: (H U) diag(λ) and
/// S = H P Hᵀ + R; then P Hᵀ = U ((H U) diag(λ))ᵀ.
pub(crate) struct ObservedCovariance {
    /// (H U) diag(λ) (m × k).
    pub hul: DMatrix<f64>,
    /// S = H P Hᵀ + R (m × m), R = diag(σ_o²).
    pub s: DMatrix<f64>,
}

impl ObservedCovariance {
    pub fn new(x: &[f64], batch: &ObsBatch, p: SpectralCovariance) -> Self {
        let hu = tangent_basis(batch, x, p.u);
        let mut hul = hu.clone();
        for (k, l) in p.lam.iter().enumerate() {
            hul.column_mut(k).scale_mut(*l);
        }
        let mut s = &hul * hu.transpose();
        for (j, sj) in batch.sigma.iter().enumerate() {
            s[(j, j)] += sj * sj;
        }
        ObservedCovariance { hul, s }
    }
}
