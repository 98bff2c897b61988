//! # Paired evidence across seeds (`assimd experiment --seeds`, `--compare`)
//!
//! One cycled run is one draw: its time-mean RMSE depends on the truth trajectory and the
//! observation errors of its seed. A claim that filter A beats filter B is judged over several
//! seeds k = 1..n on the **same** truths and observations (the seed fixes both, and the initial
//! ensemble), as the mean of the paired differences Δ_k = RMSE_A(k) − RMSE_B(k) with its 95%
//! confidence interval
//!
//!   Δ̄ ± t_{0.975, n−1} · s_Δ / √n,   s_Δ² = Σ (Δ_k − Δ̄)² / (n − 1),
//!
//! (Student's t: the differences are treated as independent draws, one per seed). Pairing removes
//! the seed-to-seed variation both filters share, which is usually most of it. Each filter's own
//! mean RMSE, spread/skill and CRPS get the same interval.
//!
//! Seeds run in parallel, as many at once as the machine has cores.

use crate::experiment::{self, ExperimentSpec, Summary};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

/// Parse a seed list: `1-5`, `1,3,7`, or a mix (`1-3,10`).
pub fn parse_seeds(text: &str) -> Result<Vec<u64>> {
    let mut seeds = Vec::new();
    for part in text.split(',').map(str::trim) {
        let num = |s: &str| {
            s.trim().parse::<u64>().with_context(|| {
                format!("--seeds {text}: '{s}' is not a seed (give e.g. 1-5 or 1,2,3)")
            })
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if b < a {
                    bail!("--seeds {text}: the range {a}-{b} is empty (write it low-high)");
                }
                seeds.extend(a..=b);
            }
            None => seeds.push(num(part)?),
        }
    }
    let mut sorted = seeds.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != seeds.len() {
        bail!("--seeds {text}: a seed is listed twice");
    }
    Ok(seeds)
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom (tabulated to 30, then
/// 1.96 + 2.5/df, within 0.002 of the exact value).
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        _ => 1.96 + 2.5 / df as f64,
    }
}

/// A mean with its 95% interval (`lo`, `hi` are `None` for a single value).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Interval {
    /// The mean.
    pub mean: f64,
    /// Lower end of the 95% interval.
    pub lo: Option<f64>,
    /// Upper end.
    pub hi: Option<f64>,
}

impl Interval {
    /// Mean ± t_{0.975, n−1} s/√n of `xs` (module docs).
    pub fn of(xs: &[f64]) -> Interval {
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n as f64;
        if n < 2 {
            return Interval {
                mean,
                lo: None,
                hi: None,
            };
        }
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t975(n - 1) * (var / n as f64).sqrt();
        Interval {
            mean,
            lo: Some(mean - half),
            hi: Some(mean + half),
        }
    }

    /// `0.1234 [0.1200, 0.1268]`, or the mean alone.
    pub fn show(&self, digits: usize) -> String {
        match (self.lo, self.hi) {
            (Some(lo), Some(hi)) => {
                format!("{:.digits$} [{lo:.digits$}, {hi:.digits$}]", self.mean)
            }
            _ => format!("{:.digits$}", self.mean),
        }
    }
}

/// One experiment over several seeds.
#[derive(Clone, Debug, Serialize)]
pub struct SeedRuns {
    /// The seeds, in the order given.
    pub seeds: Vec<u64>,
    /// Each seed's summary.
    pub per_seed: Vec<Summary>,
    /// Analysis RMSE over the seeds.
    pub rmse_a: Interval,
    /// Spread/skill over the seeds.
    pub spread_skill: Interval,
    /// Analysis CRPS over the seeds.
    pub crps_a: Interval,
}

impl SeedRuns {
    fn new(seeds: Vec<u64>, per_seed: Vec<Summary>) -> Self {
        let of = |f: fn(&Summary) -> f64| Interval::of(&per_seed.iter().map(f).collect::<Vec<_>>());
        SeedRuns {
            rmse_a: of(|s| s.rmse_a),
            spread_skill: of(|s| s.spread_skill),
            crps_a: of(|s| s.crps_a),
            seeds,
            per_seed,
        }
    }
}

/// Run `spec` at every seed of `seeds` (in parallel), calling `on_cycle` after every cycle of
/// any of them.
pub fn run_seeds(
    spec: &ExperimentSpec,
    seeds: &[u64],
    on_cycle: &(dyn Fn() + Sync),
) -> Result<SeedRuns> {
    if seeds.is_empty() {
        bail!("--seeds: give at least one seed");
    }
    let per_seed = seeds
        .par_iter()
        .map(|&seed| {
            let mut s = spec.clone();
            s.seed = seed;
            experiment::run_with(&s, &mut |_, _| on_cycle()).with_context(|| format!("seed {seed}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SeedRuns::new(seeds.to_vec(), per_seed))
}

/// The paired difference of two experiments' analysis RMSE, seed by seed (this − other).
pub fn paired_difference(this: &SeedRuns, other: &SeedRuns) -> Result<Interval> {
    if this.seeds != other.seeds {
        bail!("paired runs need the same seeds");
    }
    let d: Vec<f64> = this
        .per_seed
        .iter()
        .zip(&other.per_seed)
        .map(|(a, b)| a.rmse_a - b.rmse_a)
        .collect();
    Ok(Interval::of(&d))
}

/// The `--json` line of a multi-seed run: today's single-run fields as means over the seeds (the
/// counts and lists of the last seed are in `per_seed`), with `seeds`, `per_seed`, `rmse_a_lo`,
/// `rmse_a_hi` (and the same for `spread_skill` and `crps_a`); with a comparison `diff`,
/// `diff_lo`, `diff_hi` (this − compared) and `compare` (the compared experiment's means and runs).
pub fn json(runs: &SeedRuns, compare: Option<(&str, &SeedRuns, Interval)>) -> serde_json::Value {
    use serde_json::json;
    let mean = |f: fn(&Summary) -> f64| {
        runs.per_seed.iter().map(f).sum::<f64>() / runs.per_seed.len() as f64
    };
    let first = &runs.per_seed[0];
    let mut v = json!({
        "testbed": first.testbed, "filter": first.filter, "network": first.network,
        "members": first.members, "cycles": first.cycles, "burn_in": first.burn_in,
        "rmse_a": runs.rmse_a.mean, "rmse_a_lo": runs.rmse_a.lo, "rmse_a_hi": runs.rmse_a.hi,
        "rmse_f": mean(|s| s.rmse_f), "spread_a": mean(|s| s.spread_a),
        "spread_skill": runs.spread_skill.mean, "spread_skill_lo": runs.spread_skill.lo,
        "spread_skill_hi": runs.spread_skill.hi,
        "crps_a": runs.crps_a.mean, "crps_a_lo": runs.crps_a.lo, "crps_a_hi": runs.crps_a.hi,
        "seconds_per_cycle": mean(|s| s.seconds_per_cycle),
        "rmse_withheld_a": mean(|s| s.rmse_withheld_a),
        "seeds": runs.seeds, "per_seed": runs.per_seed,
    });
    if let Some((file, other, diff)) = compare {
        let o = &other.per_seed[0];
        v["diff"] = json!(diff.mean);
        v["diff_lo"] = json!(diff.lo);
        v["diff_hi"] = json!(diff.hi);
        v["compare"] = json!({
            "file": file, "filter": o.filter, "members": o.members,
            "rmse_a": other.rmse_a.mean, "rmse_a_lo": other.rmse_a.lo, "rmse_a_hi": other.rmse_a.hi,
            "spread_skill": other.spread_skill.mean, "crps_a": other.crps_a.mean,
            "per_seed": other.per_seed,
        });
    }
    v
}

/// Check that two specs run on the same truths and observations (testbed, network, its options,
/// cycles and burn-in; the seeds are shared by construction), naming the first difference.
pub fn check_pairable(a: &ExperimentSpec, b: &ExperimentSpec) -> Result<()> {
    if a.testbed != b.testbed {
        bail!(
            "--compare needs the same truths and observations: [testbed] {:?} here, {:?} in the compared file",
            a.testbed,
            b.testbed
        );
    }
    let burn = |s: &ExperimentSpec| s.burn_in.unwrap_or(s.cycles / 10);
    if (a.cycles, burn(a)) != (b.cycles, burn(b)) {
        bail!(
            "--compare needs the same cycles and burn-in: {} and {} here, {} and {} in the compared file (give --cycles and --burn-in, which apply to both)",
            a.cycles,
            burn(a),
            b.cycles,
            burn(b)
        );
    }
    if a.faults != b.faults || a.corrupt_at != b.corrupt_at {
        bail!("--compare needs the same injected faults (gross_errors, bias, corrupt_at) in both experiments");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lists_parse_and_bad_ones_name_the_fix() {
        assert_eq!(parse_seeds("1-5").unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(parse_seeds("1,3, 7").unwrap(), vec![1, 3, 7]);
        assert_eq!(parse_seeds("100-102,9").unwrap(), vec![100, 101, 102, 9]);
        assert!(parse_seeds("5-1")
            .unwrap_err()
            .to_string()
            .contains("low-high"));
        assert!(parse_seeds("1,x")
            .unwrap_err()
            .to_string()
            .contains("'x' is not a seed"));
        assert!(parse_seeds("1-3,2")
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn t_quantiles_match_the_published_table() {
        // Two-sided 95% points of Student's t (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
        for (df, t) in [
            (1, 12.706),
            (4, 2.776),
            (10, 2.228),
            (30, 2.042),
            (40, 2.021),
            (60, 2.000),
            (120, 1.980),
        ] {
            assert!(
                (t975(df) - t).abs() < 2.5e-3,
                "df {df}: {} vs {t}",
                t975(df)
            );
        }
    }

    #[test]
    fn interval_of_known_values() {
        // Mean 3, sample sd √2.5 over 5 values: half-width 2.776 · √(2.5/5).
        let i = Interval::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(i.mean, 3.0);
        let half = 2.776 * (0.5f64).sqrt();
        assert!((i.hi.unwrap() - 3.0 - half).abs() < 1e-12);
        assert!((3.0 - i.lo.unwrap() - half).abs() < 1e-12);
        let one = Interval::of(&[0.7]);
        assert_eq!((one.mean, one.lo, one.hi), (0.7, None, None));
        assert_eq!(one.show(2), "0.70");
    }
}
