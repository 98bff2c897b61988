//! Global ensemble transform Kalman filter (symmetric square root).

use super::{apply_weights, transform, Inflation, ObservedEnsemble};
use crate::analysis::Analysis;
use crate::ensemble::Ensemble;
use crate::obs::ObsBatch;
use crate::FilterError;
use rand::RngCore;

/// The ETKF of the module docs, for small systems (one N × N eigen-decomposition per cycle).
#[derive(Clone, Debug)]
pub struct Etkf {
    /// Inflation and RTPS.
    pub inflation: Inflation,
}

impl Analysis for Etkf {
    fn name(&self) -> &'static str {
        "etkf"
    }

    fn analyse(
        &self,
        ens: &mut Ensemble,
        batch: &ObsBatch,
        _rng: &mut dyn RngCore,
    ) -> Result<(), FilterError> {
        if ens.n_members() < 2 {
            return Err(FilterError::InvalidParameter(
                "the ETKF needs at least 2 members".into(),
            ));
        }
        let background_std = ens.std();
        let n = ens.n_members();
        let w = if batch.is_empty() {
            nalgebra::DMatrix::identity(n, n) * self.inflation.rho.sqrt()
        } else {
            let oe = ObservedEnsemble::new(ens, batch);
            let rinv: Vec<f64> = batch.sigma.iter().map(|s| 1.0 / (s * s)).collect();
            transform(&oe.y_anom, &oe.innovation, &rinv, self.inflation.rho)
        };
        let dim = ens.dim();
        let idx: Vec<usize> = (0..dim).collect();
        let mut out = vec![0.0; dim * n];
        apply_weights(ens, &idx, &w, &mut out);
        for (i, vals) in out.chunks_exact(n).enumerate() {
            for (k, v) in vals.iter().enumerate() {
                ens.member_mut(k)[i] = *v;
            }
        }
        self.inflation.relax(ens, &background_std);
        Ok(())
    }
}
