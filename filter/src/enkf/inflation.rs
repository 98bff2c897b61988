//! Multiplicative inflation and relaxation to prior spread.

use crate::ensemble::Ensemble;
use crate::FilterError;

/// Inflation settings shared by the EnKF family.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Inflation {
    /// Multiplicative factor ρ on the background covariance (anomalies × √ρ). 1 = none; below 1
    /// deflates, which is only useful to produce deliberately mis-tuned training runs.
    pub rho: f64,
    /// RTPS coefficient α in [0, 1]: relax the analysis spread towards the background spread.
    pub rtps: f64,
}

impl Default for Inflation {
    fn default() -> Self {
        Inflation {
            rho: 1.0,
            rtps: 0.0,
        }
    }
}

impl Inflation {
    /// Validated settings.
    pub fn new(rho: f64, rtps: f64) -> Result<Self, FilterError> {
        if !(rho.is_finite() && rho > 0.5 && rho <= 10.0) {
            return Err(FilterError::InvalidParameter(format!(
                "inflation must be in (0.5, 10] (1.0 = none, 1.01-1.1 typical), got {rho}"
            )));
        }
        if !(0.0..=1.0).contains(&rtps) {
            return Err(FilterError::InvalidParameter(format!(
                "rtps must be in [0, 1] (0 = off, 0.5-0.9 typical), got {rtps}"
            )));
        }
        Ok(Inflation { rho, rtps })
    }

    /// Scale the anomalies of `ens` by √ρ.
    pub fn inflate(&self, ens: &mut Ensemble) {
        if self.rho == 1.0 {
            return;
        }
        let mean = ens.mean();
        let s = self.rho.sqrt();
        for x in ens.members_mut() {
            for (xi, mi) in x.iter_mut().zip(&mean) {
                *xi = mi + s * (*xi - mi);
            }
        }
    }

    /// RTPS: given the background standard deviation per element, rescale the analysis anomalies
    /// so that σ_a ← α σ_b + (1 - α) σ_a.
    pub fn relax(&self, ens: &mut Ensemble, background_std: &[f64]) {
        if self.rtps == 0.0 {
            return;
        }
        let mean = ens.mean();
        let sa = ens.std();
        let factor: Vec<f64> = sa
            .iter()
            .zip(background_std)
            .map(|(a, b)| {
                if *a > 0.0 {
                    (self.rtps * b + (1.0 - self.rtps) * a) / a
                } else {
                    1.0
                }
            })
            .collect();
        for x in ens.members_mut() {
            for ((xi, mi), f) in x.iter_mut().zip(&mean).zip(&factor) {
                *xi = mi + f * (*xi - mi);
            }
        }
    }
}
