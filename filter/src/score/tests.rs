//! Exactness of the sampler against the Kalman update, with the analytic Gaussian denoiser.

use super::*;
use crate::geometry::{Geometry, StateSpace, Variable};
use crate::obs::{Footprint, Modality, ObsBatch, Observation, SparseOperator};
use crate::testutil::{kalman, moments as ensemble_moments};
use nalgebra::{DMatrix, DVector};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const N: usize = 6;

fn problem() -> (Vec<f64>, DMatrix<f64>, ObsBatch) {
    let m: Vec<f64> = (0..N).map(|i| (i as f64).sin()).collect();
    let p = DMatrix::from_fn(N, N, |i, j| {
        let d = (i as f64 - j as f64)
            .abs()
            .min(N as f64 - (i as f64 - j as f64).abs());
        (-d * d / 2.0).exp()
    });
    let space = StateSpace {
        geometry: Geometry::Ring {
            n: N,
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
    let op = SparseOperator::from_rows(
        N,
        vec![vec![(0, 1.0)], vec![(2, 0.5), (3, 0.5)], vec![(5, 1.0)]],
    )
    .unwrap();
    let g = &space.geometry;
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
    let obs = vec![at(0, 1.2, 0.5), at(2, -0.4, 0.6), at(5, 0.3, 0.7)];
    (
        m,
        p,
        ObsBatch {
            y: obs.iter().map(|o| o.value).collect(),
            sigma: obs.iter().map(|o| o.sigma).collect(),
            obs,
            op,
        },
    )
}

fn moments(z: &[f64]) -> (DVector<f64>, DMatrix<f64>) {
    let b = z.len() / N;
    let mean = DVector::from_fn(N, |i, _| {
        (0..b).map(|k| z[k * N + i]).sum::<f64>() / b as f64
    });
    let mut cov = DMatrix::zeros(N, N);
    for k in 0..b {
        let a = DVector::from_column_slice(&z[k * N..(k + 1) * N]) - &mean;
        cov += &a * a.transpose();
    }
    (mean, cov / (b - 1) as f64)
}

#[test]
fn karras_schedule_runs_from_max_to_min() {
    let s = karras_schedule(2.0, 0.01, 16, 7.0);
    assert_eq!(s.len(), 16);
    assert!((s[0] - 2.0).abs() < 1e-12 && (s[15] - 0.01).abs() < 1e-12);
    assert!(s.windows(2).all(|w| w[1] < w[0]));
}

#[test]
fn gaussian_denoiser_vjp_matches_finite_differences() {
    let (m, p, _) = problem();
    let den = GaussianDenoiser::new(m, p).unwrap();
    let z: Vec<f64> = (0..N).map(|i| 0.3 * i as f64 - 1.0).collect();
    let v: Vec<f64> = (0..N).map(|i| (1.7 * i as f64).cos()).collect();
    let (mut x0, mut jtv) = (vec![0.0; N], vec![0.0; N]);
    den.denoise_vjp(&z, &[0.7], &v, &mut x0, &mut jtv).unwrap();
    for i in 0..N {
        let eps = 1e-6;
        let (mut zp, mut zm) = (z.clone(), z.clone());
        zp[i] += eps;
        zm[i] -= eps;
        let (mut dp, mut dm) = (vec![0.0; N], vec![0.0; N]);
        den.denoise(&zp, &[0.7], &mut dp).unwrap();
        den.denoise(&zm, &[0.7], &mut dm).unwrap();
        let fd: f64 = (0..N).map(|j| v[j] * (dp[j] - dm[j]) / (2.0 * eps)).sum();
        assert!(
            (fd - jtv[i]).abs() < 1e-8,
            "component {i}: {fd} vs {}",
            jtv[i]
        );
    }
}

#[test]
fn unguided_sampler_draws_from_the_prior() {
    // No observations: reverse diffusion with the exact score returns N(m, P) (to discretisation
    // and sampling error: 4,000 draws, tolerance 0.08 on entries of order 1; measured 0.021 and
    // 0.037). Without the Langevin corrections the 100-step predictor alone is off by 0.06.
    let (m, p, batch) = problem();
    let empty = ObsBatch {
        obs: vec![],
        y: vec![],
        sigma: vec![],
        op: SparseOperator::from_rows(N, vec![]).unwrap(),
    };
    let _ = batch;
    let den = GaussianDenoiser::new(m.clone(), p.clone()).unwrap();
    let cfg = SamplerConfig {
        steps: 100,
        corrections: 2,
        tau: 0.05,
        sigma_start: 8.0,
        sigma_min: 0.01,
        ..SamplerConfig::default()
    };
    let sampler = Sampler::new(cfg).unwrap();
    let b = 4000;
    let mut z = vec![0.0; b * N];
    sampler
        .sample(&den, &mut z, &empty, &mut ChaCha8Rng::seed_from_u64(1))
        .unwrap();
    let (mean, cov) = moments(&z);
    assert!((mean - DVector::from_vec(m)).amax() < 0.08);
    assert!((cov - p).amax() < 0.08);
}

#[test]
fn guided_sampler_matches_the_kalman_update() {
    // Linear H and the exact prior denoiser: the guided sampler's posterior mean and covariance
    // match the Kalman update. SDA's likelihood approximation (R + γσ²I) is exact only as σ → 0,
    // so the Langevin corrections at the small noise levels carry the samples onto the posterior;
    // 4,000 draws, tolerance 0.06 on the mean and 0.05 on the covariance (entries ≤ 1; measured
    // 0.027 and 0.018).
    let cfg = SamplerConfig {
        steps: 100,
        corrections: 2,
        tau: 0.05,
        gamma: 0.5,
        sigma_start: 8.0,
        sigma_min: 0.01,
        rho: 7.0,
        ..SamplerConfig::default()
    };
    assert_kalman_moments(cfg, "SDA");
}

/// 4,000 draws of the sampler with `cfg` on `problem()`'s exact Gaussian denoiser: their mean and
/// covariance within 0.06 and 0.05 of the Kalman update's.
fn assert_kalman_moments(cfg: SamplerConfig, what: &str) {
    let (m, p, batch) = problem();
    let (ma, pa) = kalman(&m, &p, &batch);
    let den = GaussianDenoiser::new(m, p).unwrap();
    let sampler = Sampler::new(cfg).unwrap();
    let b = 4000;
    let mut z = vec![0.0; b * N];
    sampler
        .sample(&den, &mut z, &batch, &mut ChaCha8Rng::seed_from_u64(2))
        .unwrap();
    let (mean, cov) = moments(&z);
    eprintln!(
        "{what}: mean error {:.4}, covariance error {:.4}",
        (&mean - &ma).amax(),
        (&cov - &pa).amax()
    );
    assert!((&mean - &ma).amax() < 0.06, "mean {mean} vs Kalman {ma}");
    assert!(
        (&cov - &pa).amax() < 0.05,
        "covariance {cov} vs Kalman {pa}"
    );
}

/// H Σ_σ Hᵀ of the Gaussian prior, Σ_σ = Cov[x₀ | z_σ] = σ² P (P + σ² I)⁻¹, written out.
fn gaussian_obs_covariance(p: &DMatrix<f64>, batch: &ObsBatch, sigma: f64) -> DMatrix<f64> {
    let s2 = sigma * sigma;
    let inv = (p + DMatrix::identity(N, N) * s2).try_inverse().unwrap();
    let sig = p * inv * s2;
    let h = DMatrix::from_fn(batch.len(), N, |j, i| {
        batch.op.rows()[j]
            .iter()
            .filter(|(k, _)| *k == i)
            .map(|(_, w)| *w)
            .sum::<f64>()
    });
    &h * sig * h.transpose()
}

#[test]
fn tweedie_covariance_from_vjps_is_the_gaussian_posterior_covariance() {
    // The exact Gaussian denoiser knows no prior covariance to the sampler: the Tweedie form
    // σ² H J Hᵀ, from m VJPs at the batch mean, must be H Σ_σ Hᵀ to rounding at every σ.
    let (m, p, batch) = problem();
    let den = GaussianDenoiser::new(m.clone(), p.clone()).unwrap();
    let sampler = Sampler::new(SamplerConfig {
        tweedie: true,
        ..SamplerConfig::default()
    })
    .unwrap();
    let z: Vec<f64> = (0..3 * N).map(|i| (i as f64 * 0.7).cos()).collect();
    for sigma in [0.01, 0.3, 1.0, 3.0, 10.0] {
        let got = match sampler.tweedie_covariance(&den, &z, sigma, &batch).unwrap() {
            Some(c) => c.at(sigma * sigma),
            None => panic!("no covariance"),
        };
        let want = gaussian_obs_covariance(&p, &batch, sigma);
        assert!(
            (&got - &want).amax() < 1e-10 * want.amax().max(1.0),
            "σ = {sigma}: {got} vs {want}"
        );
    }
}

#[test]
fn tweedie_guidance_gives_the_exact_posterior_score_for_a_gaussian_prior() {
    // For a Gaussian prior and linear H, p(y | z_σ) = N(y; H D(z; σ), R + H Σ_σ Hᵀ) exactly, with Σ_σ
    // independent of z, so the guided score is the score of the noised posterior,
    // -(P_a + σ² I)⁻¹ (z - m_a), with (m_a, P_a) the Kalman update (γ = 0).
    let (m, p, batch) = problem();
    let (ma, pa) = kalman(&m, &p, &batch);
    let den = GaussianDenoiser::new(m, p).unwrap();
    let sampler = Sampler::new(SamplerConfig {
        tweedie: true,
        gamma: 0.0,
        ..SamplerConfig::default()
    })
    .unwrap();
    let z: Vec<f64> = (0..2 * N).map(|i| 2.0 * (i as f64 * 1.3).sin()).collect();
    for sigma in [0.1, 1.0, 8.0] {
        let cov = sampler.tweedie_covariance(&den, &z, sigma, &batch).unwrap();
        let mut score = vec![0.0; z.len()];
        sampler
            .score(&den, &z, sigma, &batch, cov.as_ref(), &mut score)
            .unwrap();
        let inv = (&pa + DMatrix::identity(N, N) * (sigma * sigma))
            .try_inverse()
            .unwrap();
        for (k, zk) in z.chunks(N).enumerate() {
            let want = -&inv * (DVector::from_column_slice(zk) - &ma);
            let got = DVector::from_column_slice(&score[k * N..(k + 1) * N]);
            assert!(
                (&got - &want).amax() < 1e-9 * want.amax().max(1.0),
                "σ = {sigma}, member {k}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn tweedie_guided_sampler_matches_the_kalman_update_without_correctors() {
    // With the exact likelihood at every level the predictor alone carries the draws onto the
    // posterior: the same problem and tolerances as the SDA test above, no Langevin corrections.
    assert_kalman_moments(
        SamplerConfig {
            steps: 100,
            corrections: 0,
            gamma: 0.0,
            sigma_start: 8.0,
            sigma_min: 0.01,
            tweedie: true,
            ..SamplerConfig::default()
        },
        "tweedie",
    );
}

#[test]
fn invalid_sampler_settings_name_the_fix() {
    let e = Sampler::new(SamplerConfig {
        steps: 1,
        ..SamplerConfig::default()
    })
    .err()
    .unwrap();
    assert!(e
        .to_string()
        .contains("steps must be >= 2 (0 = no diffusion"));
    let e = Sampler::new(SamplerConfig {
        steps: 0,
        lo_steps: 3,
        ..SamplerConfig::default()
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("set lo_steps = 0"));
    let e = Sampler::new(SamplerConfig {
        sigma_min: 3.0,
        ..SamplerConfig::default()
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("sigma_min < sigma_start"));
}

/// `n` members drawn from N(m, P).
fn draw(m: &[f64], p: &DMatrix<f64>, n: usize, rng: &mut ChaCha8Rng) -> crate::Ensemble {
    let l = p.clone().cholesky().unwrap().l();
    let members = (0..n)
        .map(|_| {
            let e = DVector::from_fn(N, |_, _| {
                rand_distr::Distribution::<f64>::sample(&rand_distr::StandardNormal, rng)
            });
            (DVector::from_column_slice(m) + &l * e)
                .iter()
                .copied()
                .collect()
        })
        .collect();
    crate::Ensemble::from_members(members).unwrap()
}

/// The ideal ensemble-conditioned prior: the Gaussian of the background's sample moments.
struct SampleGaussian;

impl ScorePrior for SampleGaussian {
    fn condition(&self, bg: &crate::Ensemble) -> Result<Box<dyn Denoiser>, crate::FilterError> {
        let (mean, cov) = moments(bg.as_flat());
        Ok(Box::new(GaussianDenoiser::new(
            mean.iter().copied().collect(),
            cov,
        )?))
    }
}

#[test]
fn score_filter_with_the_sample_gaussian_prior_is_a_kalman_filter() {
    // The whole analysis step (condition, start at each member, guided sampling, write back) with
    // the exact Gaussian prior of the background sample: mean and covariance match the Kalman update
    // of the background moments (2,000 members; tolerance 0.08 on entries of order 1).
    use crate::Analysis;
    let (m, p, batch) = problem();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut ens = draw(&m, &p, 2000, &mut rng);
    let (bm, bp) = moments(ens.as_flat());
    let (ma, pa) = kalman(bm.as_slice(), &bp, &batch);
    let cfg = SamplerConfig {
        steps: 100,
        corrections: 2,
        tau: 0.05,
        gamma: 0.5,
        sigma_start: 8.0,
        sigma_min: 0.01,
        rho: 7.0,
        ..SamplerConfig::default()
    };
    let f = ScoreFilter {
        prior: std::sync::Arc::new(SampleGaussian),
        sampler: Sampler::new(cfg).unwrap(),
        start: Start::Member,
        spread: crate::enkf::Inflation::default(),
        baseline: None,
        sigma_start_spread: None,
    };
    f.analyse(&mut ens, &batch, &mut rng).unwrap();
    let (am, ap) = moments(ens.as_flat());
    assert!(
        (&am - &ma).amax() < 0.08,
        "mean error {}",
        (&am - &ma).amax()
    );
    assert!(
        (&ap - &pa).amax() < 0.08,
        "covariance error {}",
        (&ap - &pa).amax()
    );
}

#[test]
fn without_diffusion_the_analysis_is_the_start() {
    // steps = 0: each member is exactly where it starts (the start-only control), here its own
    // background (Start::Member) or the background mean (Start::Mean), whatever the observations.
    use crate::Analysis;
    let (m, p, batch) = problem();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let bg = draw(&m, &p, 10, &mut rng);
    for start in [Start::Member, Start::Mean] {
        let f = ScoreFilter {
            prior: std::sync::Arc::new(SampleGaussian),
            sampler: Sampler::new(SamplerConfig {
                steps: 0,
                ..SamplerConfig::default()
            })
            .unwrap(),
            start,
            spread: crate::enkf::Inflation::default(),
            baseline: None,
            sigma_start_spread: None,
        };
        let mut ens = bg.clone();
        f.analyse(&mut ens, &batch, &mut rng).unwrap();
        let mean = bg.mean();
        for (k, x) in ens.members().enumerate() {
            let want = if start == Start::Member {
                bg.member(k)
            } else {
                &mean[..]
            };
            assert_eq!(x, want, "{start:?} member {k}");
        }
    }
}

#[test]
fn the_baseline_start_is_the_baselines_analysis_whatever_the_prior() {
    // Start::Baseline with a prior that has a covariance (the analytic ensemble Gaussian, whose own
    // start would be its square-root update): with the diffusion off the analysis is exactly the
    // baseline's (here the ETKF's), member by member.
    use crate::Analysis;
    let (space, bg, batch) = l96_like(20, 4);
    let etkf = || crate::enkf::Etkf {
        inflation: crate::enkf::Inflation::default(),
    };
    let f = ScoreFilter {
        prior: std::sync::Arc::new(EnsembleGaussianPrior::new(&space, 2000.0, 1.0, 0.0).unwrap()),
        sampler: Sampler::new(SamplerConfig {
            steps: 0,
            ..SamplerConfig::default()
        })
        .unwrap(),
        start: Start::Baseline,
        spread: crate::enkf::Inflation::default(),
        baseline: Some(Box::new(etkf())),
        sigma_start_spread: None,
    };
    let mut ens = bg.clone();
    f.analyse(&mut ens, &batch, &mut ChaCha8Rng::seed_from_u64(1))
        .unwrap();
    let mut want = bg.clone();
    etkf()
        .analyse(&mut want, &batch, &mut ChaCha8Rng::seed_from_u64(1))
        .unwrap();
    assert_eq!(ens.as_flat(), want.as_flat());
    let mut sqrt = bg.clone();
    let g = ScoreFilter {
        start: Start::SquareRoot,
        ..f
    };
    g.analyse(&mut sqrt, &batch, &mut ChaCha8Rng::seed_from_u64(1))
        .unwrap();
    assert_ne!(
        sqrt.as_flat(),
        want.as_flat(),
        "the prior's own start differs"
    );
}

/// A 40-point ring observed everywhere with R = I and a prior of variance ~0.05 (the regime of
/// Lorenz-96 `full`), background ensemble of `n` members drawn from N(m, P).
fn l96_like(n: usize, seed: u64) -> (StateSpace, crate::Ensemble, ObsBatch) {
    l96_like_with(n, seed, 0.05, 1e-4)
}

/// [`l96_like`] with prior covariance `amp` exp(-d²/8) + `nugget` I.
fn l96_like_with(
    n: usize,
    seed: u64,
    amp: f64,
    nugget: f64,
) -> (StateSpace, crate::Ensemble, ObsBatch) {
    const D: usize = 40;
    let space = StateSpace {
        geometry: Geometry::Ring {
            n: D,
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
    let p = DMatrix::from_fn(D, D, |i, j| {
        let d = (i as f64 - j as f64)
            .abs()
            .min(D as f64 - (i as f64 - j as f64).abs());
        amp * (-d * d / 8.0).exp()
    }) + DMatrix::identity(D, D) * nugget;
    let l = p.cholesky().unwrap().l();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut nrm = || rand_distr::Distribution::<f64>::sample(&rand_distr::StandardNormal, &mut rng);
    let m: Vec<f64> = (0..D).map(|i| 2.0 + (i as f64 * 0.3).sin()).collect();
    let members: Vec<Vec<f64>> = (0..n)
        .map(|_| {
            let e = DVector::from_fn(D, |_, _| nrm());
            (DVector::from_column_slice(&m) + &l * e)
                .iter()
                .copied()
                .collect()
        })
        .collect();
    let g = &space.geometry;
    let obs: Vec<Observation> = (0..D)
        .map(|i| {
            let (lat, lon) = g.point_latlon(i);
            Observation {
                modality: Modality::Station,
                var: 0,
                lat,
                lon,
                footprint: Footprint::Point,
                value: m[i] + 0.5 + nrm(),
                sigma: 1.0,
            }
        })
        .collect();
    let op = SparseOperator::for_observations(&space, &obs).unwrap();
    let batch = ObsBatch {
        y: obs.iter().map(|o| o.value).collect(),
        sigma: obs.iter().map(|o| o.sigma).collect(),
        obs,
        op,
    };
    (
        space,
        crate::Ensemble::from_members(members).unwrap(),
        batch,
    )
}

/// One analysis of the 3,000-member `l96_like` problem with the ensemble Gaussian prior (no
/// localisation, no floor: P is the background's sample covariance) and the given start and sampler.
fn l96_like_analysis(start: Start, cfg: SamplerConfig) -> (f64, f64, f64) {
    use crate::Analysis;
    let (space, mut ens, batch) = l96_like(3000, 11);
    let (bm, bp) = ensemble_moments(&ens);
    let (ma, pa) = kalman(bm.as_slice(), &bp, &batch);
    let prior = EnsembleGaussianPrior::new(&space, f64::INFINITY, 1.0, 0.0).unwrap();
    let f = ScoreFilter {
        prior: std::sync::Arc::new(prior),
        sampler: Sampler::new(cfg).unwrap(),
        start,
        spread: crate::enkf::Inflation::default(),
        baseline: None,
        sigma_start_spread: None,
    };
    f.analyse(&mut ens, &batch, &mut ChaCha8Rng::seed_from_u64(3))
        .unwrap();
    let (am, ap) = ensemble_moments(&ens);
    let (mean_err, cov_err, shift) = ((&am - &ma).amax(), (&ap - &pa).amax(), (&ma - &bm).amax());
    eprintln!("{start:?}: mean error {mean_err:.4} (Kalman shift {shift:.4}), covariance error {cov_err:.4}");
    (mean_err, cov_err, shift)
}

#[test]
fn analysis_start_makes_a_short_diffusion_exact_in_the_l96_regime() {
    // R = I, prior sd ~0.22, 40 observations: the Kalman update shifts the mean by up to 0.25.
    // Started at the Kalman-updated members (perturbed observations) and noised to σ_start = 0.2,
    // 8 levels reproduce the Kalman posterior: measured mean error 0.006, covariance error 0.003
    // (3,000 members; tolerances 0.03 and 0.01).
    let cfg = SamplerConfig {
        steps: 8,
        corrections: 0,
        sigma_start: 0.2,
        ..SamplerConfig::default()
    };
    let (mean_err, cov_err, shift) = l96_like_analysis(Start::Analysis, cfg.clone());
    assert!(
        shift > 0.2,
        "the test needs a visible update, shift {shift}"
    );
    assert!(
        mean_err < 0.03 && cov_err < 0.01,
        "mean error {mean_err}, covariance error {cov_err}"
    );
    // Started at the members' own backgrounds, the same short diffusion cannot get there: the
    // noised prior at σ = 0.2 is not the noised posterior (measured mean error 0.26 of a 0.31 shift).
    let (mean_err_b, _, _) = l96_like_analysis(Start::Member, cfg.clone());
    assert!(
        mean_err_b > 3.0 * mean_err,
        "background start {mean_err_b} vs analysis start {mean_err}"
    );
    // The deterministic square-root start is as exact.
    let (mean_err_s, cov_err_s, _) = l96_like_analysis(Start::SquareRoot, cfg);
    assert!(
        mean_err_s < 0.03 && cov_err_s < 0.01,
        "square root: mean error {mean_err_s}, covariance error {cov_err_s}"
    );
}

#[test]
fn spectral_denoiser_equals_the_dense_gaussian_denoiser() {
    let (m, p, _) = problem();
    let dense = GaussianDenoiser::new(m.clone(), p.clone()).unwrap();
    let eig = p.clone().symmetric_eigen();
    let spectral = SpectralGaussianDenoiser::new(m, eig.eigenvectors, eig.eigenvalues).unwrap();
    let z: Vec<f64> = (0..2 * N).map(|i| (0.7 * i as f64).cos()).collect();
    let v: Vec<f64> = (0..2 * N).map(|i| (1.3 * i as f64).sin()).collect();
    let sigma = [0.3, 2.0];
    let (mut a, mut b) = (vec![0.0; 2 * N], vec![0.0; 2 * N]);
    let (mut ja, mut jb) = (vec![0.0; 2 * N], vec![0.0; 2 * N]);
    dense.denoise_vjp(&z, &sigma, &v, &mut a, &mut ja).unwrap();
    spectral
        .denoise_vjp(&z, &sigma, &v, &mut b, &mut jb)
        .unwrap();
    for i in 0..2 * N {
        assert!(
            (a[i] - b[i]).abs() < 1e-10 && (ja[i] - jb[i]).abs() < 1e-10,
            "{i}: {} {} / {} {}",
            a[i],
            b[i],
            ja[i],
            jb[i]
        );
    }
}

/// A prior whose denoiser hides its covariance, as a learned (latent) bundle's does.
struct Opaque(EnsembleGaussianPrior);

struct OpaqueDenoiser(Box<dyn Denoiser>);

impl Denoiser for OpaqueDenoiser {
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn state_dim(&self) -> usize {
        self.0.state_dim()
    }
    fn denoise(&self, z: &[f64], sigma: &[f64], out: &mut [f64]) -> Result<(), crate::FilterError> {
        self.0.denoise(z, sigma, out)
    }
    fn denoise_vjp(
        &self,
        z: &[f64],
        sigma: &[f64],
        v: &[f64],
        x0: &mut [f64],
        jtv: &mut [f64],
    ) -> Result<(), crate::FilterError> {
        self.0.denoise_vjp(z, sigma, v, x0, jtv)
    }
    fn encode(&self, x: &[f64]) -> Result<Vec<f64>, crate::FilterError> {
        self.0.encode(x)
    }
    fn decode(&self, z: &[f64]) -> Result<Vec<f64>, crate::FilterError> {
        self.0.decode(z)
    }
}

impl ScorePrior for Opaque {
    fn condition(
        &self,
        background: &crate::Ensemble,
    ) -> Result<Box<dyn Denoiser>, crate::FilterError> {
        Ok(Box::new(OpaqueDenoiser(self.0.condition(background)?)))
    }
}

/// An `l96_like` analysis with a prior of sd ≈ 1 (every eigenvalue ≥ 0.01, so σ_start² is small
/// against the prior variance, as in a latent space in climatological units) and observations 50
/// times more precise (σ_o = 0.005), a prior that hides its covariance, members started at the ETKF
/// analysis (the Kalman update of the sample moments) and a short diffusion from σ_start = 0.05.
fn precise_obs_analysis(jacobian_cov: bool) -> (f64, f64, f64) {
    use crate::Analysis;
    let (space, mut ens, mut batch) = l96_like_with(800, 11, 1.0, 0.01);
    for (s, o) in batch.sigma.iter_mut().zip(batch.obs.iter_mut()) {
        *s = 0.005;
        o.sigma = 0.005;
    }
    let (bm, bp) = ensemble_moments(&ens);
    let (ma, pa) = kalman(bm.as_slice(), &bp, &batch);
    let prior = Opaque(EnsembleGaussianPrior::new(&space, f64::INFINITY, 1.0, 0.0).unwrap());
    let cfg = SamplerConfig {
        steps: 4,
        corrections: 0,
        sigma_start: 0.05,
        jacobian_cov,
        ..SamplerConfig::default()
    };
    let etkf = crate::enkf::Etkf {
        inflation: crate::enkf::Inflation::default(),
    };
    let f = ScoreFilter {
        prior: std::sync::Arc::new(prior),
        sampler: Sampler::new(cfg).unwrap(),
        start: Start::SquareRoot,
        spread: crate::enkf::Inflation::default(),
        baseline: Some(Box::new(etkf)),
        sigma_start_spread: None,
    };
    f.analyse(&mut ens, &batch, &mut ChaCha8Rng::seed_from_u64(3))
        .unwrap();
    let (am, ap) = ensemble_moments(&ens);
    let (mean_err, cov_err, sd) = (
        (&am - &ma).amax(),
        (&ap - &pa).amax(),
        pa.diagonal().map(f64::sqrt).max(),
    );
    eprintln!("jacobian_cov {jacobian_cov}: mean error {mean_err:.4}, covariance error {cov_err:.5}, posterior sd {sd:.4}");
    (mean_err, cov_err, sd)
}

#[test]
fn jacobian_covariance_keeps_the_guidance_stable_under_precise_observations() {
    // Without the prior's covariance the likelihood is SDA's R + γσ²I: with R⁻¹ = 40,000 and a first
    // step σ₀² - σ₁² = 1.6e-3 the explicit guidance step overshoots the observations (gain ~60) and
    // the samples blow up (measured mean error 689 against a posterior sd of 0.005). Adding σ² G Gᵀ
    // with G = H ∂x̂₀/∂z bounds the gain by one and keeps the Kalman posterior (measured with 3,000
    // members: mean error 0.008 of a Kalman shift ~0.5, covariance error 4e-4; tolerances 0.03, 2e-3).
    let (mean_err, cov_err, sd) = precise_obs_analysis(true);
    assert!(mean_err < 0.03 && cov_err < 2e-3, "with the Jacobian covariance: mean error {mean_err}, covariance error {cov_err} (posterior sd {sd})");
    let (mean_err_sda, _, _) = precise_obs_analysis(false);
    assert!(
        mean_err_sda > 10.0 * mean_err.max(sd / 10.0),
        "SDA's likelihood: mean error {mean_err_sda} vs {mean_err}"
    );
}

/// A codec that loses one coordinate: the latent is the state's first d - 1 values (a stand-in for
/// an autoencoder's reconstruction error), decode appends a zero.
struct LossyCodec(Box<dyn Denoiser>);

impl Denoiser for LossyCodec {
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn state_dim(&self) -> usize {
        self.0.dim() + 1
    }
    fn denoise(&self, z: &[f64], sigma: &[f64], out: &mut [f64]) -> Result<(), crate::FilterError> {
        self.0.denoise(z, sigma, out)
    }
    fn denoise_vjp(
        &self,
        _: &[f64],
        _: &[f64],
        _: &[f64],
        _: &mut [f64],
        _: &mut [f64],
    ) -> Result<(), crate::FilterError> {
        unreachable!("no observations, no guidance")
    }
    fn encode(&self, x: &[f64]) -> Result<Vec<f64>, crate::FilterError> {
        Ok(x.chunks(self.state_dim())
            .flat_map(|m| m[..m.len() - 1].to_vec())
            .collect())
    }
    fn decode(&self, z: &[f64]) -> Result<Vec<f64>, crate::FilterError> {
        Ok(z.chunks(self.dim())
            .flat_map(|m| m.iter().copied().chain([0.0]))
            .collect())
    }
}

/// The Gaussian prior of the first 39 of the 40 `l96_like` values, behind [`LossyCodec`].
struct LossyPrior(EnsembleGaussianPrior);

impl ScorePrior for LossyPrior {
    fn condition(
        &self,
        background: &crate::Ensemble,
    ) -> Result<Box<dyn Denoiser>, crate::FilterError> {
        let coded = crate::Ensemble::from_members(
            background.members().map(|m| m[..39].to_vec()).collect(),
        )?;
        Ok(Box::new(LossyCodec(self.0.condition(&coded)?)))
    }
}

#[test]
fn the_codec_reconstruction_error_never_enters_the_cycled_state() {
    // The diffusion's result is applied as an increment decode(z) - decode(encode(x_start)): what
    // the codec cannot represent (here the last value) passes through the analysis unchanged instead
    // of being replaced by its reconstruction (which would zero it every cycle).
    use crate::Analysis;
    let (_, mut ens, _) = l96_like(50, 5);
    let background = ens.clone();
    let space39 = StateSpace {
        geometry: Geometry::Ring {
            n: 39,
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
    let prior = LossyPrior(EnsembleGaussianPrior::new(&space39, f64::INFINITY, 1.0, 0.0).unwrap());
    let cfg = SamplerConfig {
        steps: 4,
        corrections: 0,
        sigma_start: 0.05,
        ..SamplerConfig::default()
    };
    let f = ScoreFilter {
        prior: std::sync::Arc::new(prior),
        sampler: Sampler::new(cfg).unwrap(),
        start: Start::Member,
        spread: crate::enkf::Inflation::default(),
        baseline: None,
        sigma_start_spread: None,
    };
    let empty = ObsBatch {
        y: vec![],
        sigma: vec![],
        obs: vec![],
        op: SparseOperator::from_rows(40, vec![]).unwrap(),
    };
    f.analyse(&mut ens, &empty, &mut ChaCha8Rng::seed_from_u64(1))
        .unwrap();
    let mut moved = 0.0_f64;
    for k in 0..ens.n_members() {
        let (a, b) = (ens.member(k), background.member(k));
        assert_eq!(
            a[39], b[39],
            "member {k}: the value the codec drops must pass through"
        );
        moved = moved.max((a[0] - b[0]).abs());
    }
    assert!(
        moved > 1e-3,
        "the diffusion must still act on the coded values (max move {moved})"
    );
}
