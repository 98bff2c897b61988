//! # EnKF family: stochastic EnKF, EnSRF, ETKF, LETKF
//!
//! The baseline every score-based result is judged against (DESIGN §7). With background members
//! x_k (k = 1..N), mean x̄, anomalies X = [x_k - x̄], observed members y_k = H(x_k) (H applied member
//! by member, so nonlinear operators work), their mean ȳ and anomalies Y, observations y with
//! diagonal error covariance R:
//!
//! - **Stochastic EnKF** ([`StochasticEnkf`], Burgers et al. 1998; Evensen 2003): each member is
//!   updated with perturbed observations,
//!   x_k^a = x_k + K (y + ε_k - y_k),  K = X Yᵀ (Y Yᵀ + (N-1) R)⁻¹,  ε_k ~ N(0, R) centred.
//!   With an explicit background covariance P = U diag(λ) Uᵀ ([`SpectralCovariance`]) in place of
//!   the sample covariance: [`perturbed_obs_enkf`].
//! - **EnSRF** ([`ensrf()`], Whitaker & Hamill 2002), with an explicit P = U diag(λ) Uᵀ: the mean gets
//!   the Kalman update, each anomaly x'_k ← x'_k - K̃ H x'_k with
//!   K̃ = P Hᵀ S^{-1/2} (S^{1/2} + R^{1/2})⁻¹, S = H P Hᵀ + R; no perturbed observations.
//! - **ETKF** ([`Etkf`], Bishop et al. 2001, in the form of Hunt et al. 2007): in ensemble space,
//!   P̃a = [(N-1) I / ρ + Yᵀ R⁻¹ Y]⁻¹,  w̄ = P̃a Yᵀ R⁻¹ (y - ȳ),  Wa = [(N-1) P̃a]^{1/2} (symmetric),
//!   x_k^a = x̄ + X (w̄ + Wa_k).
//! - **LETKF** ([`Letkf`], Hunt et al. 2007): the ETKF solved independently at every horizontal
//!   grid point with only the observations within the localisation support, their R⁻¹ tapered by
//!   the Gaspari–Cohn function of distance (R-localisation; Greybush et al. 2011). All fields at a
//!   grid point share its weights. Distances are great-circle/periodic km from [`crate::Geometry`]
//!   (index distance × grid spacing on the Lorenz-96 ring). Optionally the transform is computed
//!   only every s-th point and interpolated between (weight interpolation, Yang et al. 2009), which
//!   costs s² fewer eigen-decompositions on a 2-D grid and is accurate while s·Δx ≪ the
//!   localisation half-width.
//!
//! How the LETKF computes ([`Letkf`]; costs in `docs/benchmarks.md`). Each grid point's
//! observations are found through buckets of cells at least the support 2c wide on the periodic
//! plane, so the search reads the point's cell and its neighbours, not the whole network. With
//! Ỹ = R̃^{-1/2} Y the point's m local rows and d̃ = R̃^{-1/2} d, the ensemble-space problem is
//! carried by the Gram matrix G = ỸᵀỸ and b = Ỹᵀd̃ ([`Gram`]), decomposed once, G = Q diag(λ) Qᵀ;
//! the transform's matrix (N − 1)/ρ I + G shares its eigenvectors, and so does the EnKF-N's dual
//! cost, so the adaptive LETKF needs no second decomposition. Where m < N, G has rank ≤ m and its
//! non-zero eigenpairs come from the m × m matrix K = ỸỸᵀ = U diag(s) Uᵀ: λ = s,
//! Q = Ỹᵀ U diag(s)^{-1/2}, Qᵀ b = s^{1/2} ∘ Uᵀ d̃, and with α = (N − 1)/ρ
//!
//!   P̃a = Q diag(1/(λ + α)) Qᵀ + (I − QQᵀ)/α,
//!   Wa = √((N − 1)/α) I + Q diag(√((N − 1)/(λ + α)) − √((N − 1)/α)) Qᵀ,
//!
//! which is the same transform for m³ + m²N operations instead of N³ (exact up to rounding; a
//! test checks it against the N × N form, also for a singular K).
//!
//! Inflation ([`Inflation`]): multiplicative ρ on the background anomalies (inside the ETKF/LETKF
//! weights as (N-1)/ρ, explicitly for the stochastic EnKF), then optionally relaxation to prior
//! spread (RTPS, Whitaker & Hamill 2012): σ_a ← α σ_b + (1 - α) σ_a per state element. The LETKF
//! can instead estimate its prior inflation at every grid point from the cycle's local innovations
//! ([`Adaptive`]: the finite-size EnKF-N of Bocquet 2011 in its dual form, [`finite_size_inflation`]).
//!
//! ## References
//! - Burgers, G., van Leeuwen, P. J., Evensen, G. (1998). Analysis scheme in the ensemble Kalman filter. MWR 126.
//! - Whitaker, J. S., Hamill, T. M. (2002). Ensemble data assimilation without perturbed
//!   observations. MWR 130.
//! - Bishop, C. H., Etherton, B. J., Majumdar, S. J. (2001). Adaptive sampling with the ensemble
//!   transform Kalman filter. MWR 129.
//! - Hunt, B. R., Kostelich, E. J., Szunyogh, I. (2007). Efficient data assimilation for
//!   spatiotemporal chaos: a local ensemble transform Kalman filter. Physica D 230.
//! - Gaspari, G., Cohn, S. E. (1999). Construction of correlation functions in two and three
//!   dimensions. QJRMS 125.
//! - Whitaker, J. S., Hamill, T. M. (2012). Evaluating methods to account for system errors in
//!   ensemble data assimilation. MWR 140.
//! - Yang, S.-C., Kalnay, E., Hunt, B., Bowler, N. E. (2009). Weight interpolation for efficient
//!   data assimilation with the local ensemble transform Kalman filter. QJRMS 135.
//! - Sakov, P., Oke, P. R. (2008). Implications of the form of the ensemble transformation in the
//!   ensemble square root filters. MWR 136.

mod adaptive;
mod ensrf;
mod etkf;
mod inflation;
mod letkf;
mod localization;
mod senkf;
mod spectral;

pub use adaptive::{finite_size_inflation, Adaptive};
pub use ensrf::ensrf;
pub use etkf::Etkf;
pub use inflation::Inflation;
pub use letkf::Letkf;
pub use localization::gaspari_cohn;
pub use senkf::{perturbed_obs_enkf, StochasticEnkf};
pub(crate) use spectral::tangent_basis;
pub use spectral::SpectralCovariance;

use crate::ensemble::Ensemble;
use crate::obs::{ObsBatch, ObservationOperator};
use nalgebra::{DMatrix, DMatrixView, DVector};

/// Observed ensemble: Y (m × N) anomalies, ȳ, and the innovation d = y - ȳ.
pub(crate) struct ObservedEnsemble {
    pub y_anom: DMatrix<f64>,
    pub innovation: DVector<f64>,
}

impl ObservedEnsemble {
    pub fn new(ens: &Ensemble, batch: &ObsBatch) -> Self {
        let (m, n) = (batch.len(), ens.n_members());
        let mut y = DMatrix::zeros(m, n);
        let mut hx = vec![0.0; m];
        for (k, x) in ens.members().enumerate() {
            batch.op.apply(x, &mut hx);
            y.column_mut(k).copy_from_slice(&hx);
        }
        let mean = y.column_mean();
        for mut col in y.column_iter_mut() {
            col -= &mean;
        }
        let innovation =
            DVector::from_iterator(m, batch.y.iter().zip(mean.iter()).map(|(a, b)| a - b));
        ObservedEnsemble {
            y_anom: y,
            innovation,
        }
    }
}

/// The ensemble-space normal equations of one (local) analysis: the Gram matrix
/// G = Yᵀ R̃⁻¹ Y (N × N) and b = Yᵀ R̃⁻¹ d, with R̃⁻¹ the (tapered) diagonal of R⁻¹.
pub(crate) struct Gram {
    pub g: DMatrix<f64>,
    pub b: DVector<f64>,
}

impl Gram {
    /// From the rows of Y: `yt` holds observation j's N anomalies at `yt[j N .. (j + 1) N]`;
    /// only the observations `local` enter, observation `local[i]` with weight `rinv[i]`.
    pub fn from_rows(yt: &[f64], d: &[f64], local: &[usize], rinv: &[f64], n: usize) -> Self {
        let mut scaled = Vec::new();
        Self::from_rows_with(yt, d, local, rinv, n, &mut scaled)
    }

    /// [`Gram::from_rows`] with `scaled` as scratch: the rows R̃^{-1/2} Y are gathered into it
    /// (m × N, row-major) and G = (R̃^{-1/2} Y)ᵀ (R̃^{-1/2} Y) is one matrix product.
    pub fn from_rows_with(
        yt: &[f64],
        d: &[f64],
        local: &[usize],
        rinv: &[f64],
        n: usize,
        scaled: &mut Vec<f64>,
    ) -> Self {
        let m = local.len();
        gather_scaled(yt, local, rinv, n, scaled);
        let mut b = DVector::zeros(n);
        for (&j, &r) in local.iter().zip(rinv) {
            let rd = r * d[j];
            for (bv, &y) in b.iter_mut().zip(&yt[j * n..(j + 1) * n]) {
                *bv += rd * y;
            }
        }
        // Ỹᵀ (N × m, column j = row j of Ỹ) and an owned Ỹ: nalgebra's strided views are not safe
        // in its matrix-vector kernels (0.34), and the copy costs m N of the product's m N².
        let ytv = DMatrixView::from_slice(scaled, n, m);
        let yv = ytv.transpose();
        let mut g = DMatrix::zeros(n, n);
        g.gemm(1.0, &ytv, &yv, 0.0);
        Gram { g, b }
    }

    /// From dense Y (m × N), d and the diagonal of R̃⁻¹.
    pub fn from_dense(y: &DMatrix<f64>, d: &DVector<f64>, rinv: &[f64]) -> Self {
        let yt: Vec<f64> = y.transpose().as_slice().to_vec();
        let local: Vec<usize> = (0..y.nrows()).collect();
        Self::from_rows(&yt, d.as_slice(), &local, rinv, y.ncols())
    }

    /// The eigen-decomposition G = Q diag(λ) Qᵀ that both the transform and the EnKF-N's
    /// inflation use: the transform's matrix (N − 1)/ρ I + G has the same eigenvectors.
    pub fn eigen(self) -> GramEigen {
        let eig = self.g.symmetric_eigen();
        // G is positive semi-definite; rounding can leave a null direction (Y 1 = 0) at -1e-16.
        let lam: Vec<f64> = eig.eigenvalues.iter().map(|l| l.max(0.0)).collect();
        let qtb = eig.eigenvectors.tr_mul(&self.b);
        GramEigen {
            lam,
            q: eig.eigenvectors,
            qtb,
            b: self.b,
        }
    }

    /// The eigen-decomposition of G for the local observations through their m × m Gram matrix
    /// K = Ỹ Ỹᵀ (Ỹ = R̃^{-1/2} Y) when m < N: G = Ỹᵀ Ỹ has rank at most m, its non-zero eigenpairs
    /// are K's, K = U diag(s) Uᵀ, with eigenvectors v_i = Ỹᵀ u_i / √s_i, and Qᵀ b = √s ∘ Uᵀ d̃. This
    /// costs m³ + m² N instead of N³ (a grid point near one station decomposes a 1 × 1 matrix, not
    /// a 32 × 32 one). Otherwise the N × N decomposition of [`Gram::eigen`].
    pub fn local_eigen(
        yt: &[f64],
        d: &[f64],
        local: &[usize],
        rinv: &[f64],
        n: usize,
        scaled: &mut Vec<f64>,
    ) -> GramEigen {
        let m = local.len();
        if m >= n {
            return Self::from_rows_with(yt, d, local, rinv, n, scaled).eigen();
        }
        gather_scaled(yt, local, rinv, n, scaled);
        let dt = DVector::from_iterator(m, local.iter().zip(rinv).map(|(&j, &r)| r.sqrt() * d[j]));
        let ytv = DMatrixView::from_slice(scaled, n, m);
        let yv = ytv.transpose();
        let mut k = DMatrix::zeros(m, m);
        k.gemm(1.0, &yv, &ytv, 0.0);
        let b = ytv * &dt;
        let eig = k.symmetric_eigen();
        let smax = eig.eigenvalues.iter().fold(0.0_f64, |a, &v| a.max(v));
        // Directions of K at rounding level carry no information: their eigenvector of G is
        // undefined and their term in the transform vanishes (module docs of `letkf`).
        let keep: Vec<usize> = (0..m)
            .filter(|&i| eig.eigenvalues[i] > 1e-12 * smax && eig.eigenvalues[i] > 0.0)
            .collect();
        let lam: Vec<f64> = keep.iter().map(|&i| eig.eigenvalues[i]).collect();
        let mut q = DMatrix::zeros(n, keep.len());
        let mut qtb = DVector::zeros(keep.len());
        for (c, &i) in keep.iter().enumerate() {
            let u = eig.eigenvectors.column(i);
            let root = eig.eigenvalues[i].sqrt();
            q.column_mut(c).gemv(1.0 / root, &ytv, &u, 0.0);
            qtb[c] = root * u.dot(&dt);
        }
        GramEigen { lam, q, qtb, b }
    }
}

/// The local rows of Ỹ = R̃^{-1/2} Y, row i = √rinv[i] · (row `local[i]` of Y), into `scaled`
/// (m × N, row-major).
fn gather_scaled(yt: &[f64], local: &[usize], rinv: &[f64], n: usize, scaled: &mut Vec<f64>) {
    scaled.clear();
    scaled.reserve(local.len() * n);
    for (&j, &r) in local.iter().zip(rinv) {
        let s = r.sqrt();
        scaled.extend(yt[j * n..(j + 1) * n].iter().map(|y| s * y));
    }
}

/// G's non-zero spectrum G = Q diag(λ) Qᵀ (Q: N × r; r = N from [`Gram::eigen`], r ≤ m from the
/// observation-space path of [`Gram::local_eigen`]), Qᵀ b and b.
pub(crate) struct GramEigen {
    pub lam: Vec<f64>,
    pub q: DMatrix<f64>,
    pub qtb: DVector<f64>,
    pub b: DVector<f64>,
}

impl GramEigen {
    /// Members N.
    pub fn members(&self) -> usize {
        self.q.nrows()
    }

    /// The transform of Hunt et al. (2007) with prior inflation ρ: with α = (N − 1)/ρ and
    /// P̃a = [α I + G]⁻¹ = Q diag(1 / (λ + α)) Qᵀ + (I − Q Qᵀ)/α, the N × N matrix W whose column k
    /// is w̄ + Wa_k, w̄ = P̃a b, Wa = [(N − 1) P̃a]^{1/2} (symmetric)
    /// = √((N − 1)/α) I + Q diag(√((N − 1)/(λ + α)) − √((N − 1)/α)) Qᵀ. With the whole spectrum
    /// (r = N, Q Qᵀ = I) this is Q diag(√((N − 1)/(λ + α))) Qᵀ.
    pub fn transform(&self, rho: f64) -> DMatrix<f64> {
        let (n, r) = (self.members(), self.lam.len());
        let nm1 = (n - 1) as f64;
        let alpha = nm1 / rho;
        let inv: Vec<f64> = self.lam.iter().map(|l| 1.0 / (l + alpha)).collect();
        let scaled = DVector::from_iterator(r, self.qtb.iter().zip(&inv).map(|(v, l)| v * l));
        let mut wbar = &self.q * scaled;
        let mut w = if r == n {
            let mut qs = self.q.clone();
            for (j, mut col) in qs.column_iter_mut().enumerate() {
                col *= (nm1 * inv[j]).sqrt();
            }
            qs * self.q.transpose()
        } else {
            // b's part outside Q's span (zero up to rounding: b = Ỹᵀ d̃ lies in it).
            let rest = &self.b - &self.q * &self.qtb;
            wbar.axpy(1.0 / alpha, &rest, 1.0);
            let base = (nm1 / alpha).sqrt();
            let mut qs = self.q.clone();
            for (j, mut col) in qs.column_iter_mut().enumerate() {
                col *= (nm1 * inv[j]).sqrt() - base;
            }
            let mut w = qs * self.q.transpose();
            for i in 0..n {
                w[(i, i)] += base;
            }
            w
        };
        for mut col in w.column_iter_mut() {
            col += &wbar;
        }
        w
    }
}

/// Ensemble-space transform of Hunt et al. (2007): given local Y (m × N), innovation d, the
/// (tapered) diagonal of R⁻¹ and ρ, the N × N matrix W whose column k holds w̄ + Wa_k.
pub(crate) fn transform(
    y: &DMatrix<f64>,
    d: &DVector<f64>,
    rinv: &[f64],
    rho: f64,
) -> DMatrix<f64> {
    Gram::from_dense(y, d, rinv).eigen().transform(rho)
}

/// Apply weights W (N × N) to the elements `idx` of the ensemble: x_k^a\[i\] = x̄\[i\] + Σ_j X\[i, j\] W\[j, k\].
pub(crate) fn apply_weights(ens: &Ensemble, idx: &[usize], w: &DMatrix<f64>, out: &mut [f64]) {
    let n = ens.n_members();
    let mut vals = vec![0.0; n];
    for (r, &i) in idx.iter().enumerate() {
        apply_weights_at(ens, i, w, &mut vals, &mut out[r * n..(r + 1) * n]);
    }
}

/// [`apply_weights`] for one element `i`, with `vals` (length N) as scratch.
pub(crate) fn apply_weights_at(
    ens: &Ensemble,
    i: usize,
    w: &DMatrix<f64>,
    vals: &mut [f64],
    out: &mut [f64],
) {
    let n = vals.len();
    let flat = ens.as_flat();
    let dim = ens.dim();
    for (k, v) in vals.iter_mut().enumerate() {
        *v = flat[k * dim + i];
    }
    let mean = vals.iter().sum::<f64>() / n as f64;
    for v in vals.iter_mut() {
        *v -= mean;
    }
    for (k, o) in out.iter_mut().enumerate() {
        let col = &w.as_slice()[k * n..(k + 1) * n];
        let mut acc = mean;
        for (xj, wj) in vals.iter().zip(col) {
            acc += xj * wj;
        }
        *o = acc;
    }
}

#[cfg(test)]
mod tests;
