//! The exact denoiser of a Gaussian prior, for tests without a trained network.

use super::Denoiser;
use crate::FilterError;
use nalgebra::{DMatrix, DVector};

/// For a prior N(m, P) in pixel space, D(z; σ) = m + P (P + σ² I)⁻¹ (z - m) exactly, and its
/// Jacobian P (P + σ² I)⁻¹ is symmetric, so Jᵀ v = P (P + σ² I)⁻¹ v.
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
