//! Adaptive inflation by the finite-size EnKF-N, in its dual form.
//!
//! The EnKF-N (Bocquet 2011) does not take the ensemble's sample covariance as the prior's: it
//! integrates over the unknown mean and covariance with a Jeffreys hyperprior, which makes the
//! prior on the ensemble-space weights w a Student-like law. Its analysis is the ETKF's with a
//! prior inflation ρ = l² that the cycle's observations choose. In the dual form (Bocquet, Raanes
//! & Hannart 2015, eqs. 28–36) l minimises, with Ỹ = R^{-1/2} Y (m × N, anomalies), d̃ =
//! R^{-1/2} (y - ȳ), the singular values s_i of Ỹ and the projections u_i of d̃ on its left
//! singular vectors,
//!
//!   J(l) = Σ_i u_i² / (l² s_i² + N - 1)  +  ε_N / l²  +  c_L ln l²,
//!
//! ε_N = (N + 1)/N (the unknown mean), c_L = N/(N - 1) (the hyperprior's weight). As in DAPPER's
//! `hyperprior_coeffs` the two constants get the mode correction of Bocquet et al. (2015, eq. 36):
//! with the prior mode l₀² = ε_N / c_L and the prior's share of the analysis
//! π = (N - 1) · mean_k 1/(s_k² + N - 1) (≈ 1/(1 + tr(HBHᵀR⁻¹)/N); s padded with zeros to N),
//! ε_N ← ε_N / l₀^π and c_L ← c_L · l₀^π, so that without observations (s → 0, π → 1) the minimiser
//! is l = 1 exactly, and both are multiplied by ξ_N ≥ 0 (`xn`; 1 = the fully agnostic hyperprior,
//! larger = more confidence in the ensemble's covariance; Raanes et al. 2019).
//!
//! With the eigen-decomposition Ỹᵀ Ỹ = V diag(λ) Vᵀ (λ_i = s_i²) and g = Vᵀ Ỹᵀ d̃, λ_i u_i² = g_i²,
//! so only N × N quantities are needed. The minimiser is the root of J'(l) in (0, ∞) (J' → -∞ at
//! 0, > 0 for large l), found by Newton's method safeguarded by bisection on a bracket.
//!
//! In the LETKF ([`super::Letkf`]) the estimate is local: at each grid point from the
//! observations within its localisation support with the point's tapered R⁻¹ (the information its
//! analysis uses), and the point's transform then uses ρ · l². DAPPER's `local_analyses` estimates
//! from the untapered values instead; on Lorenz-96 at Δt 0.05 that over-inflates (measured in
//! `docs/results.md`, "A fair arena").
//!
//! ## References
//! - Bocquet, M. (2011). Ensemble Kalman filtering without the intrinsic need for inflation.
//!   Nonlin. Processes Geophys. 18, 735–750.
//! - Bocquet, M., Raanes, P. N., Hannart, A. (2015). Expanding the validity of the ensemble Kalman
//!   filter without the intrinsic need for inflation. Nonlin. Processes Geophys. 22, 645–662.
//! - Raanes, P. N., Bocquet, M., Carrassi, A. (2019). Adaptive covariance inflation in the ensemble
//!   Kalman filter by Gaussian scale mixtures. QJRMS 145, 53–75.
//! - DAPPER, `dapper/da_methods/ensemble.py` (`effective_N`, `hyperprior_coeffs`).

use super::{Gram, GramEigen};
use nalgebra::{DMatrix, DVector};

/// Adaptive prior inflation of the LETKF.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Adaptive {
    /// The fixed inflation ρ only.
    Off,
    /// The finite-size EnKF-N's l² (module docs) times ρ, with hyperprior confidence `xn`.
    FiniteSize {
        /// ξ_N: 1 = agnostic (Bocquet 2011); > 1 trusts the ensemble's covariance more.
        xn: f64,
    },
}

/// The EnKF-N's variance inflation l² for local anomalies `y` (m × N), innovation `d` and the
/// diagonal of R⁻¹ `rinv` (untapered), with hyperprior confidence `xn` (module docs).
pub fn finite_size_inflation(y: &DMatrix<f64>, d: &DVector<f64>, rinv: &[f64], xn: f64) -> f64 {
    finite_size_from_eigen(&Gram::from_dense(y, d, rinv).eigen(), xn)
}

/// [`finite_size_inflation`] from the eigen-decomposition of Ỹᵀ Ỹ = Yᵀ R⁻¹ Y and Ỹᵀ d̃ = Yᵀ R⁻¹ d
/// that the transform shares.
pub(crate) fn finite_size_from_eigen(e: &GramEigen, xn: f64) -> f64 {
    // The whole spectrum: G's zero eigenvalues (outside Q's span, which b lies in) count in the
    // hyperprior's share and add nothing to the innovation terms.
    let n = e.members();
    let nm1 = (n - 1) as f64;
    let mut lam = e.lam.clone();
    let mut g2: Vec<f64> = e.qtb.iter().map(|v| v * v).collect();
    lam.resize(n, 0.0);
    g2.resize(n, 0.0);
    let (en, cl) = hyperprior(&lam, n, xn);
    // J'(l) and J''(l).
    let jp = |l: f64| {
        let s: f64 = lam
            .iter()
            .zip(&g2)
            .map(|(la, g2)| g2 / (l * l * la + nm1).powi(2))
            .sum();
        -2.0 * l * s - 2.0 * en / l.powi(3) + 2.0 * cl / l
    };
    let jpp = |l: f64| {
        let (mut a, mut b) = (0.0, 0.0);
        for (la, g2) in lam.iter().zip(&g2) {
            let den = l * l * la + nm1;
            a += g2 / den.powi(2);
            b += la * g2 / den.powi(3);
        }
        -2.0 * a + 8.0 * l * l * b + 6.0 * en / l.powi(4) - 2.0 * cl / (l * l)
    };
    let l = root(jp, jpp);
    l * l
}

/// ε_N and c_L after the mode correction and the ξ_N boost (module docs).
fn hyperprior(lam: &[f64], n: usize, xn: f64) -> (f64, f64) {
    let nm1 = (n - 1) as f64;
    let (mut en, mut cl) = ((n as f64 + 1.0) / n as f64, n as f64 / nm1);
    let prior_mode = en / cl;
    let prior_share = nm1 * lam.iter().map(|l| 1.0 / (l + nm1)).sum::<f64>() / n as f64;
    let mc = prior_mode.powf(prior_share).sqrt();
    en /= mc;
    cl *= mc;
    (en * xn, cl * xn)
}

/// The root of `f` (= J') nearest to 1 where f changes sign from - to + (the local minimum of J
/// nearest the prior's mode): walk from 1 in steps of 5 % in the downhill direction until the sign
/// changes, then Newton steps that fall back to bisection whenever they leave that bracket. The
/// dual cost can have a second minimum at a very large l, from directions of tiny ensemble variance
/// that the innovation still projects on (DAPPER's notes on `effective_N`); the nearest minimum is
/// the one the inflation cycle is in.
fn root(f: impl Fn(f64) -> f64, df: impl Fn(f64) -> f64) -> f64 {
    const STEP: f64 = 1.05;
    let (mut lo, mut hi) = (1.0, 1.0);
    if f(1.0) < 0.0 {
        while f(hi) < 0.0 && hi < 1e4 {
            lo = hi;
            hi *= STEP;
        }
    } else {
        while f(lo) > 0.0 && lo > 1e-4 {
            hi = lo;
            lo /= STEP;
        }
    }
    if lo == hi {
        return lo;
    }
    let mut x = 0.5 * (lo + hi);
    for _ in 0..100 {
        let fx = f(x);
        if fx == 0.0 {
            return x;
        }
        if fx < 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        let d = df(x);
        let newton = x - fx / d;
        let next = if d > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        if (next - x).abs() <= 1e-10 * x || hi - lo <= 1e-12 * x {
            return next;
        }
        x = next;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    /// The dual cost J(l) of the module docs, by the SVD (as DAPPER writes it), for a brute-force
    /// minimisation independent of the eigen form used above.
    fn dual_cost(y: &DMatrix<f64>, d: &DVector<f64>, rinv: &[f64], xn: f64, l: f64) -> f64 {
        let n = y.ncols();
        let nm1 = (n - 1) as f64;
        let mut yt = y.clone();
        let mut dt = d.clone();
        for (j, r) in rinv.iter().enumerate() {
            yt.row_mut(j).scale_mut(r.sqrt());
            dt[j] *= r.sqrt();
        }
        let svd = yt.svd(true, false);
        let u = svd.u.unwrap();
        let s = svd.singular_values;
        let mut lam: Vec<f64> = s.iter().map(|v| v * v).collect();
        lam.resize(n, 0.0);
        let (en, cl) = hyperprior(&lam, n, xn);
        let du = u.transpose() * &dt;
        let mut j = en / (l * l) + cl * (l * l).ln();
        for (i, si) in s.iter().enumerate() {
            j += du[i].powi(2) / (l * l * si * si + nm1);
        }
        j
    }

    fn case(m: usize, n: usize, spread: f64, miss: f64, seed: u64) -> (DMatrix<f64>, DVector<f64>) {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        let mut z = || -> f64 { StandardNormal.sample(&mut r) };
        let mut y = DMatrix::from_fn(m, n, |_, _| spread * z());
        let mean = y.column_mean();
        for mut c in y.column_iter_mut() {
            c -= &mean;
        }
        let d = DVector::from_fn(m, |_, _| miss * z());
        (y, d)
    }

    #[test]
    fn minimises_the_dual_cost() {
        // Under-, well- and over-dispersed ensembles, fewer and more observations than members.
        for (k, &(m, n, spread, miss)) in [
            (40, 20, 1.0, 1.5),
            (10, 20, 0.5, 2.0),
            (20, 8, 2.0, 1.0),
            (3, 32, 0.2, 1.0),
        ]
        .iter()
        .enumerate()
        {
            let (y, d) = case(m, n, spread, miss, k as u64);
            let rinv = vec![1.0 / 0.5; m];
            for xn in [1.0, 2.0] {
                let l2 = finite_size_inflation(&y, &d, &rinv, xn);
                let l = l2.sqrt();
                let j = |l: f64| dual_cost(&y, &d, &rinv, xn, l);
                // A global minimum over a log grid from 0.05 to 20 (step 0.1 %).
                let (mut best, mut best_l) = (f64::INFINITY, 0.0);
                let mut t = 0.05f64;
                while t < 20.0 {
                    if j(t) < best {
                        (best, best_l) = (j(t), t);
                    }
                    t *= 1.001;
                }
                assert!(
                    (l / best_l - 1.0).abs() < 2e-3,
                    "case {k} xn {xn}: l {l} vs grid {best_l}"
                );
                assert!(j(l) <= best + 1e-9, "case {k}: J(l) {} > {best}", j(l));
            }
        }
    }

    #[test]
    fn inflates_an_underdispersed_ensemble_and_not_without_information() {
        // Innovations much larger than the ensemble's spread call for l > 1 ...
        let (y, d) = case(40, 20, 0.3, 3.0, 9);
        let rinv = vec![1.0; 40];
        assert!(finite_size_inflation(&y, &d, &rinv, 1.0) > 2.0);
        // ... and observations that carry no information (R → ∞) leave the prior alone: l = 1
        // exactly by the mode correction (module docs).
        let tiny = vec![1e-14; 40];
        let l2 = finite_size_inflation(&y, &d, &tiny, 1.0);
        assert!((l2 - 1.0).abs() < 1e-6, "{l2}");
    }
}
