//! Stochastic (perturbed-observation) EnKF.

use super::{Inflation, ObservedEnsemble};
use crate::analysis::Analysis;
use crate::ensemble::Ensemble;
use crate::obs::ObsBatch;
use crate::FilterError;
use nalgebra::DMatrix;
use rand::RngCore;
use rand_distr::{Distribution, StandardNormal};

/// The stochastic EnKF of the module docs, for small systems (an m × m Cholesky per cycle).
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
        let mut eps = DMatrix::from_fn(m, n, |j, _| {
            batch.sigma[j] * <StandardNormal as Distribution<f64>>::sample(&StandardNormal, rng)
        });
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
