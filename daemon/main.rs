//! The `assimd` command line.

use anyhow::Result;
use assimd::experiment::{self, ExperimentFile, ExperimentSpec, FilterKind};
use std::path::PathBuf;
use assimd_models::testbed::{NetworkKind, TestbedKind};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "assimd", version, about = "Streaming data assimilation: score-based filter beside an LETKF baseline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cycled OSSE offline and print its skill.
    Experiment(ExperimentArgs),
}

#[derive(clap::Args)]
struct ExperimentArgs {
    /// Experiment file (configs/experiments/*.toml); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Testbed: l96 or qg2l.
    #[arg(long)]
    testbed: Option<TestbedKind>,
    /// Filter: free, climatology, enkf, etkf or letkf.
    #[arg(long)]
    filter: Option<FilterKind>,
    /// Observing network: full, sparse (l96), stations, satellite, stations+satellite.
    #[arg(long)]
    network: Option<NetworkKind>,
    /// Ensemble size N [default: 20].
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
    /// Multiplicative inflation ρ of the EnKF family [default: 1.0].
    #[arg(long)]
    inflation: Option<f64>,
    /// RTPS α of the EnKF family [default: 0].
    #[arg(long)]
    rtps: Option<f64>,
    /// LETKF Gaspari–Cohn half-width in km [default: infinite].
    #[arg(long)]
    localization_km: Option<f64>,
    /// Start from the truth plus noise of this σ instead of climatological draws.
    #[arg(long)]
    initial_spread: Option<f64>,
    /// LETKF weight interpolation stride [default: 1 = exact].
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
    /// Score filter: model bundle directory (e.g. models/zoo/l96).
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
    /// Score filter: start each member at its own background (member) or the mean (mean).
    #[arg(long)]
    start: Option<String>,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
}

impl ExperimentArgs {
    /// The experiment file with every given flag written over it, turned into a spec.
    fn spec(self) -> Result<ExperimentSpec> {
        let mut f = match &self.config {
            Some(p) => ExperimentFile::load(p)?,
            None => ExperimentFile::default(),
        };
        f.testbed = self.testbed.map(|v| v.to_string()).or(f.testbed);
        f.filter = self.filter.map(|v| v.to_string()).or(f.filter);
        f.network = self.network.map(|v| v.to_string()).or(f.network);
        f.members = self.members.or(f.members);
        f.cycles = self.cycles.or(f.cycles);
        f.seed = self.seed.or(f.seed);
        f.burn_in = self.burn_in.or(f.burn_in);
        f.inflation = self.inflation.or(f.inflation);
        f.rtps = self.rtps.or(f.rtps);
        f.localization_km = self.localization_km.or(f.localization_km);
        f.initial_spread = self.initial_spread.or(f.initial_spread);
        f.weight_stride = self.weight_stride.or(f.weight_stride);
        f.bundle = self.bundle.or(f.bundle);
        let mut sf = f.sampler.take().unwrap_or_default();
        sf.steps = self.steps.or(sf.steps);
        sf.corrections = self.corrections.or(sf.corrections);
        sf.tau = self.tau.or(sf.tau);
        sf.gamma = self.gamma.or(sf.gamma);
        sf.sigma_start = self.sigma_start.or(sf.sigma_start);
        sf.start = self.start.or(sf.start);
        f.sampler = Some(sf);
        let mut spec = f.spec()?;
        spec.record = self.record.map(|dir| experiment::RecordSpec { dir, every: self.record_every, members: self.record_members });
        Ok(spec)
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Experiment(args) => {
            let json = args.json;
            let s = experiment::run(&args.spec()?)?;
            if json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("{} {} on {} network, N={}, {} cycles (burn-in {}), seed {}", s.testbed, s.filter, s.network, s.members, s.cycles, s.burn_in, s.seed);
                println!("  analysis RMSE   {:.4}", s.rmse_a);
                println!("  background RMSE {:.4}", s.rmse_f);
                println!("  spread          {:.4}  (spread/skill {:.2})", s.spread_a, s.spread_skill);
                println!("  CRPS            {:.4}", s.crps_a);
                println!("  withheld RMSE   {:.4}", s.rmse_withheld_a);
                println!("  s/cycle         {:.6}", s.seconds_per_cycle);
            }
        }
    }
    Ok(())
}
