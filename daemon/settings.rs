//! # Filter and testbed settings: one type, one table of tuned defaults, one merge rule
//!
//! Every way of running a filter — `assimd experiment`, `assimd demo` and the daemon (`assimd run`)
//! — describes it with the same serde types: [`TestbedSettings`] (`[testbed]`: which model and
//! observing network) and [`FilterSettings`] (`[enkf]`, `[etkf]`, `[letkf]`, `[score]` with
//! `[score.sampler]`), and builds it with the one factory [`crate::filters::build_filter`].
//!
//! Values are layered by one rule, [`merge`], on TOML tables:
//!
//! 1. the built-in defaults of each type (`Default`), below
//! 2. the tuned values of the testbed and network, [`tuned`] (`configs/tuned.toml`, compiled in):
//!    first the testbed's own table, then its network's,
//! 3. the file (an experiment file or the daemon's config),
//! 4. command-line flags.
//!
//! A later layer wins key by key; tables merge recursively. Unknown keys are errors at every level.

use anyhow::{bail, Context, Result};
use assimd_filter::score::{SamplerConfig, Start};
use assimd_models::bundle::Device;
use assimd_models::testbed::{Network, NetworkKind, Testbed, TestbedKind};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use toml::{Table, Value};

/// The tuned values per testbed and network (`configs/tuned.toml`).
pub const TUNED: &str = include_str!("../configs/tuned.toml");

/// The analysis methods (`--filter`, experiment files' `filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterKind {
    /// No assimilation: the initial ensemble forecast freely.
    Free,
    /// The climatological mean and standard deviation.
    Climatology,
    /// Stochastic (perturbed-observation) EnKF (Burgers et al. 1998), `[enkf]`.
    Enkf,
    /// Global ETKF (Bishop et al. 2001; Hunt et al. 2007), `[etkf]`.
    Etkf,
    /// LETKF (Hunt et al. 2007), `[letkf]`.
    Letkf,
    /// The score-based filter (needs a model bundle), `[score]`.
    Score,
}

impl FilterKind {
    /// Every kind, in the order the help lists them.
    pub const ALL: [FilterKind; 6] = [
        FilterKind::Free,
        FilterKind::Climatology,
        FilterKind::Enkf,
        FilterKind::Etkf,
        FilterKind::Letkf,
        FilterKind::Score,
    ];

    /// The name used in files and flags.
    pub fn name(self) -> &'static str {
        match self {
            FilterKind::Free => "free",
            FilterKind::Climatology => "climatology",
            FilterKind::Enkf => "enkf",
            FilterKind::Etkf => "etkf",
            FilterKind::Letkf => "letkf",
            FilterKind::Score => "score",
        }
    }
}

impl FromStr for FilterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FilterKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown filter '{s}': use {}",
                    FilterKind::ALL.map(FilterKind::name).join(", ")
                )
            })
    }
}

impl fmt::Display for FilterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Serde for the models crate's `FromStr`/`Display` kinds (testbed, network).
mod as_str {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<S: Serializer, T: Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr<Err = String>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// `[testbed]`: what is being assimilated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestbedSettings {
    /// `l96` or `qg2l`: the state space that messages are validated against and the dynamics of
    /// the forecast step.
    #[serde(with = "as_str")]
    pub name: TestbedKind,
    /// The observing network: `full`, `sparse` (l96), `stations`, `satellite` or
    /// `stations+satellite`.
    #[serde(with = "as_str")]
    pub network: NetworkKind,
    /// l96: model steps of Δt = 0.05 per cycle (default 1; 8 is the 48-hour window of Spantini et
    /// al. 2019). The cycle's length in seconds, and so the daemon's window, scales with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_per_cycle: Option<usize>,
    /// l96: the observation error variance σ² of every assimilated station and footprint
    /// (default: the network's, 1 or 1.5 on `sparse`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub obs_error_variance: Option<f64>,
    /// qg2l: grid points per side, 64 (default), 128 or 256. Larger grids tile the 1000 km box
    /// (same spacing, physics and climatology on a box 2 or 4 times as long) with networks of the
    /// same density; the trained score bundles are for 64² only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<usize>,
}

impl Default for TestbedSettings {
    fn default() -> Self {
        TestbedSettings {
            name: TestbedKind::L96,
            network: NetworkKind::StationsSatellite,
            steps_per_cycle: None,
            obs_error_variance: None,
            resolution: None,
        }
    }
}

impl TestbedSettings {
    /// The testbed, with the network and the l96 options checked against it.
    pub fn testbed(&self) -> Result<Testbed> {
        let mut t = match (self.name, self.resolution) {
            (_, None) => Testbed::new(self.name),
            (TestbedKind::Qg2l, Some(n)) => {
                Testbed::qg2l(n).map_err(|e| anyhow::anyhow!("testbed.resolution: {e}"))?
            }
            (_, Some(_)) => {
                bail!("testbed.resolution exists for qg2l only: remove it from [testbed]")
            }
        };
        t.network(self.network)
            .map_err(|e| anyhow::anyhow!("testbed.network: {e}"))?;
        let l96_only = |key: &str| {
            anyhow::anyhow!("testbed.{key} exists for l96 only: remove it from [testbed]")
        };
        if let Some(steps) = self.steps_per_cycle {
            if self.name != TestbedKind::L96 {
                return Err(l96_only("steps_per_cycle"));
            }
            if !(1..=1000).contains(&steps) {
                bail!("testbed.steps_per_cycle must be in 1..=1000 (1 = Δt 0.05, 8 = Δt 0.4), got {steps}");
            }
            t.dynamics = std::sync::Arc::new(assimd_models::l96::Lorenz96 {
                steps_per_cycle: steps,
                ..Default::default()
            });
        }
        if let Some(v) = self.obs_error_variance {
            if self.name != TestbedKind::L96 {
                return Err(l96_only("obs_error_variance"));
            }
            if !(v.is_finite() && v > 0.0) {
                bail!("testbed.obs_error_variance must be a finite number > 0 (σ², e.g. 0.5), got {v}");
            }
        }
        Ok(t)
    }

    /// The observing network of `testbed` (from [`Self::testbed`]), with `obs_error_variance`
    /// applied to every assimilated station and footprint (withheld stations keep theirs).
    pub fn network(&self, testbed: &Testbed) -> Result<Network> {
        let mut net = testbed
            .network(self.network)
            .map_err(|e| anyhow::anyhow!("testbed.network: {e}"))?;
        if let Some(v) = self.obs_error_variance {
            let sigma = v.sqrt();
            for s in net.stations.iter_mut().filter(|s| !s.withheld) {
                for (_, sg) in s.vars.iter_mut() {
                    *sg = sigma;
                }
            }
            if let Some(sat) = net.satellite.as_mut() {
                sat.sigma = sigma;
            }
        }
        Ok(net)
    }
}

/// `[enkf]` and `[etkf]`: the global EnKFs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GlobalEnkfSettings {
    /// Multiplicative prior inflation ρ (1 = none).
    pub inflation: f64,
    /// Relaxation to prior spread α (Whitaker & Hamill 2012; 0 = none).
    pub rtps: f64,
}

impl Default for GlobalEnkfSettings {
    fn default() -> Self {
        GlobalEnkfSettings {
            inflation: 1.0,
            rtps: 0.0,
        }
    }
}

/// `[letkf]`: the LETKF, which the daemon always runs, and which starts a latent score bundle's
/// members.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LetkfSettings {
    /// Multiplicative prior inflation ρ (1 = none).
    pub inflation: f64,
    /// RTPS α (0 = none).
    pub rtps: f64,
    /// Gaspari–Cohn half-width in km (observations beyond twice it are ignored).
    pub localization_km: f64,
    /// Weights computed every `weight_stride` grid points and interpolated (1 = exact).
    pub weight_stride: usize,
    /// Adaptive prior inflation at each grid point, on top of `inflation`: `off` or `enkf-n`
    /// (the finite-size EnKF-N, [`assimd_filter::enkf::Adaptive`]).
    pub adaptive: AdaptiveName,
    /// The EnKF-N's hyperprior confidence ξ_N (1 = agnostic; only with `adaptive = "enkf-n"`).
    pub adaptive_xn: f64,
}

impl Default for LetkfSettings {
    fn default() -> Self {
        LetkfSettings {
            inflation: 1.0,
            rtps: 0.0,
            localization_km: f64::INFINITY,
            weight_stride: 1,
            adaptive: AdaptiveName::Off,
            adaptive_xn: 1.0,
        }
    }
}

impl LetkfSettings {
    /// The adaptive inflation these settings choose.
    pub fn adaptive(&self) -> assimd_filter::enkf::Adaptive {
        match self.adaptive {
            AdaptiveName::Off => assimd_filter::enkf::Adaptive::Off,
            AdaptiveName::EnkfN => assimd_filter::enkf::Adaptive::FiniteSize {
                xn: self.adaptive_xn,
            },
        }
    }
}

/// Adaptive inflation of the LETKF, by name (`[letkf] adaptive`, `--adaptive`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum AdaptiveName {
    /// Fixed inflation and RTPS only.
    #[serde(rename = "off")]
    #[value(name = "off")]
    Off,
    /// The finite-size EnKF-N (Bocquet 2011), estimated at every grid point.
    #[serde(rename = "enkf-n")]
    #[value(name = "enkf-n")]
    EnkfN,
}

impl fmt::Display for AdaptiveName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdaptiveName::Off => "off",
            AdaptiveName::EnkfN => "enkf-n",
        })
    }
}

/// Where each member's reverse diffusion starts ([`Start`]), by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StartName {
    /// The member's own background.
    Member,
    /// The background mean.
    Mean,
    /// The member's perturbed-observation Kalman update under the prior's covariance.
    Analysis,
    /// The square-root (Whitaker–Hamill) update under the prior's covariance.
    Sqrt,
    /// The `[letkf]` analysis of the background, whatever the prior (learned or analytic).
    Letkf,
}

impl From<StartName> for Start {
    fn from(s: StartName) -> Start {
        match s {
            StartName::Member => Start::Member,
            StartName::Mean => Start::Mean,
            StartName::Analysis => Start::Analysis,
            StartName::Sqrt => Start::SquareRoot,
            StartName::Letkf => Start::Baseline,
        }
    }
}

/// `[score.sampler]`: the guided reverse diffusion ([`SamplerConfig`] and the start).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerSettings {
    /// Noise levels S.
    pub steps: usize,
    /// Langevin corrections per level C.
    pub corrections: usize,
    /// Langevin step factor τ.
    pub tau: f64,
    /// Guidance variance factor γ.
    pub gamma: f64,
    /// Initial noise level σ_start.
    pub sigma_start: f64,
    /// Final noise level σ_min.
    pub sigma_min: f64,
    /// Latent-optimisation steps after sampling (LO-SDA; 0 = off).
    pub lo_steps: usize,
    /// Latent bundles: add σ² G Gᵀ (G = H ∂x̂₀/∂z) to the guidance's likelihood covariance (false
    /// is SDA's R + γσ²I).
    pub jacobian_cov: bool,
    /// Guidance with the prior's own posterior covariance σ² ∂D/∂z at every level (Tweedie;
    /// pixel-space bundles), instead of a Gaussian's or SDA's R + γσ²I.
    pub tweedie: bool,
    /// Where each member's diffusion starts.
    pub start: StartName,
    /// When > 0, σ_start is this factor times the background spread (RMS of the members' standard
    /// deviations) at each analysis, instead of `sigma_start` (0 = the fixed `sigma_start`).
    pub sigma_start_spread: f64,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        let c = SamplerConfig::default();
        SamplerSettings {
            steps: c.steps,
            corrections: c.corrections,
            tau: c.tau,
            gamma: c.gamma,
            sigma_start: c.sigma_start,
            sigma_min: c.sigma_min,
            lo_steps: c.lo_steps,
            jacobian_cov: c.jacobian_cov,
            tweedie: c.tweedie,
            start: StartName::Member,
            sigma_start_spread: 0.0,
        }
    }
}

impl SamplerSettings {
    /// The sampler's configuration.
    pub fn config(&self) -> SamplerConfig {
        SamplerConfig {
            steps: self.steps,
            corrections: self.corrections,
            tau: self.tau,
            gamma: self.gamma,
            sigma_start: self.sigma_start,
            sigma_min: self.sigma_min,
            lo_steps: self.lo_steps,
            jacobian_cov: self.jacobian_cov,
            tweedie: self.tweedie,
            ..SamplerConfig::default()
        }
    }
}

/// `[score]`: the score-based filter.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreSettings {
    /// The model bundle directory; [`crate::filters::ENSEMBLE_GAUSSIAN`] selects the analytic
    /// localised-ensemble Gaussian prior. The daemon runs the score filter only when it is set.
    pub bundle: Option<PathBuf>,
    /// RTPS α after sampling (the LETKF that starts a latent bundle's members keeps `letkf.rtps`).
    pub rtps: f64,
    /// ONNX Runtime execution provider: `cpu` or `cuda` (falls back to the CPU).
    pub device: Device,
    /// Intra-op threads per ONNX Runtime session (0 = all cores).
    pub threads: usize,
    /// Localisation half-width (km) of the localised ensemble Gaussian the members start from
    /// (and the denoiser's skip connection), overriding the bundle's
    /// `[conditioning.ensemble_gaussian] half_width_km`; for `ensemble-gaussian`, default
    /// `letkf.localization_km`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prior_localization_km: Option<f64>,
    /// Its multiplicative inflation, overriding the bundle's `inflation`; for
    /// `ensemble-gaussian`, default `letkf.inflation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prior_inflation: Option<f64>,
    /// The guided sampler.
    pub sampler: SamplerSettings,
}

impl Default for ScoreSettings {
    fn default() -> Self {
        ScoreSettings {
            bundle: None,
            rtps: 0.0,
            device: Device::Cpu,
            threads: 1,
            prior_localization_km: None,
            prior_inflation: None,
            sampler: SamplerSettings::default(),
        }
    }
}

/// The settings of every filter family.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterSettings {
    /// Stochastic EnKF.
    pub enkf: GlobalEnkfSettings,
    /// Global ETKF.
    pub etkf: GlobalEnkfSettings,
    /// LETKF.
    pub letkf: LetkfSettings,
    /// Score-based filter.
    pub score: ScoreSettings,
}

/// The table names of [`FilterSettings`] (top-level tables of experiment files and the config).
pub const FILTER_TABLES: [&str; 4] = ["enkf", "etkf", "letkf", "score"];

impl FilterSettings {
    /// The checks every entry point applies before building (the factory checks the bundle).
    pub fn validate(&self) -> Result<()> {
        for (name, g) in [("enkf", &self.enkf), ("etkf", &self.etkf)] {
            check_inflation(name, g.inflation, g.rtps)?;
        }
        let l = &self.letkf;
        check_inflation("letkf", l.inflation, l.rtps)?;
        if l.localization_km.is_nan() || l.localization_km <= 0.0 {
            bail!(
                "letkf.localization_km must be > 0 (inf = no localisation), got {}",
                l.localization_km
            );
        }
        if l.weight_stride == 0 {
            bail!("letkf.weight_stride must be >= 1 (1 = exact)");
        }
        if !(l.adaptive_xn.is_finite() && l.adaptive_xn > 0.0) {
            bail!(
                "letkf.adaptive_xn must be > 0 (1 = agnostic, 2-3 with localisation), got {}",
                l.adaptive_xn
            );
        }
        let s = &self.score;
        if let Some(v) = s.prior_localization_km {
            if v.is_nan() || v <= 0.0 {
                bail!("score.prior_localization_km must be > 0 km (inf = none), got {v}");
            }
        }
        if let Some(v) = s.prior_inflation {
            if !(v.is_finite() && v >= 1.0) {
                bail!("score.prior_inflation must be >= 1.0 (1.0 = none), got {v}");
            }
        }
        assimd_filter::enkf::Inflation::new(1.0, s.rtps)
            .map_err(|e| anyhow::anyhow!("score.rtps: {e}"))?;
        assimd_filter::score::Sampler::new(s.sampler.config())
            .map_err(|e| anyhow::anyhow!("score.sampler: {e}"))?;
        let f = s.sampler.sigma_start_spread;
        if !(f.is_finite() && f >= 0.0) {
            bail!("score.sampler.sigma_start_spread must be >= 0 (0 = the fixed sigma_start; about 1 for a diffusion on the background's scale), got {f}");
        }
        if let Some(b) = &s.bundle {
            if b.as_os_str() != crate::filters::ENSEMBLE_GAUSSIAN
                && !b.join("manifest.toml").is_file()
            {
                bail!("score.bundle = {}: no manifest.toml there; point it at a bundle directory such as models/zoo/l96 (or \"{}\" for the analytic Gaussian prior)", b.display(), crate::filters::ENSEMBLE_GAUSSIAN);
            }
        }
        Ok(())
    }
}

fn check_inflation(table: &str, inflation: f64, rtps: f64) -> Result<()> {
    if inflation.is_nan() || inflation < 1.0 {
        bail!("{table}.inflation must be >= 1.0 (1.0 = none, 1.01-1.1 typical), got {inflation}");
    }
    assimd_filter::enkf::Inflation::new(inflation, rtps)
        .map_err(|e| anyhow::anyhow!("{table}: {e}"))?;
    Ok(())
}

/// Write `over` into `base`: a later layer wins key by key, tables merge recursively.
pub fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The tuned layer for a testbed and network: its testbed's table of `configs/tuned.toml`
/// (without the network tables), then its network's table. Keys: `members` and the
/// [`FILTER_TABLES`].
pub fn tuned(testbed: TestbedKind, network: NetworkKind) -> Table {
    let all: Table = TUNED.parse().expect("configs/tuned.toml parses (tested)");
    let Some(Value::Table(mut tb)) = all.get(&testbed.to_string()).cloned() else {
        return Table::new();
    };
    let net = tb.remove(&network.to_string());
    tb.retain(|k, _| k == "members" || is_filter_table(k));
    if let Some(Value::Table(net)) = net {
        merge(&mut tb, net);
    }
    tb
}

fn is_filter_table(k: &str) -> bool {
    FILTER_TABLES.contains(&k)
}

/// Turn a merged table into a value, naming where the table came from in the error.
pub fn from_table<T: serde::de::DeserializeOwned>(t: Table, what: &str) -> Result<T> {
    Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{what}: {}", e.message()))
}

/// The `[testbed]` of a table (name and network), parsed, for choosing the tuned layer.
/// `required` names the flags to give when a key is missing; `None` takes the defaults.
pub fn testbed_of(t: &Table, required: Option<&str>) -> Result<TestbedSettings> {
    let tb = match t.get("testbed") {
        None => Table::new(),
        Some(Value::Table(tb)) => tb.clone(),
        Some(v) => bail!("testbed = {v} is a table since the settings were unified: write [testbed] with name = {v} (and network = \"...\", which moved there too)"),
    };
    if let Some(flags) = required {
        for key in ["name", "network"] {
            if !tb.contains_key(key) {
                bail!("testbed.{key} is required: give {flags}");
            }
        }
    }
    let mut s = TestbedSettings::default();
    for (key, v) in tb {
        let text = v.as_str().map(str::to_string);
        match (key.as_str(), text) {
            ("name", Some(t)) => {
                s.name = t
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("testbed.name: {e}"))?
            }
            ("network", Some(t)) => {
                s.network = t
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("testbed.network: {e}"))?
            }
            ("name" | "network", None) => bail!("testbed.{key} must be a string, got {v}"),
            // Read with the rest of the file; they do not choose the tuned layer.
            ("steps_per_cycle" | "obs_error_variance" | "resolution", _) => {}
            _ => bail!("unknown key testbed.{key}: [testbed] takes name, network, steps_per_cycle, obs_error_variance and resolution"),
        }
    }
    s.testbed()?;
    Ok(s)
}

/// Keys that were renamed when the settings were unified, and where they went.
const MOVED: [(&str, &str); 8] = [
    ("network", "[testbed] network"),
    (
        "inflation",
        "[letkf] inflation (or [enkf]/[etkf] for those filters)",
    ),
    (
        "rtps",
        "[letkf] rtps (or [enkf]/[etkf]; for the score filter's RTPS after sampling [score] rtps)",
    ),
    ("score_rtps", "[score] rtps"),
    ("localization_km", "[letkf] localization_km"),
    ("weight_stride", "[letkf] weight_stride"),
    ("bundle", "[score] bundle"),
    ("sampler", "[score.sampler]"),
];

/// Fail with the new name of a key that moved.
pub fn reject_moved_keys(t: &Table, origin: &str) -> Result<()> {
    for (old, new) in MOVED {
        if t.contains_key(old) {
            bail!("{origin}: the top-level key `{old}` moved to {new}");
        }
    }
    Ok(())
}

/// Parse a TOML document into a table, naming its origin.
pub fn parse_table(text: &str, origin: &str) -> Result<Table> {
    text.parse::<Table>()
        .with_context(|| format!("parsing {origin}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETWORKS: [NetworkKind; 5] = [
        NetworkKind::Full,
        NetworkKind::Sparse,
        NetworkKind::Stations,
        NetworkKind::Satellite,
        NetworkKind::StationsSatellite,
    ];

    #[test]
    fn the_tuned_table_parses_and_every_entry_is_valid() {
        let all: Table = TUNED.parse().unwrap();
        for tb in [TestbedKind::L96, TestbedKind::Qg2l] {
            assert!(all.contains_key(&tb.to_string()), "{tb} missing");
            for net in NETWORKS {
                if Testbed::new(tb).network(net).is_err() {
                    continue;
                }
                let t = tuned(tb, net);
                assert!(t.contains_key("members"), "{tb} {net}: members");
                let mut t2 = t.clone();
                t2.remove("members");
                let s: FilterSettings = from_table(t2, "tuned").unwrap();
                s.validate().unwrap();
                assert!(
                    s.letkf.localization_km.is_finite(),
                    "{tb} {net}: untuned LETKF"
                );
            }
        }
        // Only testbeds, their networks and the known keys.
        for (tb, v) in &all {
            let tk: TestbedKind = tb.parse().unwrap();
            for (k, _) in v.as_table().unwrap() {
                let known = k == "members" || is_filter_table(k);
                let net = k
                    .parse::<NetworkKind>()
                    .is_ok_and(|n| Testbed::new(tk).network(n).is_ok());
                assert!(known || net, "unknown key [{tb}] {k}");
            }
        }
    }

    #[test]
    fn merge_is_key_by_key_and_recursive() {
        let mut a: Table = "x = 1\n[t]\na = 1\nb = 2\n".parse().unwrap();
        let b: Table = "y = 3\n[t]\nb = 5\n".parse().unwrap();
        merge(&mut a, b);
        assert_eq!(
            a,
            "x = 1\ny = 3\n[t]\na = 1\nb = 5\n"
                .parse::<Table>()
                .unwrap()
        );
    }

    #[test]
    fn network_layer_overrides_the_testbed_layer() {
        let all: Table = TUNED.parse().unwrap();
        let l96 = all["l96"].as_table().unwrap();
        let full = tuned(TestbedKind::L96, NetworkKind::Full);
        assert_eq!(
            full["letkf"]["localization_km"],
            l96["full"]["letkf"]["localization_km"]
        );
        assert_eq!(full["members"], l96["members"]);
    }

    #[test]
    fn adaptive_and_testbed_options_parse_and_bad_values_name_the_fix() {
        let f: FilterSettings = from_table(
            "[letkf]\nadaptive = \"enkf-n\"\nadaptive_xn = 2.0\n"
                .parse()
                .unwrap(),
            "t",
        )
        .unwrap();
        assert_eq!(
            f.letkf.adaptive(),
            assimd_filter::enkf::Adaptive::FiniteSize { xn: 2.0 }
        );
        let e = from_table::<FilterSettings>(
            "[letkf]\nadaptive = \"anderson\"\n".parse().unwrap(),
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("off") && e.contains("enkf-n"), "{e}");
        let mut bad = FilterSettings::default();
        bad.letkf.adaptive_xn = 0.0;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("adaptive_xn must be > 0"));
        // steps_per_cycle scales the cycle; obs_error_variance every assimilated σ, not the withheld.
        let tb = TestbedSettings {
            network: NetworkKind::Sparse,
            steps_per_cycle: Some(8),
            obs_error_variance: Some(0.5),
            ..Default::default()
        };
        let t = tb.testbed().unwrap();
        let base = Testbed::new(TestbedKind::L96);
        assert_eq!(
            t.dynamics.cycle_seconds(),
            8.0 * base.dynamics.cycle_seconds()
        );
        let net = tb.network(&t).unwrap();
        for s in &net.stations {
            let want = if s.withheld { 1.0 } else { 0.5f64.sqrt() };
            assert!(
                s.vars.iter().all(|(_, sg)| (sg - want).abs() < 1e-15),
                "{}",
                s.id
            );
        }
        let qg = TestbedSettings {
            name: TestbedKind::Qg2l,
            network: NetworkKind::Stations,
            obs_error_variance: Some(0.5),
            ..Default::default()
        };
        let e = qg.testbed().err().expect("qg2l has no obs_error_variance");
        assert!(e.to_string().contains("l96 only"), "{e}");
    }

    #[test]
    fn moved_keys_name_their_new_place() {
        let t: Table = "localization_km = 100.0\n".parse().unwrap();
        let e = reject_moved_keys(&t, "f").unwrap_err().to_string();
        assert!(e.contains("[letkf] localization_km"), "{e}");
        let t: Table = "testbed = \"l96\"\n".parse().unwrap();
        let e = testbed_of(&t, None).unwrap_err().to_string();
        assert!(e.contains("[testbed]"), "{e}");
    }

    #[test]
    fn filter_names_round_trip_and_errors_list_them_all() {
        for k in FilterKind::ALL {
            assert_eq!(k.name().parse::<FilterKind>().unwrap(), k);
        }
        let e = "kalman".parse::<FilterKind>().unwrap_err();
        for k in FilterKind::ALL {
            assert!(e.contains(k.name()), "{e}");
        }
    }
}
