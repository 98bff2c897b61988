//! The divergence guard: a robust innovation-consistency test (see the module docs of `qc`).

use super::check::Departure;
use crate::{Ensemble, FilterError};
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
    Some(median_sorted(&z2) / MEDIAN_CHI2_1)
}

fn median_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(median_sorted(&v))
}

/// c = median(dᵢ² / vᵢ), vᵢ = median over the cycle's observations of the same variable of
/// (y − median y)²: how far the background is from the observations, against how far the
/// observations are from their own network median. A background of climatological quality gives
/// about 1, a working filter far less; a wrecked state, whatever its spread, far more. `values`
/// are (variable, y) of each departure's observation; variables with fewer than 3 observations or
/// no scatter are left out. `None` when nothing is left.
pub fn climate_ratio(deps: &[Departure], values: &[(usize, f64)]) -> Option<f64> {
    let mut by_var: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
    for &(v, y) in values {
        by_var.entry(v).or_default().push(y);
    }
    let scatter: std::collections::BTreeMap<usize, f64> = by_var
        .into_iter()
        .filter(|(_, ys)| ys.len() >= 3)
        .filter_map(|(v, ys)| {
            let m = median(ys.clone())?;
            median(ys.iter().map(|y| (y - m) * (y - m)).collect())
                .filter(|s| *s > 0.0)
                .map(|s| (v, s))
        })
        .collect();
    let r: Vec<f64> = deps
        .iter()
        .zip(values)
        .filter_map(|(d, (v, _))| scatter.get(v).map(|s| d.d * d.d / s))
        .map(|r| if r.is_nan() { f64::INFINITY } else { r })
        .collect();
    median(r)
}

/// The largest excursion of any background value from its field's climatology, in units of the
/// field's climatological standard deviation: max |x − μ_f| / σ_f over members and points (∞ for a
/// non-finite value). The state is laid out field by field; `mean` and `std` have one entry per
/// field.
pub fn state_excursion(background: &Ensemble, mean: &[f64], std: &[f64]) -> f64 {
    let fields = mean.len().max(1);
    let per_field = background.dim() / fields;
    let mut worst: f64 = 0.0;
    for x in background.members() {
        for (i, v) in x.iter().enumerate() {
            let f = (i / per_field.max(1)).min(fields - 1);
            let e = ((v - mean[f]) / std[f]).abs();
            worst = if e.is_nan() {
                f64::INFINITY
            } else {
                worst.max(e)
            };
        }
    }
    worst
}

/// What the guard found in a flagged cycle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Divergence {
    /// [`state_excursion`] (0 when no climatology was given).
    pub state_sigmas: f64,
    /// [`innovation_ratio`] (∞ when the background is not finite).
    pub ratio: f64,
    /// [`climate_ratio`] (0 when it could not be computed).
    pub climate_ratio: f64,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "state excursion {:.3e} σ_clim, innovation ratio {:.3e}, climate ratio {:.3e}",
            self.state_sigmas, self.ratio, self.climate_ratio
        )
    }
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
    /// Flag when [`climate_ratio`] exceeds this: the background is farther from the observations
    /// than they are from their own network median, by this factor in squared departure. Catches a
    /// wrecked state whose spread blew up with it (its z stay moderate); a climatological
    /// background gives about 1.
    pub max_climate_ratio: f64,
    /// Flag when any background value lies more than this many climatological standard
    /// deviations from its field's climatological mean, or is not finite ([`state_excursion`]):
    /// a state blowing up where no observation sees it yet. A model state never leaves ±10 σ.
    pub max_state_sigmas: f64,
    /// Fewest observations for a verdict: the median of a handful says little.
    pub min_obs: usize,
}

impl Default for DivergenceGuard {
    fn default() -> Self {
        DivergenceGuard {
            enabled: true,
            max_ratio: 25.0,
            max_climate_ratio: 10.0,
            max_state_sigmas: 50.0,
            min_obs: 10,
        }
    }
}

impl DivergenceGuard {
    /// Check the parameters; errors name the fix.
    pub fn validate(&self) -> Result<(), FilterError> {
        if !(self.max_state_sigmas.is_finite() && self.max_state_sigmas > 5.0) {
            return Err(FilterError::InvalidParameter(format!(
                "divergence.max_state_sigmas must be a finite number > 5 (50 typical), got {}",
                self.max_state_sigmas
            )));
        }
        if !(self.max_climate_ratio.is_finite() && self.max_climate_ratio > 1.0) {
            return Err(FilterError::InvalidParameter(format!(
                "divergence.max_climate_ratio must be a finite number > 1 (10 typical), got {}",
                self.max_climate_ratio
            )));
        }
        if !(self.max_ratio.is_finite() && self.max_ratio > 1.0) {
            return Err(FilterError::InvalidParameter(format!(
                "divergence.max_ratio must be a finite number > 1 (10-50 typical), got {}",
                self.max_ratio
            )));
        }
        Ok(())
    }

    /// `Some` when the cycle is flagged; `values` are (variable, y) of each departure's
    /// observation; `state_sigmas` the background's [`state_excursion`] (0 if unknown). The state
    /// test needs no observations; the other two need `min_obs` of them.
    pub fn check(
        &self,
        deps: &[Departure],
        values: &[(usize, f64)],
        state_sigmas: f64,
    ) -> Option<Divergence> {
        if !self.enabled {
            return None;
        }
        // Past a threshold, or not comparable with it (NaN).
        let exceeds = |v: f64, max: f64| v.partial_cmp(&max).is_none_or(|o| o.is_gt());
        let wild = exceeds(state_sigmas, self.max_state_sigmas);
        let (ratio, climate_ratio) = if deps.len() >= self.min_obs {
            (
                innovation_ratio(deps).unwrap_or(0.0),
                climate_ratio(deps, values).unwrap_or(0.0),
            )
        } else {
            (0.0, 0.0)
        };
        (wild || exceeds(ratio, self.max_ratio) || exceeds(climate_ratio, self.max_climate_ratio))
            .then_some(Divergence {
                state_sigmas,
                ratio,
                climate_ratio,
            })
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
        // Observations with a scatter of 10 about their median (σ_d = 2 is a fifth of it).
        let values: Vec<(usize, f64)> = (0..deps.len())
            .map(|_| {
                (
                    0,
                    10.0 * Distribution::<f64>::sample(&StandardNormal, &mut rng),
                )
            })
            .collect();
        assert_eq!(guard.check(&deps, &values, 0.0), None);
        // A few gross errors do not trip it; a background 30 σ_d off everywhere does.
        let mut gross = deps[..100].to_vec();
        for d in gross.iter_mut().take(5) {
            d.d = 100.0;
        }
        assert_eq!(guard.check(&gross, &values[..100], 0.0), None);
        let wrecked: Vec<Departure> = deps[..100]
            .iter()
            .map(|d| Departure {
                d: d.d + 60.0,
                ..*d
            })
            .collect();
        assert!(guard
            .check(&wrecked, &values[..100], 0.0)
            .is_some_and(|r| r.ratio > 800.0));
        assert_eq!(
            guard.check(&wrecked[..5], &values[..5], 0.0),
            None,
            "too few observations for a verdict"
        );
        assert_eq!(
            DivergenceGuard {
                enabled: false,
                ..guard
            }
            .check(&wrecked, &values[..100], 0.0),
            None
        );
    }

    #[test]
    fn a_wrecked_background_with_a_blown_up_spread_fails_the_climate_test() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        // 40 observations of one variable scattered by 3.6 (l96's climatology); a background
        // 1,000 off everywhere with a spread of 2,000: z stays near 0.5, the climate ratio is 10⁵.
        let values: Vec<(usize, f64)> = (0..40)
            .map(|_| {
                (
                    0,
                    2.35 + 3.6 * Distribution::<f64>::sample(&StandardNormal, &mut rng),
                )
            })
            .collect();
        let wrecked: Vec<Departure> = values
            .iter()
            .map(|(_, y)| Departure {
                d: y + 1000.0,
                sigma_b: 2000.0,
                sigma_o: 1.0,
            })
            .collect();
        let guard = DivergenceGuard::default();
        let f = guard.check(&wrecked, &values, 0.0).expect("flagged");
        assert!(f.ratio < guard.max_ratio && f.climate_ratio > 1e4, "{f}");
        // A background at the climatological mean (spin-up) is not flagged: the ratio is near 1
        // (between 0.3 and 3 for 40 observations).
        let clim: Vec<Departure> = values
            .iter()
            .map(|(_, y)| Departure {
                d: y - 2.35,
                sigma_b: 3.6,
                sigma_o: 1.0,
            })
            .collect();
        let c = climate_ratio(&clim, &values).unwrap();
        assert!((0.3..3.0).contains(&c), "{c}");
        assert_eq!(guard.check(&clim, &values, 0.0), None);
        // Not finite: flagged.
        let nan: Vec<Departure> = values
            .iter()
            .map(|_| Departure {
                d: f64::NAN,
                sigma_b: f64::NAN,
                sigma_o: 1.0,
            })
            .collect();
        assert!(guard
            .check(&nan, &values, 0.0)
            .is_some_and(|f| f.ratio.is_infinite()));
        // A variable with fewer than 3 observations is left out.
        assert_eq!(climate_ratio(&wrecked[..2], &values[..2]), None);
    }

    #[test]
    fn a_state_blowing_up_out_of_sight_is_flagged_by_its_excursion() {
        // Two fields of 3 points; climatology (0, 10) and (5, 1).
        let (mean, std) = ([0.0, 5.0], [10.0, 1.0]);
        let ok = Ensemble::from_members(vec![
            vec![12.0, -8.0, 3.0, 5.5, 4.0, 6.0],
            vec![-20.0, 0.0, 1.0, 5.0, 7.0, 3.0],
        ])
        .unwrap();
        assert_eq!(
            state_excursion(&ok, &mean, &std),
            2.0,
            "(7 - 5) / 1 and 20 / 10"
        );
        let mut wild = ok.clone();
        wild.members_mut().next().unwrap()[4] = 5.0 + 60.0;
        assert_eq!(state_excursion(&wild, &mean, &std), 60.0);
        let guard = DivergenceGuard::default();
        assert!(
            guard
                .check(&[], &[], 60.0)
                .is_some_and(|d| d.state_sigmas == 60.0),
            "no observations needed"
        );
        assert_eq!(guard.check(&[], &[], 2.0), None);
        wild.members_mut().next().unwrap()[0] = f64::NAN;
        assert!(state_excursion(&wild, &mean, &std).is_infinite());
    }
}
