//! # The filter factory
//!
//! [`build_filter`] turns a [`FilterKind`] and its [`FilterSettings`] into the analysis step of
//! [`assimd_filter`] for a testbed. `assimd experiment`, `assimd demo` and the daemon all build
//! their filters here, so a setting means the same thing everywhere:
//!
//! - `enkf`: the perturbed-observation EnKF (Burgers et al. 1998) with `[enkf]`'s inflation;
//! - `etkf`: the global ETKF (Hunt et al. 2007) with `[etkf]`'s;
//! - `letkf`: the LETKF with Gaspari–Cohn localisation, inflation/RTPS and optional weight
//!   interpolation, `[letkf]`;
//! - `score`: the score-based filter of [`assimd_filter::score`] with a model bundle of
//!   [`assimd_models::bundle`] as its prior (or the analytic localised-ensemble Gaussian,
//!   [`ENSEMBLE_GAUSSIAN`]), `[score]`. A latent bundle (no prior covariance of its own) started at
//!   `analysis`/`sqrt` starts each member at its LETKF analysis with `[letkf]`'s settings.
//!
//! `free` and `climatology` have no analysis step (`None`).

use crate::settings::{FilterKind, FilterSettings};
use anyhow::{bail, Context, Result};
use assimd_filter::enkf::{Etkf, Inflation, Letkf, StochasticEnkf};
use assimd_filter::score::{Denoiser, EnsembleGaussianPrior, Sampler, ScoreFilter, ScorePrior};
use assimd_filter::{Analysis, Ensemble, FilterError};
use assimd_models::bundle::{Bundle, BundleOptions};
use assimd_models::testbed::Testbed;
use std::path::Path;
use std::sync::Arc;

/// The `score.bundle` value that selects the analytic localised-ensemble Gaussian prior
/// N(x̄, ρ (L ∘ C) + s₀² I) of the background instead of a trained model ([`EnsembleGaussianPrior`];
/// localisation and inflation from `[letkf]`).
pub const ENSEMBLE_GAUSSIAN: &str = "ensemble-gaussian";

/// A built filter.
pub struct Built {
    /// The analysis step.
    pub analysis: Box<dyn Analysis>,
    /// The model bundle it loaded, if any.
    pub bundle: Option<LoadedBundle>,
}

/// What the daemon reports of a loaded model bundle.
#[derive(Clone, Debug)]
pub struct LoadedBundle {
    /// [`bundle_hash`] of its files (kept in the state store: a different bundle needs a reset).
    pub hash: String,
    /// The ONNX Runtime execution provider its sessions run on.
    pub provider: String,
    /// Why the provider is not the one asked for, if it is not.
    pub provider_note: Option<String>,
}

/// The analysis step of `kind` with `settings` on `testbed`; `None` for `free` and `climatology`.
/// The settings must have passed [`FilterSettings::validate`].
pub fn build_filter(
    kind: FilterKind,
    settings: &FilterSettings,
    testbed: &Testbed,
) -> Result<Option<Built>> {
    let plain = |analysis: Box<dyn Analysis>| {
        Ok(Some(Built {
            analysis,
            bundle: None,
        }))
    };
    match kind {
        FilterKind::Free | FilterKind::Climatology => Ok(None),
        FilterKind::Enkf => {
            let g = &settings.enkf;
            plain(Box::new(StochasticEnkf {
                inflation: Inflation::new(g.inflation, g.rtps)?,
            }))
        }
        FilterKind::Etkf => {
            let g = &settings.etkf;
            plain(Box::new(Etkf {
                inflation: Inflation::new(g.inflation, g.rtps)?,
            }))
        }
        FilterKind::Letkf => plain(letkf(settings, testbed)?),
        FilterKind::Score => score(settings, testbed).map(Some),
    }
    .with_context(|| format!("building the {kind} filter"))
}

fn letkf(settings: &FilterSettings, testbed: &Testbed) -> Result<Box<dyn Analysis>> {
    let l = &settings.letkf;
    Ok(Box::new(
        Letkf::new(
            &testbed.space,
            l.localization_km,
            Inflation::new(l.inflation, l.rtps)?,
        )?
        .with_stride(l.weight_stride)?
        .with_adaptive(l.adaptive())?,
    ))
}

fn score(settings: &FilterSettings, testbed: &Testbed) -> Result<Built> {
    let s = &settings.score;
    let dir = s.bundle.as_ref().context(
        "the score filter needs a model bundle: give --bundle DIR or [score] bundle (e.g. models/zoo/l96)",
    )?;
    let sampler = Sampler::new(s.sampler.config())?;
    let start = s.sampler.start.into();
    let spread = Inflation::new(1.0, s.rtps)?;
    let sigma_start_spread =
        (s.sampler.sigma_start_spread > 0.0).then_some(s.sampler.sigma_start_spread);
    if dir.as_os_str() == ENSEMBLE_GAUSSIAN {
        // The analytic baseline prior: N(mean, rho (L o C) + s0^2 I) of the background, with the
        // variance floor s0 a hundredth of the smallest climatological standard deviation.
        let floor = 0.01
            * testbed
                .climatology()
                .std_state(1)
                .into_iter()
                .fold(f64::INFINITY, f64::min);
        let prior = EnsembleGaussianPrior::new(
            &testbed.space,
            s.prior_localization_km
                .unwrap_or(settings.letkf.localization_km),
            s.prior_inflation.unwrap_or(settings.letkf.inflation),
            floor,
        )?;
        return Ok(Built {
            analysis: Box::new(ScoreFilter {
                prior: Arc::new(prior),
                sampler,
                start,
                spread,
                // The analytic prior's own start is its Kalman update; `letkf` asks for the LETKF.
                baseline: match start {
                    assimd_filter::score::Start::Baseline => Some(letkf(settings, testbed)?),
                    _ => None,
                },
                sigma_start_spread,
            }),
            bundle: None,
        });
    }
    let hash = bundle_hash(dir)?;
    let options = BundleOptions {
        device: s.device,
        threads: s.threads,
        prior_localization_km: s.prior_localization_km,
        prior_inflation: s.prior_inflation,
        ..BundleOptions::default()
    };
    let bundle = Bundle::load(dir, &options)
        .with_context(|| format!("loading the model bundle {}", dir.display()))?;
    if bundle.manifest().testbed != testbed.kind.to_string() {
        bail!(
            "score.bundle {} is for testbed {}, not {}: use a bundle of this testbed",
            dir.display(),
            bundle.manifest().testbed,
            testbed.kind
        );
    }
    if bundle.manifest().grid.n_points != testbed.space.dim() {
        bail!(
            "score.bundle {} models states of {} values ({:?}), this testbed's have {}: use the grid the bundle was trained for (qg2l bundles: [testbed] resolution = 64) or train one for this grid (models/train/)",
            dir.display(),
            bundle.manifest().grid.n_points,
            bundle.manifest().grid.dims,
            testbed.space.dim()
        );
    }
    let loaded = LoadedBundle {
        hash,
        provider: bundle.provider().to_string(),
        provider_note: bundle.provider_note().map(str::to_string),
    };
    // A latent bundle has no prior covariance to start from: its members start at the LETKF; so
    // do every bundle's with `start = "letkf"`.
    let baseline = if start == assimd_filter::score::Start::Baseline
        || bundle.manifest().conditioning.ensemble_gaussian.is_none()
            && matches!(
                start,
                assimd_filter::score::Start::Analysis | assimd_filter::score::Start::SquareRoot
            ) {
        Some(letkf(settings, testbed)?)
    } else {
        None
    };
    Ok(Built {
        analysis: Box::new(ScoreFilter {
            prior: Arc::new(BundlePrior(bundle)),
            sampler,
            start,
            spread,
            baseline,
            sigma_start_spread,
        }),
        bundle: Some(loaded),
    })
}

/// A model bundle as the score filter's prior.
struct BundlePrior(Bundle);

impl ScorePrior for BundlePrior {
    fn condition(&self, background: &Ensemble) -> Result<Box<dyn Denoiser>, FilterError> {
        let d = self
            .0
            .condition(background)
            .map_err(|e| FilterError::Model(e.to_string()))?;
        Ok(Box::new(d))
    }
}

/// FNV-1a 64 over a bundle's manifest and ONNX graphs (stable across builds, unlike std's hasher).
pub fn bundle_hash(dir: &Path) -> Result<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading bundle directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && (p.extension().is_some_and(|e| e == "onnx")
                    || p.file_name().is_some_and(|n| n == "manifest.toml"))
        })
        .collect();
    files.sort();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        for b in f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .bytes()
            .chain(bytes)
        {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("fnv1a64:{h:016x}"))
}
