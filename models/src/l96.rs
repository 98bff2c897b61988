//! # Lorenz-96
//!
//! dx_i/dt = (x_{i+1} - x_{i-2}) x_{i-1} - γ x_i + F,  i = 0..N-1, indices cyclic,
//!
//! with N = 40, F = 8, γ = 1 (Lorenz's damping; [`Lorenz96::damping`]), integrated by classical fourth-order Runge–Kutta with Δt = 0.05 (one model
//! step = one 6-hour cycle in Lorenz's time scaling). The quadratic (advective) term conserves the
//! energy E = ½ Σ x_i², so dE/dt = -2γE + F Σ x_i exactly (with F = γ = 0, E is an invariant); at F = 8 the system is chaotic with a
//! leading Lyapunov exponent near 1.7 per time unit and a climatology of mean ≈ 2.35 and standard
//! deviation ≈ 3.6 per variable.
//!
//! ## References
//! - Lorenz, E. N. (1996). Predictability: a problem partly solved. ECMWF Seminar on Predictability.
//! - Lorenz, E. N., Emanuel, K. A. (1998). Optimal sites for supplementary weather observations:
//!   simulation with a small model. J. Atmos. Sci. 55, 399–414.
//! - Sakov, P., Oke, P. R. (2008). Implications of the form of the ensemble transformation in the
//!   ensemble square root filters. MWR 136 (the N = 40, F = 8, Δt = 0.05 DA benchmark).

use assimd_filter::Dynamics;

/// Lorenz-96 with RK4.
#[derive(Clone, Debug, PartialEq)]
pub struct Lorenz96 {
    /// Number of variables N.
    pub n: usize,
    /// Forcing F.
    pub forcing: f64,
    /// Coefficient γ of the linear damping -γ x_i: 1 in Lorenz (1996). With γ = 0 and F = 0 only the
    /// energy-conserving advection is left, which is how the integrator is tested.
    pub damping: f64,
    /// Time step Δt in model time units.
    pub dt: f64,
    /// Model steps per assimilation cycle.
    pub steps_per_cycle: usize,
}

impl Default for Lorenz96 {
    fn default() -> Self {
        Lorenz96 {
            n: 40,
            forcing: 8.0,
            damping: 1.0,
            dt: 0.05,
            steps_per_cycle: 1,
        }
    }
}

/// Seconds of physical time per model time unit (0.05 units = 6 h).
pub const SECONDS_PER_UNIT: f64 = 6.0 * 3600.0 / 0.05;

impl Lorenz96 {
    /// The tendency dx/dt at x, written into `out`.
    pub fn tendency(&self, x: &[f64], out: &mut [f64]) {
        let n = self.n;
        for i in 0..n {
            let xp1 = x[(i + 1) % n];
            let xm1 = x[(i + n - 1) % n];
            let xm2 = x[(i + n - 2) % n];
            out[i] = (xp1 - xm2) * xm1 - self.damping * x[i] + self.forcing;
        }
    }

    /// One RK4 step with explicit scratch (k1..k4, stage state).
    fn rk4(&self, x: &mut [f64], s: &mut [Vec<f64>; 5]) {
        let h = self.dt;
        let [k1, k2, k3, k4, xs] = s;
        self.tendency(x, k1);
        for i in 0..self.n {
            xs[i] = x[i] + 0.5 * h * k1[i];
        }
        self.tendency(xs, k2);
        for i in 0..self.n {
            xs[i] = x[i] + 0.5 * h * k2[i];
        }
        self.tendency(xs, k3);
        for i in 0..self.n {
            xs[i] = x[i] + h * k3[i];
        }
        self.tendency(xs, k4);
        for i in 0..self.n {
            x[i] += h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
        }
    }
}

impl Dynamics for Lorenz96 {
    fn state_dim(&self) -> usize {
        self.n
    }

    fn step_seconds(&self) -> f64 {
        self.dt * SECONDS_PER_UNIT
    }

    fn steps_per_cycle(&self) -> usize {
        self.steps_per_cycle
    }

    fn advance(&self, x: &mut [f64], n: usize) {
        let mut s: [Vec<f64>; 5] = std::array::from_fn(|_| vec![0.0; self.n]);
        for _ in 0..n {
            self.rk4(x, &mut s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn attractor_point(seed: u64) -> Vec<f64> {
        let m = Lorenz96::default();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x: Vec<f64> = (0..40).map(|_| 8.0 + rng.random_range(-1.0..1.0)).collect();
        m.advance(&mut x, 2000);
        x
    }

    #[test]
    fn uniform_forcing_state_is_a_fixed_point() {
        let m = Lorenz96::default();
        let mut x = vec![8.0; 40];
        m.advance(&mut x, 100);
        assert!(x.iter().all(|v| *v == 8.0));
    }

    #[test]
    fn energy_tendency_is_minus_two_e_plus_f_sum() {
        // The advective term is energy-conserving: Σ x_i (x_{i+1} - x_{i-2}) x_{i-1} = 0.
        let m = Lorenz96::default();
        let x = attractor_point(1);
        let mut d = vec![0.0; 40];
        m.tendency(&x, &mut d);
        let de: f64 = x.iter().zip(&d).map(|(a, b)| a * b).sum();
        let e: f64 = 0.5 * x.iter().map(|v| v * v).sum::<f64>();
        let expected = -2.0 * e + 8.0 * x.iter().sum::<f64>();
        assert!(
            (de - expected).abs() < 1e-10 * e,
            "dE/dt {de} vs {expected}"
        );
    }

    #[test]
    fn unforced_undamped_rk4_conserves_energy_to_fifth_order_per_step() {
        // With F = 0 and γ = 0 the flow conserves E = ½ Σ x_i² exactly, so the change of E in one
        // step of the model's own integrator is its local error seen through ∇E: for a method of
        // order p = 4 the local error is C(x) h⁵ + O(h⁶) (Hairer, Nørsett & Wanner 1993, Solving
        // ODEs I, §II.3), hence |ΔE(h)| = c h⁵ (1 + κh + O(h²)) and the observed order
        // log2(|ΔE(h)| / |ΔE(h/2)|) = 5 + log2(1 + κh/2) + O(h²). κ is of the order of the
        // tendency's Lipschitz scale 3 max|x| ≈ 40 on the attractor (max|x| ≈ 13), so the shift is
        // about log2(1 + 20h) ≤ 0.14 for h ≤ 0.005: the band 5 ± 0.5 holds with margin, and excludes
        // order 4 (a third-order integrator) and order 6 (an energy error vanishing at h⁵, as RK4's
        // does for linear skew systems, |R(iy)|² = 1 - y⁶/72 + O(y⁸)).
        let x0 = attractor_point(2);
        let energy = |x: &[f64]| 0.5 * x.iter().map(|v| v * v).sum::<f64>();
        let e0 = energy(&x0);
        let step_error = |h: f64| {
            let m = Lorenz96 {
                forcing: 0.0,
                damping: 0.0,
                dt: h,
                ..Lorenz96::default()
            };
            let mut x = x0.clone();
            m.advance(&mut x, 1);
            (energy(&x) - e0).abs()
        };
        let hs = [0.005, 0.0025, 0.00125];
        let errs: Vec<f64> = hs.iter().map(|&h| step_error(h)).collect();
        for k in 0..hs.len() - 1 {
            let order = (errs[k] / errs[k + 1]).log2();
            eprintln!(
                "h = {}: |ΔE| = {:.3e}, observed order {order:.3}",
                hs[k], errs[k]
            );
            assert!(
                (order - 5.0).abs() < 0.5,
                "h = {}: order {order}, errors {errs:?}",
                hs[k]
            );
        }
        // The errors must be truncation, not round-off: the rounding of E is at most n ε E for
        // n = 40 terms, and the smallest error must exceed it tenfold.
        let rounding = 40.0 * f64::EPSILON * e0;
        assert!(
            errs[hs.len() - 1] > 10.0 * rounding,
            "{errs:?} vs {rounding:e}"
        );
    }

    #[test]
    fn climatology_matches_the_published_mean_and_std() {
        // Lorenz & Emanuel (1998) / DAPPER: mean ≈ 2.35, std ≈ 3.63 for N = 40, F = 8, given to two
        // decimals (±0.005). The estimate's own sampling error comes from 8 batches of 5,000 steps
        // (250 time units each, ≫ the ~1 time unit decorrelation, so the batch estimates are nearly
        // independent): SE = s_batch/√8, and the band is the rounding plus 5.408 SE (the two-sided
        // 99.9 % Student-t quantile for 7 degrees of freedom).
        let m = Lorenz96::default();
        let mut x = attractor_point(3);
        let (batches, steps) = (8, 5_000);
        let mut means = Vec::new();
        let mut stds = Vec::new();
        for _ in 0..batches {
            let (mut s, mut s2, mut k) = (0.0, 0.0, 0.0);
            for _ in 0..steps {
                m.advance(&mut x, 1);
                s += x.iter().sum::<f64>();
                s2 += x.iter().map(|v| v * v).sum::<f64>();
                k += 40.0;
            }
            let mean = s / k;
            means.push(mean);
            stds.push((s2 / k - mean * mean).sqrt());
        }
        let avg_se = |xs: &[f64]| {
            let n = xs.len() as f64;
            let avg = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|v| (v - avg) * (v - avg)).sum::<f64>() / (n - 1.0);
            (avg, (var / n).sqrt())
        };
        for (what, xs, published) in [("mean", &means, 2.35), ("std", &stds, 3.63)] {
            let (avg, se) = avg_se(xs);
            let band = 0.005 + 5.408 * se;
            eprintln!("{what}: {avg:.4} (SE {se:.4}), published {published}, band {band:.4}");
            assert!((avg - published).abs() < band, "{what} {avg} ± {se}");
        }
    }

    #[test]
    fn leading_lyapunov_exponent_is_near_1_7() {
        // Benettin's method: renormalise a 1e-8 perturbation each step. Published for N = 40, F = 8:
        // λ1 ≈ 1.68 per time unit (Lorenz & Emanuel 1998; Karimi & Paul 2010).
        let m = Lorenz96::default();
        let mut x = attractor_point(4);
        let mut y = x.clone();
        y[0] += 1e-8;
        let mut sum_log = 0.0;
        let steps = 20_000;
        for _ in 0..steps {
            m.advance(&mut x, 1);
            m.advance(&mut y, 1);
            let d = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
                .sqrt();
            sum_log += (d / 1e-8).ln();
            for (yi, xi) in y.iter_mut().zip(&x) {
                *yi = xi + (*yi - xi) * 1e-8 / d;
            }
        }
        let lambda = sum_log / (steps as f64 * m.dt);
        assert!((lambda - 1.68).abs() < 0.12, "λ1 = {lambda}");
    }

    #[test]
    fn one_cycle_is_six_hours() {
        let m = Lorenz96::default();
        assert!((m.cycle_seconds() - 21_600.0).abs() < 1e-9);
    }
}
