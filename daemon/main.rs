//! The `assimd` command line.

use anyhow::Result;
use assimd::experiment::{self, ExperimentSpec, FilterKind};
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
    Experiment {
        /// Testbed: l96 or qg2l.
        #[arg(long)]
        testbed: TestbedKind,
        /// Filter: free or climatology.
        #[arg(long)]
        filter: FilterKind,
        /// Observing network: full, sparse (l96), stations, satellite, stations+satellite.
        #[arg(long)]
        network: NetworkKind,
        /// Ensemble size N.
        #[arg(long, default_value_t = 20)]
        members: usize,
        /// Number of cycles.
        #[arg(long, default_value_t = 1000)]
        cycles: usize,
        /// Seed of truth, observation errors and initial ensemble.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Cycles excluded from the time means (default: a tenth of the cycles).
        #[arg(long)]
        burn_in: Option<usize>,
        /// Print one JSON line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Experiment { testbed, filter, network, members, cycles, seed, burn_in, json } => {
            let spec = ExperimentSpec { testbed, filter, network, members, cycles, seed, burn_in };
            let s = experiment::run(&spec)?;
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
