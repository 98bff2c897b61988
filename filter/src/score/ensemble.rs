//! The localised ensemble Gaussian: the analytic prior N(x̄, P) with P = ρ (L ∘ C) + s₀² I built from a
//! cycle's background ensemble, as a [`ScorePrior`], and its spectral denoiser.
//!
//! C = A Aᵀ/(N-1) is the ensemble covariance of the anomalies A, L the Gaspari–Cohn localisation matrix
//! of the grid points' distances (Schur product, as in the EnKF of Houtekamer & Mitchell 2001), ρ a
//! multiplicative inflation and s₀ a floor that keeps P positive definite. With P = U Λ Uᵀ,
//!
//!   D(z; σ) = x̄ + U diag(λ/(λ + σ²)) Uᵀ (z - x̄),
//!
//! the exact denoiser of N(x̄, P), so that the guided sampler with this prior draws from the Kalman
//! posterior of P (a stochastic, sampled EnKF). It is the baseline the learned priors must beat, and
//! the learned denoisers' skip connection (the network corrects it: DESIGN §6).

use super::{Denoiser, ScorePrior};
use crate::enkf::gaspari_cohn;
use crate::ensemble::Ensemble;
use crate::geometry::StateSpace;
use crate::FilterError;
use nalgebra::{DMatrix, DVector};

/// N(x̄, ρ (L ∘ C) + s₀² I) of the background ensemble.
#[derive(Clone, Debug)]
pub struct EnsembleGaussianPrior {
    loc: DMatrix<f64>,
    /// Multiplicative inflation ρ of the localised ensemble covariance.
    pub inflation: f64,
    /// Standard deviation s₀ of the white floor added to the covariance.
    pub floor: f64,
}

impl EnsembleGaussianPrior {
    /// Localisation by the Gaspari–Cohn function of the horizontal distance between grid points of
    /// `space` (half-width `half_width_km`), across fields alike.
    pub fn new(
        space: &StateSpace,
        half_width_km: f64,
        inflation: f64,
        floor: f64,
    ) -> Result<Self, FilterError> {
        if !(half_width_km > 0.0) || !(inflation > 0.0) || !(floor >= 0.0) {
            return Err(FilterError::InvalidParameter(format!(
                "ensemble Gaussian prior needs half-width > 0 km, inflation > 0 and floor >= 0, got {half_width_km}, {inflation}, {floor}"
            )));
        }
        let g = &space.geometry;
        let np = g.n_points();
        let nf = space.fields.len();
        let xy: Vec<(f64, f64)> = (0..np)
            .map(|p| {
                let (lat, lon) = g.point_latlon(p);
                g.to_plane(lat, lon)
            })
            .collect();
        let d = np * nf;
        let loc = DMatrix::from_fn(d, d, |i, j| {
            gaspari_cohn(g.plane_distance_km(xy[i % np], xy[j % np]) / half_width_km)
        });
        Ok(EnsembleGaussianPrior {
            loc,
            inflation,
            floor,
        })
    }

    /// The prior's mean, eigenvectors U (columns) and eigenvalues λ for this background.
    pub fn spectrum(
        &self,
        background: &Ensemble,
    ) -> Result<(Vec<f64>, DMatrix<f64>, DVector<f64>), FilterError> {
        let d = background.dim();
        if self.loc.nrows() != d {
            return Err(FilterError::Dimension(format!(
                "localisation for {} values, ensemble of dimension {d}",
                self.loc.nrows()
            )));
        }
        let n = background.n_members();
        if n < 2 {
            return Err(FilterError::InvalidParameter(
                "the ensemble Gaussian prior needs at least 2 members".into(),
            ));
        }
        let mean = background.mean();
        let a = DMatrix::from_fn(d, n, |i, k| background.member(k)[i] - mean[i]);
        let mut p = (&a * a.transpose()) / (n as f64 - 1.0);
        p.component_mul_assign(&self.loc);
        p *= self.inflation;
        for i in 0..d {
            p[(i, i)] += self.floor * self.floor;
        }
        let eig = p.symmetric_eigen();
        let lam = eig.eigenvalues.map(|l| l.max(0.0));
        Ok((mean, eig.eigenvectors, lam))
    }
}

impl ScorePrior for EnsembleGaussianPrior {
    fn condition(&self, background: &Ensemble) -> Result<Box<dyn Denoiser>, FilterError> {
        let (mean, u, lam) = self.spectrum(background)?;
        Ok(Box::new(SpectralGaussianDenoiser::new(mean, u, lam)?))
    }
}

/// The exact denoiser of N(m, U diag(λ) Uᵀ) for orthonormal U (square, d × d).
#[derive(Clone, Debug)]
pub struct SpectralGaussianDenoiser {
    m: DVector<f64>,
    u: DMatrix<f64>,
    lam: DVector<f64>,
}

impl SpectralGaussianDenoiser {
    /// From the mean, the eigenvectors (columns) and the eigenvalues of the covariance.
    pub fn new(m: Vec<f64>, u: DMatrix<f64>, lam: DVector<f64>) -> Result<Self, FilterError> {
        let d = m.len();
        if u.nrows() != d || u.ncols() != lam.len() {
            return Err(FilterError::Dimension(format!(
                "mean {d}, basis {}x{}, {} eigenvalues",
                u.nrows(),
                u.ncols(),
                lam.len()
            )));
        }
        Ok(SpectralGaussianDenoiser {
            m: DVector::from_vec(m),
            u,
            lam,
        })
    }

    /// U diag(λ/(λ + σ²)) Uᵀ v.
    fn gain_apply(&self, sigma: f64, v: &[f64]) -> DVector<f64> {
        let s2 = sigma * sigma;
        let mut c = self.u.tr_mul(&DVector::from_column_slice(v));
        for (ci, &l) in c.iter_mut().zip(self.lam.iter()) {
            *ci *= l / (l + s2);
        }
        &self.u * c
    }
}

impl Denoiser for SpectralGaussianDenoiser {
    fn dim(&self) -> usize {
        self.m.len()
    }

    fn state_dim(&self) -> usize {
        self.m.len()
    }

    fn denoise(&self, z: &[f64], sigma: &[f64], out: &mut [f64]) -> Result<(), FilterError> {
        let d = self.m.len();
        for ((zb, ob), &s) in z.chunks_exact(d).zip(out.chunks_exact_mut(d)).zip(sigma) {
            let r: Vec<f64> = zb.iter().zip(self.m.iter()).map(|(a, b)| a - b).collect();
            let g = self.gain_apply(s, &r);
            for ((o, gi), mi) in ob.iter_mut().zip(g.iter()).zip(self.m.iter()) {
                *o = mi + gi;
            }
        }
        Ok(())
    }

    fn denoise_vjp(
        &self,
        z: &[f64],
        sigma: &[f64],
        v: &[f64],
        x0: &mut [f64],
        jtv: &mut [f64],
    ) -> Result<(), FilterError> {
        let d = self.m.len();
        self.denoise(z, sigma, x0)?;
        // The Jacobian U diag(λ/(λ+σ²)) Uᵀ is symmetric.
        for ((vb, jb), &s) in v.chunks_exact(d).zip(jtv.chunks_exact_mut(d)).zip(sigma) {
            jb.copy_from_slice(self.gain_apply(s, vb).as_slice());
        }
        Ok(())
    }

    fn encode(&self, x: &[f64]) -> Result<Vec<f64>, FilterError> {
        Ok(x.to_vec())
    }

    fn decode(&self, z: &[f64]) -> Result<Vec<f64>, FilterError> {
        Ok(z.to_vec())
    }

    fn prior_covariance(&self) -> Option<(&DMatrix<f64>, &DVector<f64>)> {
        Some((&self.u, &self.lam))
    }
}
