//! The `assimd` command line.

use anyhow::{bail, Context, Result};
use assimd::experiment::{self, ExperimentFile, ExperimentSpec, FilterKind};
use assimd::service::{self, config::Config, RunOptions, Stop};
use assimd_models::testbed::{NetworkKind, TestbedKind};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "assimd",
    version,
    about = "Streaming data assimilation: score-based filter beside an LETKF baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cycled OSSE offline and print its skill.
    Experiment(Box<ExperimentArgs>),
    /// Run the daemon (systemd Type=notify; SIGTERM graceful, SIGINT fast).
    Run {
        /// Config file (TOML); absent = the embedded default (configs/assimd.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Delete the state store of a config (the next start begins at cycle 0).
    Reset {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Publish a simulated observing network (and its truth) to a broker.
    Simulate {
        /// Config file: [testbed], [mqtt] and [simulate].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override simulate.cycles.
        #[arg(long)]
        cycles: Option<u64>,
        /// Override simulate.first_cycle.
        #[arg(long)]
        first_cycle: Option<u64>,
        /// Override simulate.interval_ms.
        #[arg(long)]
        interval_ms: Option<u64>,
    },
    /// Embedded broker + simulated network + daemon; prints both filters' skill per cycle.
    Demo {
        /// Testbed.
        #[arg(long, default_value = "l96", value_parser = testbed_parser())]
        testbed: TestbedKind,
        /// Network [default: full for l96, stations+satellite for qg2l].
        #[arg(long, value_parser = network_parser())]
        network: Option<NetworkKind>,
        /// Cycles to run.
        #[arg(long, default_value_t = 40)]
        cycles: u64,
        /// Model bundle for the score filter [default: models/zoo/TESTBED]; "none" = LETKF only.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Wall-clock milliseconds per simulated cycle.
        #[arg(long, default_value_t = 150)]
        interval_ms: u64,
        /// qg2l: directory of the per-cycle maps (PNG) [default: demo-maps]; "none" = no maps.
        #[arg(long)]
        maps_dir: Option<PathBuf>,
        /// Run the regime and filter settings of this experiment file (its [testbed], members,
        /// [letkf], [score] and [qc]) [default for l96 without --network: the long window at
        /// N = 20, configs/experiments/l96-sparse-r0.5-dt0.4-n20-score.toml, where the learned
        /// prior beats the tuned LETKF]; "none" = the tuned defaults of the testbed and network.
        #[arg(long)]
        experiment: Option<PathBuf>,
    },
    /// Print the station monitor's status from a (stopped) daemon's store: bias, noise and
    /// rejection rate of every station, worst first, and which are blacklisted.
    Stations {
        /// Store directory (store.path).
        #[arg(long)]
        store: PathBuf,
        /// The daemon's config file, to show its operator blacklist too.
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object (what the daemon publishes on {prefix}/stations).
        #[arg(long)]
        json: bool,
    },
    /// Inspect a state store.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Draw pictures of a run as PNG.
    Plot {
        #[command(subcommand)]
        command: PlotCommand,
    },
}

#[derive(Subcommand)]
enum PlotCommand {
    /// The per-cycle RMSE and spread of each filter against the truth and the withheld stations.
    Skill {
        /// A history written by `assimd experiment --history FILE`, or a daemon's store directory
        /// (daemon stopped); repeat to overlay runs (e.g. an LETKF and a score experiment).
        #[arg(long, required = true)]
        input: Vec<PathBuf>,
        /// The PNG to write.
        #[arg(long)]
        output: PathBuf,
        /// Logarithmic value axis (for runs whose errors differ by orders of magnitude).
        #[arg(long)]
        log_y: bool,
        /// Title [default: the input names].
        #[arg(long)]
        title: Option<String>,
    },
}

#[derive(Subcommand)]
enum StateCommand {
    /// Print the committed cycles, counters, identity and QC records (observations left out, with
    /// their reason) of a store (JSON with --json).
    Inspect {
        /// Store directory (store.path).
        #[arg(long)]
        store: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
        /// Print instead one cycle's journal: every message journaled for it (id, observation
        /// time, station, the validated observations), what QC left out of it, and its summary,
        /// while the store still keeps it (the last `cycle.keep` committed cycles and the open ones).
        #[arg(long)]
        cycle: Option<u64>,
    },
}

fn load_config(path: &Option<PathBuf>) -> Result<Config> {
    match path {
        Some(p) => Config::load(p),
        None => Config::embedded(),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Resolves at the first SIGTERM (graceful) or SIGINT (fast).
async fn signals() -> Stop {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => Stop::Graceful,
        _ = int.recv() => Stop::Fast,
    }
}

fn stations(store: &std::path::Path, config: Option<&std::path::Path>, json: bool) -> Result<()> {
    let s = open_store(store)?;
    let settings = match config {
        Some(p) => Config::load(p)?.qc,
        None => assimd::qc::QcSettings::default(),
    };
    let state = s.monitor_state()?.unwrap_or_default();
    let qc = assimd::qc::Qc::as_stored(settings, state);
    let report = qc.report(s.assimilated_up_to()?);
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "cycle {}: {} stations monitored, blacklisted: {}",
        report.cycle,
        report.stations.len(),
        if report.blacklisted.is_empty() {
            "none".to_string()
        } else {
            report.blacklisted.join(", ")
        }
    );
    println!(
        "{:<12} {:<21} {:>7} {:>8} {:>7} {:>8} {:>7}  since",
        "station", "status", "reports", "mean z", "std z", "rejects", "last"
    );
    for l in &report.stations {
        let status = serde_json::to_value(&l.status)?
            .as_str()
            .unwrap_or("")
            .to_string();
        let since = match (&l.blacklisted_since, &l.reason) {
            (Some(c), Some(r)) => format!("{c} ({r})"),
            _ => String::new(),
        };
        println!(
            "{:<12} {:<21} {:>7} {:>8.2} {:>7.2} {:>8.3} {:>7}  {since}",
            l.station, status, l.reports, l.mean_z, l.std_z, l.reject_rate, l.last_cycle
        );
    }
    Ok(())
}

/// A stopped daemon's store, or an error naming the missing directory.
fn open_store(store: &std::path::Path) -> Result<service::store::Store> {
    if !store.exists() {
        anyhow::bail!(
            "{} does not exist (give store.path of the daemon's config)",
            store.display()
        );
    }
    service::store::Store::open(store)
}

/// Print `v` as one line (`json`) or indented.
fn print_json(v: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(v)?);
    }
    Ok(())
}

fn inspect_cycle(store: &std::path::Path, cycle: u64, json: bool) -> Result<()> {
    let s = open_store(store)?;
    let messages = s.journal_cycle(cycle)?;
    let summary = s.summaries()?.into_iter().find(|(k, _)| *k == cycle);
    let assimilated_up_to = s.assimilated_up_to()?;
    if messages.is_empty() && summary.is_none() {
        let kept: Vec<u64> = s.journal_counts()?.into_iter().map(|(c, _)| c).collect();
        anyhow::bail!(
            "cycle {cycle} has neither journal entries nor a summary in {} (assimilated up to {assimilated_up_to}; journal kept for cycles {kept:?}; `cycle.keep` sets how many committed cycles stay)",
            store.display()
        );
    }
    let rejections: Vec<_> = s
        .qc_rejections()?
        .into_iter()
        .filter(|(k, _)| *k == cycle)
        .map(|(_, r)| r)
        .collect();
    let v = serde_json::json!({
        "cycle": cycle,
        "committed": cycle <= assimilated_up_to,
        "messages": messages.iter().map(|(id, e)| serde_json::json!({
            "id": id,
            "time": chrono::DateTime::from_timestamp_millis(e.time_ms).map(assimd::wire::format_time),
            "station": e.station,
            "obs": e.obs,
        })).collect::<Vec<_>>(),
        "qc_rejections": rejections,
        "summary": summary.map(|(_, v)| v),
    });
    print_json(&v, json)
}

fn inspect(store: &std::path::Path, json: bool) -> Result<()> {
    let s = open_store(store)?;
    let (compat, bundle) = s.identity()?;
    let v = serde_json::json!({
        "store": store.display().to_string(),
        "schema": service::store::SCHEMA,
        "compat": compat,
        "bundle": bundle,
        "assimilated_up_to": s.assimilated_up_to()?,
        "obs_clock": s.obs_clock_ms()?.and_then(chrono::DateTime::from_timestamp_millis).map(assimd::wire::format_time),
        "journaled_total": s.journaled_total()?,
        "assimilated_messages_total": s.assimilated_messages_total()?,
        "journal_pending": s.journal_counts()?.into_iter().map(|(c, n)| serde_json::json!([c, n])).collect::<Vec<_>>(),
        "cycles": s.summaries()?.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "qc_rejections": s.qc_rejections()?.into_iter().map(|(c, r)| serde_json::json!({"cycle": c, "record": r})).collect::<Vec<_>>(),
        "size_bytes": s.size_on_disk(),
    });
    print_json(&v, json)
}

#[derive(clap::Args)]
struct ExperimentArgs {
    /// Experiment file (configs/experiments/*.toml); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Testbed (`[testbed] name`).
    #[arg(long, value_parser = testbed_parser())]
    testbed: Option<TestbedKind>,
    /// Filter (`filter`); each family's settings are its table (`[enkf]`, `[etkf]`, `[letkf]`, `[score]`).
    #[arg(long)]
    filter: Option<FilterKind>,
    /// Observing network (`[testbed] network`; sparse is l96 only).
    #[arg(long, value_parser = network_parser())]
    network: Option<NetworkKind>,
    /// l96: model steps of Δt 0.05 per cycle (`[testbed] steps_per_cycle`; 8 = the 48-hour window) [default: 1].
    #[arg(long)]
    steps_per_cycle: Option<usize>,
    /// l96: observation error variance σ² of every assimilated observation (`[testbed] obs_error_variance`) [default: the network's].
    #[arg(long)]
    obs_error_variance: Option<f64>,
    /// qg2l: grid points per side, 64, 128 or 256 (`[testbed] resolution`; larger grids tile the 1000 km box) [default: 64].
    #[arg(long)]
    resolution: Option<usize>,
    /// Ensemble size N [default: the tuned table's: l96 20, qg2l 32].
    #[arg(long)]
    members: Option<usize>,
    /// Number of cycles [default: 1000].
    #[arg(long)]
    cycles: Option<usize>,
    /// Seed of truth, observation errors and initial ensemble [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Cycles excluded from the time means [default: a tenth of the cycles].
    #[arg(long)]
    burn_in: Option<usize>,
    /// Multiplicative inflation ρ of --filter's family (the score filter: of its starting LETKF) [default: tuned, configs/tuned.toml].
    #[arg(long)]
    inflation: Option<f64>,
    /// RTPS α of --filter's family (the score filter: of its starting LETKF) [default: tuned].
    #[arg(long)]
    rtps: Option<f64>,
    /// Score filter: RTPS α after sampling (`[score] rtps`) [default: tuned].
    #[arg(long)]
    score_rtps: Option<f64>,
    /// LETKF Gaspari–Cohn half-width in km (`[letkf] localization_km`; inf = none) [default: tuned].
    #[arg(long)]
    localization_km: Option<f64>,
    /// LETKF adaptive inflation (`[letkf] adaptive`): off, or enkf-n (the finite-size EnKF-N at every grid point, on top of --inflation) [default: tuned].
    #[arg(long)]
    adaptive: Option<assimd::settings::AdaptiveName>,
    /// With --adaptive enkf-n: the hyperprior confidence ξ_N (`[letkf] adaptive_xn`; 1 = agnostic).
    #[arg(long)]
    adaptive_xn: Option<f64>,
    /// Start from the truth plus noise of this σ instead of climatological draws.
    #[arg(long)]
    initial_spread: Option<f64>,
    /// LETKF weight interpolation stride (1 = exact) [default: tuned].
    #[arg(long)]
    weight_stride: Option<usize>,
    /// Record training triples (truth, background mean and spread) as .npy files into this directory.
    #[arg(long)]
    record: Option<PathBuf>,
    /// With --record: record every this many cycles after burn-in.
    #[arg(long, default_value_t = 1)]
    record_every: usize,
    /// With --record: also record the background members (for the set encoder).
    #[arg(long)]
    record_members: bool,
    /// Score filter: localisation half-width (km) of the ensemble Gaussian the members start from (`[score] prior_localization_km`) [default: the bundle's].
    #[arg(long)]
    prior_localization_km: Option<f64>,
    /// Score filter: inflation of that Gaussian (`[score] prior_inflation`) [default: the bundle's].
    #[arg(long)]
    prior_inflation: Option<f64>,
    /// Score filter: model bundle directory, or "ensemble-gaussian" for the analytic prior [default: models/zoo/{testbed} when it exists].
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Score filter: noise levels S.
    #[arg(long)]
    steps: Option<usize>,
    /// Score filter: Langevin corrections per level.
    #[arg(long)]
    corrections: Option<usize>,
    /// Score filter: Langevin step factor τ.
    #[arg(long)]
    tau: Option<f64>,
    /// Score filter: guidance variance factor γ.
    #[arg(long)]
    gamma: Option<f64>,
    /// Score filter: initial noise level.
    #[arg(long)]
    sigma_start: Option<f64>,
    /// Score filter: initial noise level as this factor times the background spread at each analysis (0 = the fixed --sigma-start).
    #[arg(long)]
    sigma_start_spread: Option<f64>,
    /// Score filter: latent-optimisation steps after sampling (LO-SDA; 0 = off).
    #[arg(long)]
    lo_steps: Option<usize>,
    /// Score filter, latent bundles: add σ² G Gᵀ (G = H ∂x̂₀/∂z) to the guidance covariance (default true).
    #[arg(long)]
    jacobian_cov: Option<bool>,
    /// Score filter: guide with the prior's own posterior covariance σ² ∂D/∂z at every level (Tweedie; pixel-space bundles).
    #[arg(long)]
    tweedie: Option<bool>,
    /// Score filter: start each member at its own background (member), the mean (mean), its perturbed-observation (analysis) or square-root (sqrt) Kalman update under the prior, or its [letkf] analysis whatever the prior (letkf).
    #[arg(long)]
    start: Option<assimd::settings::StartName>,
    /// Replace this share of the observations with gross errors (seeded: 50 σ_o spikes, −9999
    /// missing-value codes) and make one station stuck; counted in the output.
    #[arg(long)]
    gross_errors: Option<f64>,
    /// A drifting station, STATION:SIGMAS:FROM_CYCLE (e.g. S04:3:100).
    #[arg(long)]
    bias: Option<String>,
    /// Quality control: on (the daemon's [qc]) or off (no background check, monitor or divergence guard) [default: on].
    #[arg(long, value_parser = ["on", "off"])]
    qc: Option<String>,
    /// Wreck the analysis at this cycle (a −9999 station value that bypasses every check is assimilated), to watch the divergence guard.
    #[arg(long)]
    corrupt_at: Option<usize>,
    /// Run these seeds (`1-5`, `1,3,7`; in parallel, as many as there are cores) and report each
    /// score's mean over them with its 95% interval; replaces --seed.
    #[arg(long, conflicts_with = "seed")]
    seeds: Option<String>,
    /// Also run this experiment file on the same truths and observations (same seeds; --cycles,
    /// --burn-in, --qc and the [testbed] flags apply to both) and report the mean paired
    /// difference of the analysis RMSE, this minus FILE, with its 95% interval.
    #[arg(long, value_name = "FILE")]
    compare: Option<PathBuf>,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
    /// Write each scored cycle's RMSE, spread and CRPS as JSON lines to this file (for
    /// `assimd plot skill`; --burn-in 0 scores every cycle).
    #[arg(long)]
    history: Option<PathBuf>,
}

impl ExperimentArgs {
    /// The flags in the layout of an experiment file (`[testbed]`, `[letkf]`, `[score.sampler]`,
    /// ...): the top layer of [`ExperimentFile::resolve`]. The family-wide flags (`--inflation`,
    /// `--rtps`) go to the table of `--filter`'s family; for the score filter to `[letkf]`, the
    /// LETKF that starts a latent bundle's members.
    fn flags(&self, file_filter: Option<FilterKind>) -> toml::Table {
        use toml::Value;
        fn put(t: &mut toml::Table, path: &[&str], v: Option<Value>) {
            let Some(v) = v else { return };
            let (last, tables) = path.split_last().expect("a key");
            let mut t = t;
            for k in tables {
                t = t
                    .entry(k.to_string())
                    .or_insert_with(|| Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .expect("flag tables are tables");
            }
            t.insert(last.to_string(), v);
        }
        let int = |v: Option<usize>| v.map(|v| Value::Integer(v as i64));
        let float = |v: Option<f64>| v.map(Value::Float);
        let string = |v: Option<String>| v.map(Value::String);
        let family = match self.filter.or(file_filter) {
            Some(FilterKind::Enkf) => "enkf",
            Some(FilterKind::Etkf) => "etkf",
            _ => "letkf",
        };
        let mut t = toml::Table::new();
        put(
            &mut t,
            &["testbed", "name"],
            string(self.testbed.map(|v| v.to_string())),
        );
        put(
            &mut t,
            &["testbed", "network"],
            string(self.network.map(|v| v.to_string())),
        );
        put(
            &mut t,
            &["testbed", "steps_per_cycle"],
            int(self.steps_per_cycle),
        );
        put(&mut t, &["testbed", "resolution"], int(self.resolution));
        put(
            &mut t,
            &["testbed", "obs_error_variance"],
            float(self.obs_error_variance),
        );
        put(
            &mut t,
            &["filter"],
            string(self.filter.map(|v| v.to_string())),
        );
        put(&mut t, &["members"], int(self.members));
        put(&mut t, &["cycles"], int(self.cycles));
        put(
            &mut t,
            &["seed"],
            self.seed.map(|v| Value::Integer(v as i64)),
        );
        put(&mut t, &["burn_in"], int(self.burn_in));
        put(&mut t, &["initial_spread"], float(self.initial_spread));
        put(&mut t, &[family, "inflation"], float(self.inflation));
        put(&mut t, &[family, "rtps"], float(self.rtps));
        put(
            &mut t,
            &["letkf", "localization_km"],
            float(self.localization_km),
        );
        put(&mut t, &["letkf", "weight_stride"], int(self.weight_stride));
        put(
            &mut t,
            &["letkf", "adaptive"],
            string(self.adaptive.map(|a| a.to_string())),
        );
        put(&mut t, &["letkf", "adaptive_xn"], float(self.adaptive_xn));
        put(&mut t, &["score", "rtps"], float(self.score_rtps));
        put(
            &mut t,
            &["score", "prior_localization_km"],
            float(self.prior_localization_km),
        );
        put(
            &mut t,
            &["score", "prior_inflation"],
            float(self.prior_inflation),
        );
        put(
            &mut t,
            &["score", "bundle"],
            string(self.bundle.as_ref().map(|b| b.display().to_string())),
        );
        let sampler = ["score", "sampler"];
        let at = |k: &'static str| [sampler[0], sampler[1], k];
        put(&mut t, &at("steps"), int(self.steps));
        put(&mut t, &at("corrections"), int(self.corrections));
        put(&mut t, &at("tau"), float(self.tau));
        put(&mut t, &at("gamma"), float(self.gamma));
        put(&mut t, &at("sigma_start"), float(self.sigma_start));
        put(
            &mut t,
            &at("sigma_start_spread"),
            float(self.sigma_start_spread),
        );
        put(&mut t, &at("lo_steps"), int(self.lo_steps));
        put(
            &mut t,
            &at("jacobian_cov"),
            self.jacobian_cov.map(Value::Boolean),
        );
        put(&mut t, &at("tweedie"), self.tweedie.map(Value::Boolean));
        put(
            &mut t,
            &at("start"),
            string(self.start.map(|s| format!("{s:?}").to_lowercase())),
        );
        put(&mut t, &["gross_errors"], float(self.gross_errors));
        put(&mut t, &["bias"], string(self.bias.clone()));
        put(&mut t, &["corrupt_at"], int(self.corrupt_at));
        put(
            &mut t,
            &["qc", "enabled"],
            self.qc.as_ref().map(|q| Value::Boolean(q == "on")),
        );
        t
    }

    /// Defaults, then the tuned table of the testbed and network, then the experiment file, then
    /// the flags ([`assimd::settings`]), turned into a spec.
    fn spec(&self) -> Result<ExperimentSpec> {
        let (file, origin) = read_experiment_file(self.config.as_deref())?;
        let file_filter = file
            .get("filter")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok());
        let flags = self.flags(file_filter);
        let mut spec = ExperimentFile::resolve(file, flags, &origin)?.spec()?;
        spec.record = self.record.clone().map(|dir| experiment::RecordSpec {
            dir,
            every: self.record_every,
            members: self.record_members,
        });
        Ok(spec)
    }

    /// The spec of `--compare FILE`: that file with the flags that shape the truths and the
    /// scoring (`[testbed]`, --cycles, --burn-in, --qc), none of this experiment's filter settings.
    fn compare_spec(&self, path: &std::path::Path) -> Result<ExperimentSpec> {
        let (file, origin) = read_experiment_file(Some(path))?;
        let all = self.flags(None);
        let mut shared = toml::Table::new();
        for key in ["testbed", "cycles", "burn_in", "qc"] {
            if let Some(v) = all.get(key) {
                shared.insert(key.to_string(), v.clone());
            }
        }
        ExperimentFile::resolve(file, shared, &origin)?.spec()
    }
}

/// An experiment file as a table with its name for errors (no file: an empty table).
fn read_experiment_file(path: Option<&std::path::Path>) -> Result<(toml::Table, String)> {
    match path {
        Some(p) => {
            let origin = format!("experiment file {}", p.display());
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {origin}"))?;
            Ok((assimd::settings::parse_table(&text, &origin)?, origin))
        }
        None => Ok((toml::Table::new(), "the flags".to_string())),
    }
}

/// `assimd experiment --seeds` / `--compare`: the experiment (and the compared one) over the seeds,
/// with intervals and the paired difference.
fn run_paired(args: &ExperimentArgs) -> Result<()> {
    use assimd::paired;
    let spec = args.spec()?;
    if args.history.is_some() || spec.record.is_some() {
        bail!("--history and --record take a single --seed, not --seeds or --compare");
    }
    let seeds = match &args.seeds {
        Some(text) => paired::parse_seeds(text)?,
        None => vec![spec.seed],
    };
    let other = match &args.compare {
        Some(p) => {
            let o = args.compare_spec(p)?;
            paired::check_pairable(&spec, &o)?;
            Some((p.display().to_string(), o))
        }
        None => None,
    };
    let runs_total = (seeds.len() * (1 + other.is_some() as usize) * spec.cycles) as u64;
    let bar = assimd::progress::bar(
        runs_total,
        &format!(
            "{} {} {} ×{} seeds",
            spec.testbed.name,
            spec.filter,
            spec.testbed.network,
            seeds.len()
        ),
    );
    let tick = || bar.inc(1);
    let this = paired::run_seeds(&spec, &seeds, &tick)?;
    let compared = match &other {
        Some((name, o)) => {
            let runs = paired::run_seeds(o, &seeds, &tick)?;
            let diff = paired::paired_difference(&this, &runs)?;
            Some((name.clone(), runs, diff))
        }
        None => None,
    };
    bar.finish_and_clear();
    if args.json {
        let c = compared.as_ref().map(|(n, r, d)| (n.as_str(), r, *d));
        println!("{}", paired::json(&this, c));
        return Ok(());
    }
    let s = &this.per_seed[0];
    println!(
        "{} on {} network, {} cycles (burn-in {}), seeds {:?}; means with 95% intervals",
        s.testbed, s.network, s.cycles, s.burn_in, seeds
    );
    let row = |name: &str, r: &paired::SeedRuns| {
        println!(
            "  {name:<28} N={:<3} RMSE {}  spread/skill {}  CRPS {}",
            r.per_seed[0].members,
            r.rmse_a.show(4),
            r.spread_skill.show(2),
            r.crps_a.show(4)
        )
    };
    let this_name = args
        .config
        .as_ref()
        .map_or(spec.filter.to_string(), |p| p.display().to_string());
    row(&this_name, &this);
    if let Some((name, runs, diff)) = &compared {
        row(name, runs);
        println!("  paired difference (this − {name}): {}", diff.show(4));
    }
    Ok(())
}

/// `assimd experiment`: the run, with a progress bar on a terminal and the per-cycle history.
fn run_experiment(
    spec: &ExperimentSpec,
    history: Option<&std::path::Path>,
) -> Result<experiment::Summary> {
    use anyhow::Context;
    use std::io::Write;
    let mut out = match history {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p)
                .with_context(|| format!("creating the history file {}", p.display()))?,
        )),
        None => None,
    };
    let bar = assimd::progress::bar(
        spec.cycles as u64,
        &format!(
            "{} {} {}",
            spec.testbed.name, spec.filter, spec.testbed.network
        ),
    );
    let filter = spec.filter.to_string();
    let (mut sum, mut n, mut write_err) = (0.0, 0usize, None);
    let s = experiment::run_with(spec, &mut |k, scores| {
        bar.inc(1);
        let Some(c) = scores else { return };
        sum += c.rmse_a;
        n += 1;
        bar.set_message(format!("mean analysis RMSE {:.4}", sum / n as f64));
        if let Some(w) = out.as_mut() {
            let line = serde_json::json!({
                "cycle": k, "filter": filter, "rmse_a_truth": c.rmse_a, "rmse_f_truth": c.rmse_f,
                "spread_a": c.spread_a, "crps_a": c.crps_a, "rmse_a_withheld": c.rmse_withheld_a,
            });
            if let Err(e) = writeln!(w, "{line}") {
                write_err.get_or_insert(e);
            }
        }
    });
    bar.finish_and_clear();
    let s = s?;
    if let Some(mut w) = out {
        if let Some(e) = write_err {
            return Err(e).context("writing the history file");
        }
        w.flush().context("writing the history file")?;
    }
    Ok(s)
}

/// `--testbed`: every accepted value in the help.
fn testbed_parser() -> impl clap::builder::TypedValueParser<Value = TestbedKind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["l96", "qg2l"])
        .map(|s| s.parse::<TestbedKind>().expect("a listed testbed"))
}

/// `--network`: every accepted value in the help.
fn network_parser() -> impl clap::builder::TypedValueParser<Value = NetworkKind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new([
        "full",
        "sparse",
        "stations",
        "satellite",
        "stations+satellite",
    ])
    .map(|s| s.parse::<NetworkKind>().expect("a listed network"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The demo prints a table: only warnings and errors go to the log there.
    let demo = matches!(cli.command, Command::Demo { .. });
    service::telemetry::init_logging(if demo {
        "warn,rumqttd=off"
    } else {
        service::telemetry::DEFAULT_LOG
    });
    match cli.command {
        Command::Run { config } => {
            let cfg = load_config(&config)?;
            let hint = config
                .as_ref()
                .map_or("FILE".to_string(), |p| p.display().to_string());
            let rt = runtime()?;
            let r = rt.block_on(service::run(
                cfg,
                RunOptions {
                    install_metrics: true,
                    config_hint: hint,
                    config_path: config.clone(),
                    ..RunOptions::default()
                },
                signals(),
            ));
            // An abandoned cycle still runs on a blocking thread: do not wait for it (its work is
            // uncommitted and is redone after restart).
            rt.shutdown_timeout(std::time::Duration::from_millis(200));
            r?;
        }
        Command::CheckConfig { file } => {
            let cfg = Config::load(&file)?;
            // Exactly what `run` does before it opens the store: build the filters (the LETKF,
            // and the score filter with its bundle loaded into ONNX Runtime).
            service::build_filters(&cfg, &cfg.testbed.testbed()?)
                .with_context(|| format!("invalid config {}", file.display()))?;
            println!("{} is valid", file.display());
            println!("{cfg:#?}");
        }
        Command::Reset { config } => service::reset(&Config::load(&config)?)?,
        Command::Simulate {
            config,
            cycles,
            first_cycle,
            interval_ms,
        } => {
            let mut cfg = load_config(&config)?;
            cfg.simulate.cycles = cycles.unwrap_or(cfg.simulate.cycles);
            cfg.simulate.first_cycle = first_cycle.unwrap_or(cfg.simulate.first_cycle);
            cfg.simulate.interval_ms = interval_ms.unwrap_or(cfg.simulate.interval_ms);
            let s = runtime()?.block_on(service::simulator::simulate(&cfg, |k| {
                tracing::debug!("published cycle {k}")
            }))?;
            println!(
                "published {} cycles, {} observation messages, {} messages in all, to {}",
                s.cycles,
                s.observations,
                s.messages,
                cfg.mqtt.endpoint_names().join(", ")
            );
        }
        Command::Demo {
            testbed,
            network,
            cycles,
            bundle,
            interval_ms,
            maps_dir,
            experiment,
        } => {
            let maps = match maps_dir {
                Some(p) if p.as_os_str() == "none" => None,
                Some(p) => Some(p),
                None => (testbed == TestbedKind::Qg2l).then(|| PathBuf::from("demo-maps")),
            };
            runtime()?.block_on(service::demo::demo(service::demo::DemoArgs {
                testbed,
                network,
                cycles,
                bundle,
                interval_ms,
                maps,
                experiment,
            }))?;
        }
        Command::Plot {
            command:
                PlotCommand::Skill {
                    input,
                    output,
                    log_y,
                    title,
                },
        } => {
            let t0 = std::time::Instant::now();
            let runs = assimd::plot::skill::load_all(&input)?;
            let title = title.unwrap_or_else(|| {
                let names: Vec<String> = input.iter().map(|p| p.display().to_string()).collect();
                format!("skill history: {}", names.join(", "))
            });
            assimd::plot::skill::render(&runs, &title, log_y)?.save_png(&output)?;
            let n: usize = runs.iter().map(|r| r.points.len()).sum();
            let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
            println!(
                "wrote {} ({} points of {}) in {:.0} ms",
                output.display(),
                n,
                labels.join(", "),
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        Command::State {
            command: StateCommand::Inspect { store, json, cycle },
        } => match cycle {
            Some(k) => inspect_cycle(&store, k, json)?,
            None => inspect(&store, json)?,
        },
        Command::Stations {
            store,
            config,
            json,
        } => stations(&store, config.as_deref(), json)?,
        Command::Experiment(args) if args.seeds.is_some() || args.compare.is_some() => {
            run_paired(&args)?
        }
        Command::Experiment(args) => {
            let json = args.json;
            let history = args.history.clone();
            let s = run_experiment(&args.spec()?, history.as_deref())?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!(
                    "{} {} on {} network, N={}, {} cycles (burn-in {}), seed {}",
                    s.testbed, s.filter, s.network, s.members, s.cycles, s.burn_in, s.seed
                );
                println!("  analysis RMSE   {:.4}", s.rmse_a);
                println!("  background RMSE {:.4}", s.rmse_f);
                println!(
                    "  spread          {:.4}  (spread/skill {:.2})",
                    s.spread_a, s.spread_skill
                );
                println!("  CRPS            {:.4}", s.crps_a);
                println!("  withheld RMSE   {:.4}", s.rmse_withheld_a);
                println!(
                    "  s/cycle         {:.6} (forecast {:.6}, analysis {:.6}, qc {:.6}; peak RSS {:.0} MiB)",
                    s.seconds_per_cycle, s.seconds_forecast, s.seconds_analysis, s.seconds_qc, s.peak_rss_mib
                );
                let q = &s.qc;
                println!(
                    "  QC              stations {} screened, {} rejected (background), {} blacklisted obs; satellite {} screened, {} rejected",
                    q.station.screened, q.station.background_check, q.station.blacklisted, q.satellite.screened, q.satellite.background_check
                );
                if !s.rejected_ingest.is_empty() || s.injected != Default::default() {
                    println!(
                        "  injected        {:?}; rejected at ingest {:?}",
                        s.injected, s.rejected_ingest
                    );
                }
                if !s.divergences.is_empty()
                    || !s.blacklistings.is_empty()
                    || !s.failed_analyses.is_empty()
                {
                    println!(
                        "  divergences at  {:?}; non-finite analyses discarded at {:?}; blacklistings {:?}",
                        s.divergences, s.failed_analyses, s.blacklistings
                    );
                }
            }
        }
    }
    Ok(())
}
