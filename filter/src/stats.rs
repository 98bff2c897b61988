//! # Skill statistics
//!
//! Every filter is assessed by these functions and never computes its own scores.
//!
//! - RMSE(x̄, x_t) = sqrt((1/n) Σ_i (x̄_i - x_t,i)²)
//! - spread = sqrt((1/n) Σ_i s_i²), s_i² the unbiased ensemble variance at point i; a reliable
//!   ensemble has spread ≈ RMSE (spread/skill ratio ≈ 1, Fortin et al. 2014 with the (N+1)/N factor
//!   neglected).
//! - CRPS of an ensemble (Hersbach 2000; Gneiting & Raftery 2007, eq. 21):
//!   CRPS = (1/N) Σ_k |x_k - y| - (1/(2N²)) Σ_k Σ_l |x_k - x_l|, averaged over points.
//! - CRPS of a Gaussian N(μ, σ²) (Gneiting et al. 2005):
//!   CRPS = σ [ z (2Φ(z) - 1) + 2 φ(z) - 1/√π ],  z = (y - μ)/σ.
//! - Rank histogram (Anderson 1996; Hamill 2001): the rank of the truth among the N members,
//!   counted over points, N + 1 bins.
//! - Innovation statistics: mean and RMS of d = y - H(x) per modality (O-B with the background,
//!   O-A with the analysis).
//! - Spread in observation space: sqrt((1/m) Σ_i (var_k H_i(x_k) + σ_i²)), the error size a
//!   reliable ensemble predicts for its mean at independent (withheld) observations; its ratio to
//!   the RMSE against those observations is the spread/skill ratio where no truth is known
//!   (Desroziers et al. 2005's consistency check, with the analysis ensemble).
//!
//! ## References
//! - Hersbach, H. (2000). Decomposition of the continuous ranked probability score for ensemble
//!   prediction systems. Weather and Forecasting 15, 559–570.
//! - Gneiting, T., Raftery, A. E. (2007). Strictly proper scoring rules, prediction, and estimation. JASA 102.
//! - Gneiting, T. et al. (2005). Calibrated probabilistic forecasting using ensemble model output
//!   statistics and minimum CRPS estimation. Monthly Weather Review 133.
//! - Hamill, T. M. (2001). Interpretation of rank histograms for verifying ensemble forecasts. MWR 129.
//! - Desroziers, G. et al. (2005). Diagnosis of observation, background and analysis-error
//!   statistics in observation space. QJRMS 131.

use crate::ensemble::Ensemble;
use crate::obs::{Modality, ObsBatch, ObservationOperator};

/// Root-mean-square difference of two vectors of equal length.
pub fn rmse(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rmse of vectors of different length");
    (a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>() / a.len() as f64).sqrt()
}

/// Ensemble spread: square root of the point-mean unbiased variance.
pub fn spread(e: &Ensemble) -> f64 {
    let v = e.variance();
    (v.iter().sum::<f64>() / v.len() as f64).sqrt()
}

/// Root of the mean square of a per-point standard deviation field.
pub fn rms(s: &[f64]) -> f64 {
    (s.iter().map(|v| v * v).sum::<f64>() / s.len() as f64).sqrt()
}

/// CRPS of an ensemble against the truth, averaged over points.
pub fn crps_ensemble(e: &Ensemble, truth: &[f64]) -> f64 {
    let n = e.n_members();
    let mut values = vec![0.0; n];
    let mut total = 0.0;
    for (i, &y) in truth.iter().enumerate() {
        for (k, v) in values.iter_mut().enumerate() {
            *v = e.member(k)[i];
        }
        total += crps_sample(&mut values, y);
    }
    total / truth.len() as f64
}

/// CRPS of one scalar ensemble (sorted in place) against the observed value `y`.
pub fn crps_sample(values: &mut [f64], y: f64) -> f64 {
    let n = values.len() as f64;
    values.sort_by(f64::total_cmp);
    let abs_err: f64 = values.iter().map(|x| (x - y).abs()).sum::<f64>() / n;
    // Σ_k Σ_l |x_k - x_l| = 2 Σ_k (2k - N + 1) x_(k) for sorted x.
    let pair: f64 = values
        .iter()
        .enumerate()
        .map(|(k, x)| (2.0 * k as f64 - n + 1.0) * x)
        .sum::<f64>()
        * 2.0;
    abs_err - pair / (2.0 * n * n)
}

/// CRPS of N(mean, std²) against `y`.
pub fn crps_gaussian(mean: f64, std: f64, y: f64) -> f64 {
    if std <= 0.0 {
        return (y - mean).abs();
    }
    let z = (y - mean) / std;
    let pdf = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let cdf = 0.5 * libm::erfc(-z / std::f64::consts::SQRT_2);
    std * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - 1.0 / std::f64::consts::PI.sqrt())
}

/// Point-mean CRPS of independent Gaussians N(mean_i, std_i²) against the truth.
pub fn crps_gaussian_field(mean: &[f64], std: &[f64], truth: &[f64]) -> f64 {
    mean.iter()
        .zip(std)
        .zip(truth)
        .map(|((m, s), y)| crps_gaussian(*m, *s, *y))
        .sum::<f64>()
        / truth.len() as f64
}

/// Rank histogram of the truth within the ensemble: `hist[r]` counts points where exactly r members
/// lie below the truth (ties split evenly by counting members strictly below).
pub fn rank_histogram(e: &Ensemble, truth: &[f64]) -> Vec<u64> {
    let mut hist = vec![0u64; e.n_members() + 1];
    for (i, &y) in truth.iter().enumerate() {
        let below = e.members().filter(|m| m[i] < y).count();
        hist[below] += 1;
    }
    hist
}

/// Mean and RMS of innovations for one modality.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Innovation {
    /// Number of observations.
    pub count: usize,
    /// Mean of y - H(x).
    pub mean: f64,
    /// RMS of y - H(x).
    pub rms: f64,
}

/// Innovation statistics d = y - H(x) of a batch, for one modality.
pub fn innovations(batch: &ObsBatch, x: &[f64], modality: Modality) -> Innovation {
    let mut hx = vec![0.0; batch.len()];
    batch.op.apply(x, &mut hx);
    let d: Vec<f64> = batch
        .obs
        .iter()
        .zip(batch.y.iter().zip(&hx))
        .filter(|(o, _)| o.modality == modality)
        .map(|(_, (y, h))| y - h)
        .collect();
    if d.is_empty() {
        return Innovation::default();
    }
    let n = d.len() as f64;
    Innovation {
        count: d.len(),
        mean: d.iter().sum::<f64>() / n,
        rms: (d.iter().map(|v| v * v).sum::<f64>() / n).sqrt(),
    }
}

/// Spread in observation space, observation error included: sqrt((1/m) Σ_i (var_k H_i(x_k) + σ_i²))
/// over the batch's m observations (unbiased ensemble variance of each H_i(x_k)). NaN when empty.
pub fn obs_space_spread(batch: &ObsBatch, e: &Ensemble) -> f64 {
    if batch.is_empty() {
        return f64::NAN;
    }
    let (m, n) = (batch.len(), e.n_members());
    let mut hx = vec![0.0; m];
    let (mut sum, mut sum2) = (vec![0.0; m], vec![0.0; m]);
    for x in e.members() {
        batch.op.apply(x, &mut hx);
        for i in 0..m {
            sum[i] += hx[i];
            sum2[i] += hx[i] * hx[i];
        }
    }
    let nf = n as f64;
    let total: f64 = (0..m)
        .map(|i| {
            let var = if n > 1 {
                ((sum2[i] - sum[i] * sum[i] / nf) / (nf - 1.0)).max(0.0)
            } else {
                0.0
            };
            var + batch.sigma[i] * batch.sigma[i]
        })
        .sum();
    (total / m as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn crps_of_a_point_mass_is_the_absolute_error() {
        let mut v = vec![2.0; 5];
        assert!((crps_sample(&mut v, 3.5) - 1.5).abs() < 1e-15);
        assert!((crps_gaussian(2.0, 0.0, 3.5) - 1.5).abs() < 1e-15);
    }

    #[test]
    fn crps_of_two_members_by_hand() {
        // members {0, 2}, y = 0: mean |x - y| = 1, pair term (1/(2·4))·(2+2) = 0.5.
        let mut v = vec![2.0, 0.0];
        assert!((crps_sample(&mut v, 0.0) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn gaussian_crps_matches_its_published_closed_form_value() {
        // At y = μ: CRPS = σ (2φ(0) - 1/√π) = σ (√2 - 1)/√π = 0.233695... σ (Gneiting et al. 2005).
        let expected = (2f64.sqrt() - 1.0) / std::f64::consts::PI.sqrt();
        assert!((crps_gaussian(1.0, 1.0, 1.0) - expected).abs() < 1e-14);
        assert!((crps_gaussian(0.0, 2.0, 0.0) - 2.0 * expected).abs() < 1e-14);
    }

    #[test]
    fn large_gaussian_ensemble_crps_converges_to_the_closed_form() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let nd = Normal::new(0.5, 1.5).unwrap();
        let mut v: Vec<f64> = (0..200_000).map(|_| nd.sample(&mut rng)).collect();
        let ens = crps_sample(&mut v, 2.0);
        let exact = crps_gaussian(0.5, 1.5, 2.0);
        assert!(
            (ens - exact).abs() < 5e-3,
            "ensemble {ens} vs closed form {exact}"
        );
    }

    #[test]
    fn spread_rmse_and_rank_histogram() {
        let e = Ensemble::from_members(vec![vec![0.0, 0.0], vec![2.0, 4.0]]).unwrap();
        // variances 2 and 8 -> spread sqrt(5)
        assert!((spread(&e) - 5f64.sqrt()).abs() < 1e-15);
        assert!((rmse(&[1.0, 2.0], &[0.0, 0.0]) - 2.5f64.sqrt()).abs() < 1e-15);
        assert_eq!(rank_histogram(&e, &[1.0, 5.0]), vec![0, 1, 1]);
        // A calibrated ensemble has a flat histogram: truth and members from the same law.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let nd = Normal::new(0.0, 1.0).unwrap();
        let members: Vec<Vec<f64>> = (0..9)
            .map(|_| (0..50_000).map(|_| nd.sample(&mut rng)).collect())
            .collect();
        let truth: Vec<f64> = (0..50_000).map(|_| nd.sample(&mut rng)).collect();
        let h = rank_histogram(&Ensemble::from_members(members).unwrap(), &truth);
        for c in h {
            assert!(
                (c as f64 - 5000.0).abs() < 300.0,
                "bin count {c} far from 5000"
            );
        }
    }

    #[test]
    fn obs_space_spread_by_hand() {
        use crate::obs::{Footprint, Observation, SparseOperator};
        // Two observations: point 0 (σ 0.5) and the mean of points 1 and 2 (σ 1).
        let op =
            SparseOperator::from_rows(3, vec![vec![(0, 1.0)], vec![(1, 0.5), (2, 0.5)]]).unwrap();
        let o = |sigma: f64| Observation {
            modality: Modality::Station,
            var: 0,
            lat: 45.0,
            lon: 0.0,
            footprint: Footprint::Point,
            value: 0.0,
            sigma,
        };
        let obs = vec![o(0.5), o(1.0)];
        let batch = ObsBatch {
            y: vec![0.0, 0.0],
            sigma: vec![0.5, 1.0],
            obs,
            op,
        };
        let e = Ensemble::from_members(vec![vec![1.0, 0.0, 2.0], vec![3.0, 2.0, 2.0]]).unwrap();
        // H x per member: (1, 1) and (3, 2); unbiased variances 2 and 0.5.
        let expect = ((2.0 + 0.25 + 0.5 + 1.0) / 2.0f64).sqrt();
        assert!((obs_space_spread(&batch, &e) - expect).abs() < 1e-12);
        let empty = ObsBatch {
            y: vec![],
            sigma: vec![],
            obs: vec![],
            op: SparseOperator::from_rows(3, vec![]).unwrap(),
        };
        assert!(obs_space_spread(&empty, &e).is_nan());
    }
}
