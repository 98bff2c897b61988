//! # Offline cycled OSSE (`assimd experiment`)
//!
//! A truth run of the testbed, its network's observations every cycle (the simulator's messages,
//! decoded and validated exactly as the daemon does), and one filter cycling on them:
//! forecast every member with the dynamics, analyse, score against the truth. Scores are the time
//! means, after a burn-in, of the per-cycle RMSE of the ensemble mean (analysis `rmse_a`,
//! background `rmse_f`), the spread, and the CRPS, all from [`assimd_filter::stats`].
//!
//! Reference methods that need no filter:
//! - `free`: the initial ensemble (climatological draws) forecast without assimilation;
//! - `climatology`: analysis = the climatological mean, spread = the climatological standard
//!   deviation; its CRPS is that of the Gaussian N(mean, std²).
//!
//! and the EnKF family of [`assimd_filter::enkf`] (`enkf`, `etkf`, `letkf`). The initial ensemble
//! is N climatological draws independent of the truth. Tuned settings live in
//! `configs/experiments/*.toml`, named after the experiment, with the skill they are expected to reach.
//! Several seeds, intervals and paired comparisons of two experiments on the same truths and
//! observations are [`crate::paired`]'s (`--seeds`, `--compare`).

use crate::faults::{FaultInjector, Faults, Injected, StationBias};
use crate::qc::{self, Qc, QcCounts, QcSettings};
pub use crate::settings::FilterKind;
use crate::settings::{self, FilterSettings, TestbedSettings};
use crate::simulate::Simulator;
use crate::wire;
use anyhow::{bail, Context, Result};
use assimd_filter::obs::{ObsBatch, Observation};
use assimd_filter::{stats, Ensemble};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// An experiment file (`configs/experiments/*.toml`) after layering: every experiment-level key
/// optional, the filter tables complete. Read with [`ExperimentFile::load`] or
/// [`ExperimentFile::resolve`] (the layers of [`crate::settings`]: built-in defaults, the tuned
/// table of its testbed and network, the file, the flags).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentFile {
    /// What the experiment reproduces (free text).
    pub description: Option<String>,
    /// `[testbed]`: name and network.
    pub testbed: TestbedSettings,
    /// Filter.
    pub filter: Option<FilterKind>,
    /// Ensemble size (default: the tuned table's `members` for the testbed).
    pub members: Option<usize>,
    /// Cycles.
    pub cycles: Option<usize>,
    /// Seed.
    pub seed: Option<u64>,
    /// Burn-in cycles.
    pub burn_in: Option<usize>,
    /// Start from the truth plus noise of this standard deviation instead of climatological draws.
    pub initial_spread: Option<f64>,
    /// `[enkf]`.
    pub enkf: crate::settings::GlobalEnkfSettings,
    /// `[etkf]`.
    pub etkf: crate::settings::GlobalEnkfSettings,
    /// `[letkf]`.
    pub letkf: crate::settings::LetkfSettings,
    /// `[score]` and `[score.sampler]`.
    pub score: crate::settings::ScoreSettings,
    /// Quality control (`[qc]`, the daemon's keys; default: on with the daemon's defaults).
    pub qc: Option<QcSettings>,
    /// Share of observations replaced by gross errors ([`crate::faults`]).
    pub gross_errors: Option<f64>,
    /// A drifting station, `STATION:SIGMAS:FROM_CYCLE`.
    pub bias: Option<String>,
    /// Wreck the analysis at this cycle: one station value of −9999 that bypasses every check is
    /// assimilated (what one unchecked −9999 report did before QC): tests the divergence guard.
    pub corrupt_at: Option<usize>,
    /// The skill this configuration is expected to reach.
    pub expected: Option<Expected>,
}

/// Expected skill recorded with a tuned configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Expected {
    /// Time-mean analysis RMSE measured with this file.
    pub rmse_a: f64,
    /// Spread/skill ratio measured with this file.
    pub spread_skill: f64,
    /// The acceptance bound on `rmse_a` (from the issue or the literature); tests hold the
    /// files to it.
    pub max_rmse_a: f64,
    /// Published value it is compared with.
    pub reference: String,
    /// The run `tests/tuned_skill.rs` repeats when the file's own is too slow for CI: this many
    /// cycles, with `short_burn_in` (default: the file's), expected to reach `short_rmse_a`.
    pub short_cycles: Option<usize>,
    /// Burn-in of the short run.
    pub short_burn_in: Option<usize>,
    /// Time-mean analysis RMSE of the short run.
    pub short_rmse_a: Option<f64>,
}

/// The flags `ExperimentFile::resolve` writes over the file: keys in the file's layout.
pub type Flags = toml::Table;

impl ExperimentFile {
    /// Layer the built-in defaults, the tuned table of the testbed and network, `file` (a parsed
    /// experiment file, or empty) and `flags`, and read the result. `origin` names the file in
    /// errors.
    pub fn resolve(file: toml::Table, flags: Flags, origin: &str) -> Result<Self> {
        settings::reject_moved_keys(&file, origin)?;
        let mut user = file;
        settings::merge(&mut user, flags);
        let tb = settings::testbed_of(
            &user,
            Some("--testbed and --network (or [testbed] name and network in --config)"),
        )
        .with_context(|| origin.to_string())?;
        let mut layered = settings::tuned(tb.name, tb.network);
        settings::merge(&mut layered, user);
        settings::from_table(layered, origin)
    }

    /// Read an experiment file (layered as [`ExperimentFile::resolve`] with no flags).
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading experiment file {}", path.display()))?;
        let origin = format!("experiment file {}", path.display());
        Self::resolve(
            settings::parse_table(&text, &origin)?,
            Flags::new(),
            &origin,
        )
    }

    /// The filter settings of the file.
    pub fn filters(&self) -> FilterSettings {
        FilterSettings {
            enkf: self.enkf.clone(),
            etkf: self.etkf.clone(),
            letkf: self.letkf.clone(),
            score: self.score.clone(),
        }
    }

    /// The spec this file describes.
    pub fn spec(&self) -> Result<ExperimentSpec> {
        let filter = self
            .filter
            .context("filter is required: give --filter or filter = \"...\" in --config")?;
        let mut spec = ExperimentSpec::new(self.testbed.clone(), filter, self.filters());
        spec.members = self.members.unwrap_or(spec.members);
        spec.cycles = self.cycles.unwrap_or(spec.cycles);
        spec.seed = self.seed.unwrap_or(spec.seed);
        spec.burn_in = self.burn_in;
        spec.initial_spread = self.initial_spread;
        if filter == FilterKind::Score && spec.filters.score.bundle.is_none() {
            // The committed bundle of the testbed, when run from the repository.
            let zoo = std::path::PathBuf::from(format!("models/zoo/{}", self.testbed.name));
            if zoo.join("manifest.toml").is_file() {
                spec.filters.score.bundle = Some(zoo);
            }
        }
        spec.filters.validate()?;
        if let Some(q) = &self.qc {
            q.validate()?;
            spec.qc = q.clone();
        }
        spec.faults.gross_errors = self.gross_errors.unwrap_or(0.0);
        spec.faults.bias = self
            .bias
            .as_deref()
            .map(str::parse::<StationBias>)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        spec.faults.validate()?;
        spec.corrupt_at = self.corrupt_at;
        Ok(spec)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ExperimentSpec {
    /// Testbed and network.
    pub testbed: TestbedSettings,
    /// Filter.
    pub filter: FilterKind,
    /// The settings of every filter family ([`crate::filters::build_filter`] uses `filter`'s).
    pub filters: FilterSettings,
    /// Ensemble size N.
    pub members: usize,
    /// Number of cycles K.
    pub cycles: usize,
    /// Seed of the truth, the observation errors and the initial ensemble.
    pub seed: u64,
    /// Cycles left out of the time means; `None` = K/10.
    pub burn_in: Option<usize>,
    /// `None`: the initial ensemble is N climatological draws independent of the truth (the
    /// honest start, and the daemon's). `Some(σ0)`: truth + σ0·N(0, I), the start of the published
    /// Lorenz-96 benchmarks (Sakov & Oke 2008; DAPPER), which global filters need to avoid
    /// collapsing on their first analysis.
    pub initial_spread: Option<f64>,
    /// Record training triples (truth, background mean, spread[, members]) into this directory.
    pub record: Option<RecordSpec>,
    /// Quality control of every cycle's observations, as in the daemon.
    pub qc: QcSettings,
    /// Bad observations injected into the simulated network.
    pub faults: Faults,
    /// Wreck the analysis of this cycle (see [`ExperimentFile::corrupt_at`]).
    pub corrupt_at: Option<usize>,
}

/// What to record for training (see [`crate::record`]).
#[derive(Clone, Debug)]
pub struct RecordSpec {
    /// Output directory.
    pub dir: std::path::PathBuf,
    /// Record every this many cycles after burn-in.
    pub every: usize,
    /// Also record the background members.
    pub members: bool,
}

impl ExperimentSpec {
    /// Defaults for everything but what must be chosen.
    pub fn new(testbed: TestbedSettings, filter: FilterKind, filters: FilterSettings) -> Self {
        ExperimentSpec {
            testbed,
            filter,
            filters,
            members: 20,
            cycles: 1000,
            seed: 1,
            burn_in: None,
            initial_spread: None,
            record: None,
            qc: QcSettings::default(),
            faults: Faults::default(),
            corrupt_at: None,
        }
    }
}

/// The JSON summary of DESIGN §10 (time means after burn-in, against the truth).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Testbed name.
    pub testbed: String,
    /// Filter name.
    pub filter: String,
    /// Network name.
    pub network: String,
    /// Ensemble size.
    pub members: usize,
    /// Cycles run.
    pub cycles: usize,
    /// Seed.
    pub seed: u64,
    /// Time-mean analysis RMSE of the ensemble mean.
    pub rmse_a: f64,
    /// Time-mean background (forecast) RMSE.
    pub rmse_f: f64,
    /// Time-mean analysis spread.
    pub spread_a: f64,
    /// spread_a / rmse_a.
    pub spread_skill: f64,
    /// Time-mean analysis CRPS.
    pub crps_a: f64,
    /// Wall-clock seconds per cycle (forecast + observations + analysis + scoring).
    pub seconds_per_cycle: f64,
    /// Of which the ensemble forecast (the truth's forecast not included).
    pub seconds_forecast: f64,
    /// Of which the analysis (the filter's update alone).
    pub seconds_analysis: f64,
    /// Of which quality control (divergence guard, background check, station monitor).
    pub seconds_qc: f64,
    /// Peak resident memory of the process (VmHWM) at the end of the run, in MiB (0 where
    /// /proc is not there).
    pub peak_rss_mib: f64,
    /// Time-mean RMSE of the analysis mean against the withheld verification stations' reports.
    pub rmse_withheld_a: f64,
    /// Burn-in cycles excluded from the means.
    pub burn_in: usize,
    /// Quality control: observations screened, accepted, rejected per modality and reason, summed
    /// over all cycles (burn-in included).
    pub qc: QcCounts,
    /// Messages rejected at ingest (wire validation), by reason.
    pub rejected_ingest: BTreeMap<String, u64>,
    /// What the fault injection put in.
    pub injected: Injected,
    /// Cycles the divergence guard flagged (the filter rolled back or restarted).
    pub divergences: Vec<usize>,
    /// Cycles whose analysis was not finite and was discarded for the background (with QC on;
    /// with QC off such a run stops with an error).
    pub failed_analyses: Vec<usize>,
    /// Stations the monitor blacklisted: (cycle, station); and taken back: (cycle, -station).
    pub blacklistings: Vec<(usize, String)>,
    /// Replays after a blacklisting (`qc.replay_cycles`): (cycle, the analysis cycle re-run from).
    pub replays: Vec<(usize, u64)>,
}

/// The process's peak resident set size in MiB (`VmHWM` in /proc/self/status; 0 elsewhere).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One cycle's scores, as [`Summary`] averages them (against the truth; `rmse_withheld_a`
/// against the withheld stations).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CycleScores {
    /// Analysis RMSE.
    pub rmse_a: f64,
    /// Background RMSE.
    pub rmse_f: f64,
    /// Analysis spread.
    pub spread_a: f64,
    /// Analysis CRPS.
    pub crps_a: f64,
    /// Analysis RMSE against the withheld stations.
    pub rmse_withheld_a: f64,
}

/// Run one experiment.
pub fn run(spec: &ExperimentSpec) -> Result<Summary> {
    run_with(spec, &mut |_, _| {})
}

/// As [`run`], calling `on_cycle(k, scores)` after every cycle k (scores `None` during burn-in):
/// progress bars and per-cycle histories hook in here.
pub fn run_with(
    spec: &ExperimentSpec,
    on_cycle: &mut dyn FnMut(usize, Option<&CycleScores>),
) -> Result<Summary> {
    if spec.members == 0 {
        bail!("--members must be at least 1");
    }
    if spec.cycles == 0 {
        bail!("--cycles must be at least 1");
    }
    let burn_in = spec.burn_in.unwrap_or(spec.cycles / 10);
    if burn_in >= spec.cycles {
        bail!(
            "--burn-in {burn_in} leaves no cycle to score out of {}",
            spec.cycles
        );
    }
    let testbed = spec.testbed.testbed()?;
    let network = spec.testbed.network(&testbed)?;
    // Before the truth and the ensemble (which take a while on large grids): a bad bundle fails at once.
    let analysis =
        crate::filters::build_filter(spec.filter, &spec.filters, &testbed)?.map(|b| b.analysis);
    let space = testbed.space.clone();
    let np = space.geometry.n_points();
    let clim = testbed.climatology();
    let (clim_mean, clim_std) = (clim.mean_state(np), clim.std_state(np));
    let dynamics = testbed.dynamics.clone();
    let mut sim = Simulator::new(testbed.clone(), network, spec.seed);
    let mut ens = match spec.initial_spread {
        // Climatology carries no ensemble: a single placeholder member that is never forecast.
        _ if spec.filter == FilterKind::Climatology => {
            Ensemble::from_members(vec![clim_mean.clone()])?
        }
        None => Ensemble::from_members(testbed.climatological_draws(spec.members, spec.seed))?,
        Some(s0) => {
            if !(s0.is_finite() && s0 >= 0.0) {
                bail!("initial_spread must be a finite number >= 0, got {s0}");
            }
            let mut r = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x696e_6974);
            let members = (0..spec.members)
                .map(|_| {
                    sim.truth()
                        .iter()
                        .map(|t| {
                            t + s0
                                * <StandardNormal as Distribution<f64>>::sample(
                                    &StandardNormal,
                                    &mut r,
                                )
                        })
                        .collect()
                })
                .collect();
            Ensemble::from_members(members)?
        }
    };
    let checks = wire::Checks::defaults(&space);
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ 0x616e_616c);
    let assimilated_ids: Vec<String> = sim
        .network
        .stations
        .iter()
        .filter(|s| !s.withheld)
        .map(|s| s.id.clone())
        .collect();
    let mut injector = FaultInjector::new(spec.faults.clone(), spec.seed, &assimilated_ids);
    let (mut qc, _) = Qc::new(spec.qc.clone(), Default::default());
    qc.climatology = Some((clim.mean.clone(), clim.std.clone()));
    let mut qc_total = QcCounts::default();
    // The divergence guard's rollback point: (cycle, analysis ensemble).
    let (mut previous, mut last_good): (Option<Ensemble>, Option<(u64, Ensemble)>) = (None, None);
    // The last analyses, for a replay without a newly blacklisted station (`qc.replay_cycles`).
    let mut analyses: std::collections::VecDeque<(u64, Ensemble)> = Default::default();
    let mut replays = Vec::new();
    let mut rejected_ingest: BTreeMap<String, u64> = BTreeMap::new();
    let (mut divergences, mut blacklistings, mut failed) = (Vec::new(), Vec::new(), Vec::new());

    let mut recorder = match &spec.record {
        Some(r) => {
            let (inflation, rtps) = match spec.filter {
                FilterKind::Enkf => (spec.filters.enkf.inflation, spec.filters.enkf.rtps),
                FilterKind::Etkf => (spec.filters.etkf.inflation, spec.filters.etkf.rtps),
                _ => (spec.filters.letkf.inflation, spec.filters.letkf.rtps),
            };
            let meta = serde_json::json!({
                "testbed": spec.testbed.name.to_string(), "network": spec.testbed.network.to_string(), "filter": spec.filter.to_string(),
                "seed": spec.seed, "members": spec.members, "cycles": spec.cycles, "burn_in": burn_in, "every": r.every,
                "inflation": inflation, "rtps": rtps, "localization_km": spec.filters.letkf.localization_km,
                "fields": space.fields, "n_points": np, "grid": match space.geometry {
                    assimd_filter::Geometry::Ring { n, .. } => vec![n],
                    assimd_filter::Geometry::PeriodicBox { nx, ny, .. } => vec![ny, nx],
                },
            });
            Some(crate::record::Recorder::create(
                &r.dir,
                space.dim(),
                spec.members,
                r.members,
                r.every,
                meta,
            )?)
        }
        None => None,
    };
    let mut acc = Accumulator::default();
    let start = Instant::now();
    let (mut t_forecast, mut t_analysis, mut t_qc) = (0.0, 0.0, 0.0);
    let secs = |t: Instant| t.elapsed().as_secs_f64();
    for k in 1..=spec.cycles {
        sim.step();
        if analysis.is_some() && spec.qc.enabled {
            previous = Some(ens.clone());
        }
        if spec.filter != FilterKind::Climatology {
            let t = Instant::now();
            forecast(&*dynamics, &mut ens);
            t_forecast += secs(t);
        }
        let mut messages = sim.messages();
        injector.apply(k as u64, &mut messages);
        let decoded = decode_cycle(
            &messages,
            &space,
            &checks,
            &mut rejected_ingest,
            spec.faults.any(),
        )?;
        let (obs, origins, verif) = qc::gather(
            decoded
                .iter()
                .map(|(id, st, o)| (id.as_str(), st.as_deref(), o.as_slice())),
            &|s| withheld(&sim, s),
        );
        let all = ObsBatch::new(&space, obs).context("building the observation operator")?;
        let verif = ObsBatch::new(&space, verif).context("building the verification operator")?;
        let truth = sim.truth();
        let scored = k > burn_in;
        if let Some(r) = &mut recorder {
            if scored && (k - burn_in).is_multiple_of(r.every) {
                r.push(truth, &ens)?;
            }
        }
        match spec.filter {
            _ if analysis.is_some() => {
                let rmse_f = stats::rmse(&ens.mean(), truth);
                let t = Instant::now();
                if qc.diverged(&ens, &all, &origins).is_some() {
                    divergences.push(k);
                    let (e, _how) = qc.recover(
                        k as u64,
                        last_good.take(),
                        &|e| forecast(&*dynamics, e),
                        &all,
                        &origins,
                        || {
                            Ok(Ensemble::from_members(testbed.climatological_draws(
                                spec.members,
                                spec.seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                            ))?)
                        },
                    )?;
                    ens = e;
                } else if let Some(a) = previous.take() {
                    // The analysis of cycle k − 1 forecast to a sound background: a rollback point.
                    last_good = Some((k as u64 - 1, a));
                }
                let screened = qc.screen(k as u64, &space, &all, &origins, &ens)?;
                t_qc += secs(t);
                qc_total.add(&screened.counts);
                for s in &screened.newly_blacklisted {
                    blacklistings.push((k, s.clone()));
                    if let Some(st) = qc.state.stations.get(s) {
                        tracing::info!(cycle = k, station = %s, reason = st.blacklisted.as_ref().map_or("", |b| b.reason.as_str()), mean_z = st.mean_z, std_z = st.std_z(), reject_rate = st.reject_rate, "blacklisted");
                    }
                }
                blacklistings.extend(screened.rehabilitated.iter().map(|s| (k, format!("-{s}"))));
                let mut batch = screened.batch;
                if let (Some(r), Some(a)) = (screened.replay, &analysis) {
                    if let Some((_, from)) = analyses.iter().find(|(c, _)| *c == r.from) {
                        ens = replay(from.clone(), &r.batches, &*dynamics, &**a, &mut rng)?;
                        forecast(&*dynamics, &mut ens);
                        replays.push((k, r.from));
                    }
                }
                if let (true, Some(o)) = (
                    spec.corrupt_at == Some(k),
                    all.obs
                        .iter()
                        .find(|o| o.modality == assimd_filter::obs::Modality::Station),
                ) {
                    let mut obs = batch.obs.clone();
                    obs.push(Observation {
                        value: -9999.0,
                        ..o.clone()
                    });
                    batch = ObsBatch::new(&space, obs)?;
                }
                if let Some(a) = &analysis {
                    let mut trial = ens.clone();
                    let t = Instant::now();
                    a.analyse(&mut trial, &batch, &mut rng)?;
                    t_analysis += secs(t);
                    if trial.as_flat().iter().all(|v| v.is_finite()) {
                        ens = trial;
                    } else if spec.qc.enabled {
                        // As the daemon does: keep the background, the guard looks at it next cycle.
                        failed.push(k);
                    } else {
                        bail!("{} diverged at cycle {k}: the analysis ensemble is not finite (try more inflation or a shorter localisation)", spec.filter);
                    }
                }
                if spec.qc.enabled && spec.qc.replay_cycles > 0 {
                    analyses.push_back((k as u64, ens.clone()));
                    if analyses.len() > spec.qc.replay_cycles as usize + 1 {
                        analyses.pop_front();
                    }
                }
                if scored {
                    let mean = ens.mean();
                    let rmse_a = stats::rmse(&mean, truth);
                    acc.add(
                        rmse_a,
                        rmse_f,
                        stats::spread(&ens),
                        stats::crps_ensemble(&ens, truth),
                        withheld_rmse(&verif, &mean),
                    );
                }
            }
            FilterKind::Free => {
                if scored {
                    let mean = ens.mean();
                    let rmse = stats::rmse(&mean, truth);
                    acc.add(
                        rmse,
                        rmse,
                        stats::spread(&ens),
                        stats::crps_ensemble(&ens, truth),
                        withheld_rmse(&verif, &mean),
                    );
                }
            }
            _ => {
                if scored {
                    let rmse = stats::rmse(&clim_mean, truth);
                    let crps = stats::crps_gaussian_field(&clim_mean, &clim_std, truth);
                    acc.add(
                        rmse,
                        rmse,
                        stats::rms(&clim_std),
                        crps,
                        withheld_rmse(&verif, &clim_mean),
                    );
                }
            }
        }
        on_cycle(k, scored.then_some(&acc.last));
    }
    let seconds_per_cycle = start.elapsed().as_secs_f64() / spec.cycles as f64;
    if let Some(r) = recorder {
        r.finish()?;
    }
    let mut summary = acc.summary(spec, burn_in, seconds_per_cycle);
    let per_cycle = |t: f64| t / spec.cycles as f64;
    summary.seconds_forecast = per_cycle(t_forecast);
    summary.seconds_analysis = per_cycle(t_analysis);
    summary.seconds_qc = per_cycle(t_qc);
    summary.peak_rss_mib = peak_rss_mib();
    summary.qc = qc_total;
    summary.rejected_ingest = rejected_ingest;
    summary.injected = injector.injected;
    summary.divergences = divergences;
    summary.failed_analyses = failed;
    summary.blacklistings = blacklistings;
    summary.replays = replays;
    Ok(summary)
}

/// Re-run a filter from the analysis `from` through `batches` (a forecast, then an analysis, per
/// cycle): a [`qc::Replay`] without a newly blacklisted station. The daemon's cycle engine runs the
/// same function.
pub fn replay(
    mut ens: Ensemble,
    batches: &[(u64, ObsBatch)],
    dynamics: &dyn assimd_filter::Dynamics,
    analysis: &dyn assimd_filter::Analysis,
    rng: &mut ChaCha8Rng,
) -> Result<Ensemble> {
    for (c, b) in batches {
        forecast(dynamics, &mut ens);
        if !b.is_empty() {
            let mut trial = ens.clone();
            analysis
                .analyse(&mut trial, b, rng)
                .with_context(|| format!("re-analysing cycle {c}"))?;
            if trial.as_flat().iter().all(|v| v.is_finite()) {
                ens = trial;
            }
        }
    }
    Ok(ens)
}

/// Forecast every member one cycle, in parallel when the state is large enough to pay for it.
pub fn forecast(dynamics: &dyn assimd_filter::Dynamics, ens: &mut Ensemble) {
    if ens.dim() >= 1024 {
        ens.as_flat_mut()
            .par_chunks_mut(dynamics.state_dim())
            .for_each(|m| dynamics.forecast(m));
    } else {
        ens.members_mut().for_each(|m| dynamics.forecast(m));
    }
}

/// Whether a station of the simulated network is withheld (verification only).
fn withheld(sim: &Simulator, station: &str) -> bool {
    sim.network
        .stations
        .iter()
        .any(|s| s.withheld && s.id == station)
}

/// A validated message: its id, its station (None for a granule) and its observations.
type Decoded = (String, Option<String>, Vec<Observation>);

/// The cycle's messages through the daemon's validation: (id, station, observations) of each valid
/// one; rejections are counted by reason. Without injected faults a rejection is the simulator's
/// bug, and an error.
fn decode_cycle(
    messages: &[crate::simulate::Message],
    space: &assimd_filter::StateSpace,
    checks: &wire::Checks,
    rejected: &mut BTreeMap<String, u64>,
    faults: bool,
) -> Result<Vec<Decoded>> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        match checks.validate(&m.feature, Some(&m.topic), space, None) {
            Ok(v) => {
                let station = match v.source {
                    wire::Source::Station(s) => Some(s),
                    wire::Source::Satellite(..) => None,
                };
                out.push((v.id, station, v.obs));
            }
            Err(e) if faults => *rejected.entry(e.reason.as_str().to_string()).or_default() += 1,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("the simulator produced an invalid message on {}", m.topic)
                })
            }
        }
    }
    Ok(out)
}

/// RMSE of `x` seen through the verification batch's operator against its values (NaN if empty).
pub fn withheld_rmse(verif: &ObsBatch, x: &[f64]) -> f64 {
    if verif.is_empty() {
        return f64::NAN;
    }
    let mut hx = vec![0.0; verif.len()];
    assimd_filter::obs::ObservationOperator::apply(&verif.op, x, &mut hx);
    stats::rmse(&hx, &verif.y)
}

#[derive(Default)]
struct Accumulator {
    n: usize,
    rmse_a: f64,
    rmse_f: f64,
    spread_a: f64,
    crps_a: f64,
    withheld: f64,
    last: CycleScores,
}

impl Accumulator {
    fn add(&mut self, rmse_a: f64, rmse_f: f64, spread_a: f64, crps_a: f64, withheld: f64) {
        self.last = CycleScores {
            rmse_a,
            rmse_f,
            spread_a,
            crps_a,
            rmse_withheld_a: withheld,
        };
        self.n += 1;
        self.rmse_a += rmse_a;
        self.rmse_f += rmse_f;
        self.spread_a += spread_a;
        self.crps_a += crps_a;
        self.withheld += withheld;
    }

    fn summary(&self, spec: &ExperimentSpec, burn_in: usize, seconds_per_cycle: f64) -> Summary {
        let n = self.n as f64;
        Summary {
            testbed: spec.testbed.name.to_string(),
            filter: spec.filter.to_string(),
            network: spec.testbed.network.to_string(),
            members: spec.members,
            cycles: spec.cycles,
            seed: spec.seed,
            rmse_a: self.rmse_a / n,
            rmse_f: self.rmse_f / n,
            spread_a: self.spread_a / n,
            spread_skill: self.spread_a / self.rmse_a,
            crps_a: self.crps_a / n,
            seconds_per_cycle,
            seconds_forecast: 0.0,
            seconds_analysis: 0.0,
            seconds_qc: 0.0,
            peak_rss_mib: 0.0,
            rmse_withheld_a: self.withheld / n,
            burn_in,
            qc: QcCounts::default(),
            rejected_ingest: BTreeMap::new(),
            injected: Injected::default(),
            divergences: Vec::new(),
            blacklistings: Vec::new(),
            replays: Vec::new(),
            failed_analyses: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(filter: FilterKind, members: usize) -> ExperimentSpec {
        let mut filters = FilterSettings::default();
        filters.enkf.inflation = 1.02;
        filters.etkf.inflation = 1.02;
        filters.letkf.inflation = 1.02;
        filters.letkf.localization_km = 8500.0;
        let testbed = TestbedSettings {
            name: assimd_models::testbed::TestbedKind::L96,
            network: assimd_models::testbed::NetworkKind::Full,
            ..Default::default()
        };
        ExperimentSpec {
            members,
            cycles: 200,
            seed: 7,
            burn_in: Some(50),
            initial_spread: Some(1.0),
            // The golden numbers pin the filters' arithmetic; quality control has its own tests
            // (with it on, the background check's choices enter the stochastic EnKF's draws).
            qc: QcSettings {
                enabled: false,
                ..QcSettings::default()
            },
            ..ExperimentSpec::new(testbed, filter, filters)
        }
    }

    /// Every filter is deterministic for a seed (bit for bit: the truth, the observation draws, the
    /// initial ensemble and the stochastic EnKF's perturbations all come from seeded streams), and
    /// beats the observations alone: with every point observed and R = I, the observations by
    /// themselves are an estimate of RMSE σ_o = 1, so a working filter's analysis must be below 1
    /// (the published LETKF/ETKF values are 0.18–0.20, Sakov & Oke 2008; tests/tuned_skill.rs
    /// holds the tuned files to them).
    #[test]
    fn filters_are_deterministic_and_beat_the_observations() {
        for (f, n) in [
            (FilterKind::Enkf, 40),
            (FilterKind::Etkf, 20),
            (FilterKind::Letkf, 20),
        ] {
            let a = run(&spec(f, n)).unwrap();
            let b = run(&spec(f, n)).unwrap();
            assert_eq!(
                (a.rmse_a, a.spread_a, a.crps_a),
                (b.rmse_a, b.spread_a, b.crps_a),
                "{f} is not deterministic"
            );
            assert!(a.rmse_a < 1.0, "{f}: rmse_a {} >= sigma_o", a.rmse_a);
            assert!(
                a.rmse_a < a.rmse_f,
                "{f}: the analysis does not improve on the background"
            );
        }
    }

    #[test]
    fn free_and_climatology_bracket_nothing_and_share_the_truth() {
        let mut s = spec(FilterKind::Free, 10);
        s.initial_spread = None;
        let free = run(&s).unwrap();
        s.filter = FilterKind::Climatology;
        let clim = run(&s).unwrap();
        // Without observations the free run's ensemble mean is no better than climatology.
        assert!(
            free.rmse_a > 0.95 * clim.rmse_a,
            "free {} vs climatology {}",
            free.rmse_a,
            clim.rmse_a
        );
        assert_eq!(free.rmse_a, free.rmse_f);
        // Climatology's spread is the root mean square of the climatological standard deviation.
        let tb = assimd_models::testbed::Testbed::new(assimd_models::testbed::TestbedKind::L96);
        let n = tb.space.geometry.n_points();
        let want = assimd_filter::stats::rms(&tb.climatology().std_state(n));
        assert!(
            (clim.spread_a - want).abs() < 1e-12,
            "{} vs {want}",
            clim.spread_a
        );
    }
}
