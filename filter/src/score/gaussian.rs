//! # Gaussian priors and their exact denoisers
//!
//! For a Gaussian prior N(m, P) and z_σ = x₀ + σ ε the denoiser is known in closed form (Tweedie's
//! formula; the Wiener filter):
//!
//!   D(z; σ) = E[x₀ | z_σ = z] = m + P (P + σ² I)⁻¹ (z - m),   Cov[x₀ | z_σ] = P (P + σ² I)⁻¹ σ²,
//!
//! and its Jacobian P (P + σ² I)⁻¹ is symmetric, so Jᵀ v = P (P + σ² I)⁻¹ v. With P = U diag(λ) Uᵀ,
//! D(z; σ) = m + U diag(λ/(λ + σ²)) Uᵀ (z - m). Three forms:
//!
//! - [`GaussianDenoiser`]: dense P, for tests without a trained network.
//! - [`SpectralGaussianDenoiser`]: P given by its eigen-decomposition (one d × d eigen-decomposition
//!   per cycle instead of a solve per noise level); it reports P through
//!   [`Denoiser::prior_covariance`], so that the sampler and the EnKF starts can use it.
//! - [`EnsembleGaussianPrior`]: the localised ensemble Gaussian, a [`ScorePrior`] that builds the
//!   spectral denoiser of N(x̄, P) from each cycle's background ensemble, with
//!
//!     P = ρ (L ∘ C) + s₀² I,   C = A Aᵀ/(N-1),
//!
//!   C the ensemble covariance of the anomalies A, L the Gaspari–Cohn localisation matrix of the
//!   grid points' horizontal distances (Schur product, as in the EnKF of Houtekamer & Mitchell
//!   2001), ρ a multiplicative inflation and s₀ a floor that keeps P positive definite. The guided
//!   sampler with this prior draws from the Kalman posterior of P (a sampled EnKF); it is the
//!   baseline the learned priors must beat, and the learned denoisers' skip connection (the network
//!   corrects it: DESIGN §6).
//!
//! ## References
//! - Efron, B. (2011). Tweedie's formula and selection bias. J. Am. Stat. Assoc. 106, 1602–1614.
//! - Houtekamer, P. L., Mitchell, H. L. (2001). A sequential ensemble Kalman filter for atmospheric
//!   data assimilation. Mon. Wea. Rev. 129, 123–137.
//! - Gaspari, G., Cohn, S. E. (1999). Construction of correlation functions in two and three
//!   dimensions. QJRMS 125, 723–757.

use super::{Denoiser, ScorePrior};
use crate::enkf::gaspari_cohn;
use crate::ensemble::Ensemble;
use crate::geometry::StateSpace;
use crate::FilterError;
use nalgebra::{DMatrix, DVector};

/// The exact denoiser of N(m, P) in pixel space with a dense P (module docs).
pub struct GaussianDenoiser {
    m: DVector<f64>,
    p: DMatrix<f64>,
}

impl GaussianDenoiser {
    /// The denoiser of N(m, P); P must be symmetric positive semi-definite.
    pub fn new(m: Vec<f64>, p: DMatrix<f64>) -> Result<Self, FilterError> {
        if p.nrows() != m.len() || p.ncols() != m.len() {
            return Err(FilterError::Dimension(format!(
                "mean of length {} with a {}x{} covariance",
                m.len(),
                p.nrows(),
                p.ncols()
            )));
        }
        Ok(GaussianDenoiser {
            m: DVector::from_vec(m),
            p,
        })
    }

    fn gain(&self, sigma: f64) -> DMatrix<f64> {
        let n = self.m.len();
        let a = &self.p + DMatrix::identity(n, n) * (sigma * sigma);
        // P + σ²I is symmetric positive definite for σ > 0.
        let inv = a
            .cholesky()
            .map(|c| c.inverse())
            .unwrap_or_else(|| DMatrix::identity(n, n) / (sigma * sigma));
        &self.p * inv
    }
}

impl Denoiser for GaussianDenoiser {
    fn dim(&self) -> usize {
        self.m.len()
    }

    fn state_dim(&self) -> usize {
        self.m.len()
    }

    fn denoise(&self, z: &[f64], sigma: &[f64], out: &mut [f64]) -> Result<(), FilterError> {
        let n = self.m.len();
        for ((zb, ob), &s) in z.chunks_exact(n).zip(out.chunks_exact_mut(n)).zip(sigma) {
            let d = &self.m + self.gain(s) * (DVector::from_column_slice(zb) - &self.m);
            ob.copy_from_slice(d.as_slice());
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
        let n = self.m.len();
        self.denoise(z, sigma, x0)?;
        for ((vb, jb), &s) in v.chunks_exact(n).zip(jtv.chunks_exact_mut(n)).zip(sigma) {
            let g = self.gain(s).transpose() * DVector::from_column_slice(vb);
            jb.copy_from_slice(g.as_slice());
        }
        Ok(())
    }

    fn encode(&self, x: &[f64]) -> Result<Vec<f64>, FilterError> {
        Ok(x.to_vec())
    }

    fn decode(&self, z: &[f64]) -> Result<Vec<f64>, FilterError> {
        Ok(z.to_vec())
    }
}

/// A Gaussian's mean x̄, eigenvectors U (columns) and eigenvalues λ of its covariance U diag(λ) Uᵀ.
pub type Spectrum = (Vec<f64>, DMatrix<f64>, DVector<f64>);

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
        let valid = half_width_km > 0.0 && inflation > 0.0 && floor >= 0.0; // false for NaN
        if !valid {
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
    pub fn spectrum(&self, background: &Ensemble) -> Result<Spectrum, FilterError> {
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
