//! The divergence guard: a robust innovation-consistency test (see the module docs of `qc`).

use super::check::Departure;
use crate::FilterError;
use serde::{Deserialize, Serialize};

/// The median of the χ² distribution with one degree of freedom, (Φ⁻¹(3/4))².
pub const MEDIAN_CHI2_1: f64 = 0.454_936_423_119_572_8;

/// r = median(z²) / median(χ²₁) over the departures (1 for a reliable ensemble); `None` when there
/// are none.
pub fn innovation_ratio(deps: &[Departure]) -> Option<f64> {
    let mut z2: Vec<f64> = deps
        .iter()
        .map(|d| d.z() * d.z())
        .map(|v| if v.is_nan() { f64::INFINITY } else { v })
        .collect();
    if z2.is_empty() {
        return None;
    }
    z2.sort_by(f64::total_cmp);
    let n = z2.len();
    let median = if n % 2 == 1 {
        z2[n / 2]
    } else {
        0.5 * (z2[n / 2 - 1] + z2[n / 2])
    };
    Some(median / MEDIAN_CHI2_1)
}

/// Flags a cycle whose innovations are far larger than the background says they should be.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DivergenceGuard {
    /// Off: never flag.
    pub enabled: bool,
    /// Flag when median(z²)/median(χ²₁) exceeds this: the typical departure is sqrt(ratio) times
    /// its expected size. A sound cycled filter stays within a few units (its spread is tuned to
    /// its errors); a wrecked state gives 10³ and more.
    pub max_ratio: f64,
    /// Fewest observations for a verdict: the median of a handful says little.
    pub min_obs: usize,
}

impl Default for DivergenceGuard {
    fn default() -> Self {
        DivergenceGuard {
            enabled: true,
            max_ratio: 25.0,
            min_obs: 10,
        }
    }
}

impl DivergenceGuard {
    /// Check the parameters; errors name the fix.
    pub fn validate(&self) -> Result<(), FilterError> {
        if !(self.max_ratio.is_finite() && self.max_ratio > 1.0) {
            return Err(FilterError::InvalidParameter(format!(
                "divergence.max_ratio must be a finite number > 1 (10-50 typical), got {}",
                self.max_ratio
            )));
        }
        Ok(())
    }

    /// `Some(ratio)` when the cycle is flagged.
    pub fn check(&self, deps: &[Departure]) -> Option<f64> {
        if !self.enabled || deps.len() < self.min_obs {
            return None;
        }
        innovation_ratio(deps).filter(|r| !(*r <= self.max_ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    #[test]
    fn the_median_of_chi2_1_is_the_squared_quartile_of_the_normal() {
        // Φ(0.6744897501960817) = 3/4.
        assert!((MEDIAN_CHI2_1 - 0.674_489_750_196_081_7f64.powi(2)).abs() < 1e-15);
    }

    #[test]
    fn consistent_innovations_give_a_ratio_near_one_and_a_wrecked_state_is_flagged() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let deps: Vec<Departure> = (0..20_000)
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut rng);
                Departure {
                    d: 2.0 * z,
                    sigma_b: 1.2,
                    sigma_o: 1.6,
                } // σ_d = 2
            })
            .collect();
        // The sample median of χ²₁ from 20,000 draws: standard error ≈ 0.7 % of the median.
        let r = innovation_ratio(&deps).unwrap();
        assert!((r - 1.0).abs() < 0.03, "ratio {r}");
        let guard = DivergenceGuard::default();
        assert_eq!(guard.check(&deps), None);
        // A few gross errors do not trip it; a background 30 σ_d off everywhere does.
        let mut gross = deps[..100].to_vec();
        for d in gross.iter_mut().take(5) {
            d.d = 100.0;
        }
        assert_eq!(guard.check(&gross), None);
        let wrecked: Vec<Departure> = deps[..100]
            .iter()
            .map(|d| Departure {
                d: d.d + 60.0,
                ..*d
            })
            .collect();
        assert!(guard.check(&wrecked).is_some_and(|r| r > 800.0));
        assert_eq!(
            guard.check(&wrecked[..5]),
            None,
            "too few observations for a verdict"
        );
        assert_eq!(
            DivergenceGuard {
                enabled: false,
                ..guard
            }
            .check(&wrecked),
            None
        );
    }
}
