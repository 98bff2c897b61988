//! Exact answers for the EnKF family: the Kalman filter on a linear-Gaussian system.

use super::*;
use crate::analysis::Analysis;
use crate::geometry::{Geometry, StateSpace, Variable};
use crate::obs::{Footprint, Modality, Observation, SparseOperator};
use crate::testutil::{ensemble_with_moments, h_matrix, kalman, kalman_gain, moments, r_matrix};
use nalgebra::{DMatrix, DVector};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const N_STATE: usize = 6;

fn space() -> StateSpace {
    StateSpace {
        geometry: Geometry::Ring {
            n: N_STATE,
            lat_deg: 45.0,
            lat_tolerance_deg: 0.5,
        },
        fields: vec!["x".into()],
        variables: vec![Variable {
            name: "x".into(),
            unit: "1".into(),
            terms: vec![(0, 1.0)],
        }],
    }
}

/// Prior N(m, P) with correlated P, three linear observations (one a two-point mean).
fn problem() -> (DVector<f64>, DMatrix<f64>, ObsBatch) {
    let m = DVector::from_fn(N_STATE, |i, _| (i as f64).sin());
    let p = DMatrix::from_fn(N_STATE, N_STATE, |i, j| {
        let d = (i as f64 - j as f64)
            .abs()
            .min(N_STATE as f64 - (i as f64 - j as f64).abs());
        1.5 * (-d * d / 2.0).exp()
    });
    let rows = vec![vec![(0, 1.0)], vec![(2, 0.5), (3, 0.5)], vec![(5, 1.0)]];
    let op = SparseOperator::from_rows(N_STATE, rows).unwrap();
    let g = space().geometry;
    let at = |p: usize, value: f64, sigma: f64| {
        let (lat, lon) = g.point_latlon(p);
        Observation {
            modality: Modality::Station,
            var: 0,
            lat,
            lon,
            footprint: Footprint::Point,
            value,
            sigma,
        }
    };
    let obs = vec![at(0, 1.2, 0.5), at(2, -0.4, 0.8), at(5, 0.3, 1.0)];
    let batch = ObsBatch {
        y: obs.iter().map(|o| o.value).collect(),
        sigma: obs.iter().map(|o| o.sigma).collect(),
        obs,
        op,
    };
    (m, p, batch)
}

fn sample(m: &DVector<f64>, p: &DMatrix<f64>, n: usize, seed: u64) -> Ensemble {
    let l = p.clone().cholesky().unwrap().l();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let members = (0..n)
        .map(|_| {
            let z = DVector::from_fn(N_STATE, |_, _| StandardNormal.sample(&mut rng));
            (m + &l * z).iter().copied().collect()
        })
        .collect();
    Ensemble::from_members(members).unwrap()
}

fn max_abs_diff(a: &Ensemble, b: &Ensemble) -> f64 {
    a.as_flat()
        .iter()
        .zip(b.as_flat())
        .fold(0.0f64, |acc, (x, y)| acc.max((x - y).abs()))
}

fn max_abs(a: &DMatrix<f64>) -> f64 {
    a.iter().fold(0.0, |acc, v| acc.max(v.abs()))
}

#[test]
fn etkf_is_the_kalman_update_of_its_own_sample_moments() {
    // For linear H the ETKF mean and covariance are exactly the Kalman update of the background
    // ensemble's mean and covariance (Hunt et al. 2007): equal to round-off, any N.
    let (m, p, batch) = problem();
    let mut e = sample(&m, &p, 10, 1);
    let (mb, pb) = moments(&e);
    let (ma, pa) = kalman(mb.as_slice(), &pb, &batch);
    let etkf = Etkf {
        inflation: Inflation::default(),
    };
    etkf.analyse(&mut e, &batch, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
    let (ea, epa) = moments(&e);
    assert!((ea - ma).amax() < 1e-12);
    assert!(max_abs(&(epa - pa)) < 1e-12);
}

#[test]
fn large_ensembles_reproduce_the_kalman_filter() {
    // Draws of N(m, P): the analysis mean and covariance match the exact Kalman update to within
    // sampling error. Stochastic EnKF with N = 20,000 (tolerance 0.03 on entries of order 1, about
    // 4 standard errors); ETKF with N = 1,500 (its N × N eigen-decomposition bounds N; tolerance
    // 0.12, about 4 standard errors at that N).
    let (m, p, batch) = problem();
    let (ma, pa) = kalman(m.as_slice(), &p, &batch);
    let filters: [(Box<dyn Analysis>, usize, f64); 2] = [
        (
            Box::new(StochasticEnkf {
                inflation: Inflation::default(),
            }),
            20_000,
            0.03,
        ),
        (
            Box::new(Etkf {
                inflation: Inflation::default(),
            }),
            1_500,
            0.12,
        ),
    ];
    for (f, n, tol) in filters {
        let mut e = sample(&m, &p, n, 2);
        f.analyse(&mut e, &batch, &mut ChaCha8Rng::seed_from_u64(3))
            .unwrap();
        let (ea, epa) = moments(&e);
        assert!(
            (&ea - &ma).amax() < tol,
            "{}: mean error {}",
            f.name(),
            (&ea - &ma).amax()
        );
        assert!(
            max_abs(&(&epa - &pa)) < tol,
            "{}: covariance error {}",
            f.name(),
            max_abs(&(&epa - &pa))
        );
    }
}

#[test]
fn letkf_with_infinite_radius_is_the_global_etkf() {
    let (m, p, batch) = problem();
    for infl in [Inflation::default(), Inflation::new(1.1, 0.5).unwrap()] {
        let mut a = sample(&m, &p, 8, 4);
        let mut b = a.clone();
        Etkf { inflation: infl }
            .analyse(&mut a, &batch, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        Letkf::new(&space(), f64::INFINITY, infl)
            .unwrap()
            .analyse(&mut b, &batch, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        let diff = max_abs_diff(&a, &b);
        assert!(diff < 1e-12, "LETKF(∞) differs from ETKF by {diff}");
    }
}

#[test]
fn adaptive_letkf_with_infinite_radius_is_the_etkf_at_the_enkf_n_inflation() {
    // Every point sees every observation untapered, so each estimates the same l² (module docs of
    // `adaptive`): the LETKF-N is then exactly the ETKF with ρ = ρ₀ · l².
    let (m, p, batch) = problem();
    for (rho0, spread) in [(1.0, 1.0), (1.05, 0.3)] {
        let mut a = sample(&m, &p, 8, 6);
        for x in a.members_mut() {
            for (xi, mi) in x.iter_mut().zip(m.iter()) {
                *xi = mi + spread * (*xi - mi);
            }
        }
        let mut b = a.clone();
        let oe = ObservedEnsemble::new(&a, &batch);
        let rinv: Vec<f64> = batch.sigma.iter().map(|s| 1.0 / (s * s)).collect();
        let l2 = finite_size_inflation(&oe.y_anom, &oe.innovation, &rinv, 1.0);
        Etkf {
            inflation: Inflation::new(rho0 * l2, 0.0).unwrap(),
        }
        .analyse(&mut a, &batch, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
        Letkf::new(&space(), f64::INFINITY, Inflation::new(rho0, 0.0).unwrap())
            .unwrap()
            .with_adaptive(Adaptive::FiniteSize { xn: 1.0 })
            .unwrap()
            .analyse(&mut b, &batch, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        let diff = max_abs_diff(&a, &b);
        assert!(diff < 1e-12, "LETKF-N(∞) differs from ETKF(ρ l²) by {diff}");
        if spread < 1.0 {
            // A shrunken ensemble facing the same innovations is inflated.
            assert!(l2 > 1.0, "l² = {l2}");
        }
    }
    assert!(Letkf::new(&space(), 1000.0, Inflation::default())
        .unwrap()
        .with_adaptive(Adaptive::FiniteSize { xn: 0.0 })
        .unwrap_err()
        .to_string()
        .contains("xn must be > 0"));
}

#[test]
fn letkf_ignores_observations_beyond_the_support() {
    // Half-width of half a grid spacing: support of one spacing, so each point sees only an
    // observation sitting on it. Point 1 has none: its members keep their values.
    let (m, p, batch) = problem();
    let c = 0.5 * space().geometry.spacing_km();
    let mut e = sample(&m, &p, 8, 5);
    let before = e.clone();
    Letkf::new(&space(), c, Inflation::default())
        .unwrap()
        .analyse(&mut e, &batch, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
    for k in 0..8 {
        assert_eq!(e.member(k)[1], before.member(k)[1]);
        assert_ne!(e.member(k)[0], before.member(k)[0]);
    }
}

#[test]
fn rtps_of_one_restores_the_background_spread() {
    let (m, p, batch) = problem();
    let mut e = sample(&m, &p, 12, 6);
    let sb = e.std();
    Etkf {
        inflation: Inflation::new(1.0, 1.0).unwrap(),
    }
    .analyse(&mut e, &batch, &mut ChaCha8Rng::seed_from_u64(0))
    .unwrap();
    for (a, b) in e.std().iter().zip(&sb) {
        assert!((a - b).abs() < 1e-12);
    }
}

#[test]
fn invalid_parameters_name_the_fix() {
    assert!(Inflation::new(0.3, 0.0)
        .unwrap_err()
        .to_string()
        .contains("inflation must be"));
    assert!(Inflation::new(1.0, 1.5)
        .unwrap_err()
        .to_string()
        .contains("rtps must be in [0, 1]"));
    assert!(Letkf::new(&space(), 0.0, Inflation::default()).is_err());
}

#[test]
fn weight_interpolation_stays_close_to_the_exact_letkf() {
    // A 40-point ring with smoothly correlated members and 10 observations; half-width 8 grid
    // spacings, weights every 2nd point: interpolation changes the analysis by a small fraction of
    // the analysis increment.
    let n_state = 40;
    let space = StateSpace {
        geometry: Geometry::Ring {
            n: n_state,
            lat_deg: 45.0,
            lat_tolerance_deg: 0.5,
        },
        fields: vec!["x".into()],
        variables: vec![Variable {
            name: "x".into(),
            unit: "1".into(),
            terms: vec![(0, 1.0)],
        }],
    };
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let members: Vec<Vec<f64>> = (0..16)
        .map(|_| {
            let a: f64 = StandardNormal.sample(&mut rng);
            let b: f64 = StandardNormal.sample(&mut rng);
            let ph: f64 = StandardNormal.sample(&mut rng);
            (0..n_state)
                .map(|i| a * (0.3 * i as f64 + ph).sin() + b * (0.15 * i as f64).cos())
                .collect()
        })
        .collect();
    let obs: Vec<Observation> = (0..10)
        .map(|k| {
            let (lat, lon) = space.geometry.point_latlon(4 * k + 1);
            Observation {
                modality: Modality::Station,
                var: 0,
                lat,
                lon,
                footprint: Footprint::Point,
                value: 0.5,
                sigma: 0.5,
            }
        })
        .collect();
    let batch = ObsBatch::new(&space, obs).unwrap();
    let c = 8.0 * space.geometry.spacing_km();
    let bg = Ensemble::from_members(members).unwrap();
    let (mut exact, mut interp) = (bg.clone(), bg.clone());
    let letkf = Letkf::new(&space, c, Inflation::default()).unwrap();
    letkf
        .analyse(&mut exact, &batch, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
    letkf
        .with_stride(2)
        .unwrap()
        .analyse(&mut interp, &batch, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
    let increment = crate::stats::rmse(&exact.mean(), &bg.mean());
    let diff = crate::stats::rmse(&exact.mean(), &interp.mean());
    assert!(
        diff < 0.05 * increment,
        "interpolation error {diff} vs increment {increment}"
    );
    // Points on the coarse grid are exact.
    for k in 0..16 {
        assert!((exact.member(k)[10] - interp.member(k)[10]).abs() < 1e-12);
    }
    assert!(Letkf::new(&space, c, Inflation::default())
        .unwrap()
        .with_stride(3)
        .is_err());
}

/// P of [`problem`] in the spectral form the explicit-covariance updates take.
fn spectral(p: &DMatrix<f64>) -> (DMatrix<f64>, DVector<f64>) {
    let eig = p.clone().symmetric_eigen();
    (eig.eigenvectors, eig.eigenvalues)
}

#[test]
fn ensrf_is_the_kalman_update_under_its_covariance() {
    // Linear H: the EnSRF mean is x̄ + K (y - H x̄) with K from the given P whatever the members,
    // and when the members' sample covariance is P, their analysis sample covariance is the
    // Kalman (I - K H) P (Whitaker & Hamill 2002: (I - K̃H) P (I - K̃H)ᵀ = (I - KH) P). Both are
    // identities, so the tolerance is round-off: 1e-12 on entries of order 1.
    let (m, p, batch) = problem();
    let (u, lam) = spectral(&p);
    let cov = SpectralCovariance { u: &u, lam: &lam };
    let e = ensemble_with_moments(m.as_slice(), &p, 10, 21);
    let (mb, pb) = moments(&e);
    assert!((&mb - &m).amax() < 1e-12 && max_abs(&(&pb - &p)) < 1e-12);
    let (ma, pa) = kalman(m.as_slice(), &p, &batch);
    assert!(
        (&ma - &m).amax() > 0.1,
        "the test needs a visible mean update"
    );
    let (ea, epa) = moments(&ensrf(&e, &batch, cov).unwrap());
    assert!(
        (&ea - &ma).amax() < 1e-12,
        "mean error {}",
        (&ea - &ma).amax()
    );
    assert!(
        max_abs(&(&epa - &pa)) < 1e-12,
        "covariance error {}",
        max_abs(&(&epa - &pa))
    );
    // Members drawn from N(m, P) without exact moments: the mean is still the Kalman update of their
    // mean under P (not under their sample covariance).
    let e = sample(&m, &p, 8, 22);
    let (mb, _) = moments(&e);
    let (ma, _) = kalman(mb.as_slice(), &p, &batch);
    let (ea, _) = moments(&ensrf(&e, &batch, cov).unwrap());
    assert!(
        (&ea - &ma).amax() < 1e-12,
        "mean error {}",
        (&ea - &ma).amax()
    );
}

#[test]
fn perturbed_obs_enkf_is_the_kalman_update_in_expectation() {
    // Members with sample mean m and sample covariance P exactly, linear H, N = 20,000. With
    // B = I - K H, anomalies u_k = B x'_k and perturbations v_k = K ε_k (ε_k ~ N(0, R) i.i.d.,
    // Q = K R Kᵀ), the analysis members are x_k + K (y + ε_k - H x_k), so
    // - the mean error against the Kalman mean is exactly K ε̄ ~ N(0, Q/N): sd_i = sqrt(Q_ii / N);
    // - the sample covariance is B P Bᵀ + Σ_k (u_k v_kᵀ + v_k u_kᵀ)/(N-1) + K Ŵ Kᵀ, Ŵ the
    //   perturbations' sample covariance (a Wishart(R, N-1)/(N-1) draw), with expectation
    //   B P Bᵀ + Q = (I - K H) P, the Kalman covariance, and variance per entry
    //   [Q_ii Q_ll + Q_il² + Pu_ii Q_ll + Pu_ll Q_ii + 2 Pu_il Q_il]/(N-1), Pu = B P Bᵀ.
    // Tolerance: 5 of those standard deviations per entry (all 6 + 21 entries inside with
    // probability > 1 - 3e-5 for Gaussian errors).
    let n = 20_000;
    let (m, p, batch) = problem();
    let (u, lam) = spectral(&p);
    let e = ensemble_with_moments(m.as_slice(), &p, n, 23);
    let (ma, pa) = kalman(m.as_slice(), &p, &batch);
    let k = kalman_gain(&p, &batch);
    let b = DMatrix::identity(N_STATE, N_STATE) - &k * h_matrix(&batch, N_STATE);
    let q = &k * r_matrix(&batch) * k.transpose();
    let pu = &b * &p * b.transpose();
    let nf = n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(24);
    let a = perturbed_obs_enkf(
        &e,
        &batch,
        SpectralCovariance { u: &u, lam: &lam },
        &mut rng,
    )
    .unwrap();
    let (ea, epa) = moments(&a);
    for i in 0..N_STATE {
        let tol = 5.0 * (q[(i, i)] / nf).sqrt();
        let err = (ea[i] - ma[i]).abs();
        assert!(err < tol, "mean {i}: error {err}, tolerance {tol}");
        for l in 0..N_STATE {
            let var = (q[(i, i)] * q[(l, l)]
                + q[(i, l)].powi(2)
                + pu[(i, i)] * q[(l, l)]
                + pu[(l, l)] * q[(i, i)]
                + 2.0 * pu[(i, l)] * q[(i, l)])
                / (nf - 1.0);
            let tol = 5.0 * var.sqrt();
            let err = (epa[(i, l)] - pa[(i, l)]).abs();
            assert!(
                err < tol,
                "covariance ({i}, {l}): error {err}, tolerance {tol}"
            );
            // The band resolves the perturbations' contribution Q: without them (Pu alone) the
            // diagonal would fail.
            if i == l {
                assert!(
                    q[(i, i)] > 2.0 * tol,
                    "Q_{i}{i} = {} vs tolerance {tol}",
                    q[(i, i)]
                );
            }
        }
    }
}

/// The observation-space path (m < N: the m × m Gram matrix) and the ensemble-space one give the
/// same transform and the same EnKF-N inflation, also where K is singular (a repeated observation,
/// a single one).
#[test]
fn observation_space_path_is_the_ensemble_space_transform() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (m, n) in [(1, 8), (3, 20), (12, 20), (31, 32)] {
        let mut yt: Vec<f64> = (0..m * n)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        // Anomalies: each observation's row sums to zero over the members.
        for row in yt.chunks_exact_mut(n) {
            let mean = row.iter().sum::<f64>() / n as f64;
            row.iter_mut().for_each(|v| *v -= mean);
        }
        if m >= 3 {
            let first = yt[..n].to_vec();
            yt[n..2 * n].copy_from_slice(&first); // a repeated observation: K singular
        }
        let d: Vec<f64> = (0..m).map(|_| StandardNormal.sample(&mut rng)).collect();
        let local: Vec<usize> = (0..m).collect();
        let rinv: Vec<f64> = (0..m).map(|j| 0.5 + 0.1 * j as f64).collect();
        let mut scratch = Vec::new();
        let full = Gram::from_rows_with(&yt, &d, &local, &rinv, n, &mut scratch).eigen();
        let reduced = Gram::local_eigen(&yt, &d, &local, &rinv, n, &mut scratch);
        assert!(
            reduced.lam.len() < n,
            "m = {m}: the reduced path was not taken"
        );
        for rho in [1.0, 1.1] {
            let (a, b) = (full.transform(rho), reduced.transform(rho));
            let err = (&a - &b).abs().max();
            assert!(
                err < 1e-10,
                "m = {m}, N = {n}, ρ = {rho}: transforms differ by {err}"
            );
        }
        let (la, lb) = (
            adaptive::finite_size_from_eigen(&full, 1.0),
            adaptive::finite_size_from_eigen(&reduced, 1.0),
        );
        assert!(
            (la - lb).abs() < 1e-9 * la,
            "m = {m}: EnKF-N l² {la} vs {lb}"
        );
    }
}

/// The bucket index offers every observation within the support of every grid point (on a ring and
/// in a periodic box, supports from under one cell to nearly the domain), so the LETKF with it
/// uses exactly the observations a scan of all of them would.
#[test]
fn observation_index_finds_every_observation_within_the_support() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let geometries = [
        Geometry::Ring {
            n: 40,
            lat_deg: 45.0,
            lat_tolerance_deg: 0.5,
        },
        Geometry::PeriodicBox {
            nx: 16,
            ny: 16,
            length_km: 4000.0,
            lat0_deg: 45.0,
            lon0_deg: 0.0,
        },
    ];
    for g in geometries {
        let xy: Vec<(f64, f64)> = (0..300)
            .map(|_| {
                let p = (rand::Rng::random::<f64>(&mut rng) * g.n_points() as f64) as usize;
                let (lat, lon) = g.point_latlon(p);
                let jitter = (rand::Rng::random::<f64>(&mut rng) - 0.5) * 2.0;
                g.to_plane(lat, lon + jitter)
            })
            .collect();
        let spacing = g.spacing_km();
        let mut candidates = Vec::new();
        let mut pruned = false;
        for radius in [0.7 * spacing, 2.0 * spacing, 5.0 * spacing, 9.0 * spacing] {
            let Some(index) = letkf::ObsIndex::new(&g, radius, &xy) else {
                continue;
            };
            for p in 0..g.n_points() {
                let (lat, lon) = g.point_latlon(p);
                let at = g.to_plane(lat, lon);
                index.candidates(at, &mut candidates);
                let within: Vec<u32> = (0..xy.len() as u32)
                    .filter(|&j| g.plane_distance_km(at, xy[j as usize]) <= radius)
                    .collect();
                assert!(
                    within.iter().all(|j| candidates.binary_search(j).is_ok()),
                    "{g:?}, radius {radius} km, point {p}: an observation within the support is missing"
                );
                pruned |= candidates.len() < xy.len();
            }
        }
        assert!(pruned, "{g:?}: the index never pruned anything");
    }
}
