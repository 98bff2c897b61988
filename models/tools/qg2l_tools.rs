//! # qg2l-tools
//!
//! Commands that make or describe the two-layer QG testbed's data (`models/data/README.md`), run
//! from the repository root:
//!
//! ```text
//! cargo run --release -p assimd-models --bin qg2l-tools -- regenerate [--seed S] [--days D] [--out PATH]
//! cargo run --release -p assimd-models --bin qg2l-tools -- equilibrium [--seed S] [--years Y]
//! cargo run --release -p assimd-models --bin qg2l-tools -- obs-stats [--seed S] [--cycles N] [--resolution R]
//! ```
//!
//! - `regenerate` rewrites the spun-up initial state `models/data/qg2l_spinup.f64le` with
//!   [`qg2l::regenerate_spinup`] (default parameters, seed [`qg2l::SPINUP_SEED`],
//!   [`qg2l::SPINUP_DAYS`] days, one `advance` call) and first prints the energy and enstrophy every
//!   30 days of a block-wise spin-up from the same start. Blocks differ from one call at round-off
//!   (each call round-trips ψ → q → ψ), which the chaotic flow amplifies, so the series describes
//!   the spin-up statistically; the file is the library function's.
//! - `equilibrium` runs `Y` model years (default 20; 360-day years, as `pyqg_peer.py equilibrium`)
//!   from the same random start, samples the energy every 10 days, and prints the means over days
//!   1800–3600 and 3600–end and the spread of 180-day window means after day 1800 (the table
//!   "Equilibrium energy vs pyqg" in `models/data/README.md`).
//! - `obs-stats` runs the qg2l testbed's truth for `N` cycles (default 200) from
//!   [`testbed::CLIMATOLOGY_SEED`] and prints the RMS of each observable (pressure, temperature,
//!   brightness temperature) over the grid and the cycles: the scales the observation errors
//!   [`testbed::QG_SIGMAS`] are set against; and each field's mean and standard deviation, the
//!   climatology [`testbed::QG_CLIM`] records for 64² (the same at every `--resolution`: the
//!   larger grids tile the same box, `models/data/README.md`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use assimd_filter::Dynamics;
use assimd_models::qg2l::{self, Qg2l, Qg2lParams};
use assimd_models::testbed::{self, Testbed};

const USAGE: &str = "usage: qg2l-tools regenerate [--seed S] [--days D] [--out PATH]
       qg2l-tools equilibrium [--seed S] [--years Y]
       qg2l-tools obs-stats [--seed S] [--cycles N] [--resolution 64|128|256]";

/// Steps of dt = 7200 s per model day.
const STEPS_PER_DAY: usize = 12;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qg2l-tools: {e}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (command, rest) = args.split_first().ok_or("no command given")?;
    let opts = Options::from_args(rest)?;
    match command.as_str() {
        "regenerate" => {
            opts.only(&["seed", "days", "out"])?;
            let out = match opts.get("out") {
                Some(p) => PathBuf::from(p),
                None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("data")
                    .join("qg2l_spinup.f64le"),
            };
            regenerate(
                opts.value("seed", qg2l::SPINUP_SEED)?,
                opts.value("days", qg2l::SPINUP_DAYS)?,
                out,
            )
        }
        "equilibrium" => {
            opts.only(&["seed", "years"])?;
            equilibrium(
                opts.value("seed", qg2l::SPINUP_SEED)?,
                opts.value("years", 20.0)?,
            )
        }
        "obs-stats" => {
            opts.only(&["seed", "cycles", "resolution"])?;
            obs_stats(
                opts.value("seed", testbed::CLIMATOLOGY_SEED)?,
                opts.value("cycles", 200)?,
                opts.value("resolution", testbed::QG_RESOLUTION)?,
            )
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!(
            "unknown command {other:?} (commands: regenerate, equilibrium, obs-stats)"
        )),
    }
}

/// `--key value` pairs after the command.
struct Options(Vec<(String, String)>);

impl Options {
    fn from_args(args: &[String]) -> Result<Options, String> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let key = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {a:?}: options are --key value"))?;
            let value = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            pairs.push((key.to_string(), value.clone()));
        }
        Ok(Options(pairs))
    }

    /// Reject options the command does not take.
    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(format!(
                "unknown option --{k} (this command takes: --{})",
                known.join(", --")
            )),
            None => Ok(()),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn value<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{key} {v:?}: {e}")),
        }
    }
}

fn regenerate(seed: u64, days: f64, out: PathBuf) -> Result<(), String> {
    if !(days > 0.0 && days.is_finite()) {
        return Err(format!("--days must be a positive number, got {days}"));
    }
    let p = Qg2lParams::default();
    let m = Qg2l::new(p.clone());
    let t0 = Instant::now();
    let mut x = qg2l::random_initial_state(&p, seed);
    let total = days.round() as usize;
    let block = 30;
    let mut day = 0;
    while day < total {
        let n = block.min(total - day);
        m.advance(&mut x, STEPS_PER_DAY * n);
        day += n;
        println!(
            "day {day:5} E {:.5e} Z {:.5e}",
            m.energy(&x),
            m.enstrophy(&x)
        );
    }
    println!(
        "block-wise spin-up of {total} days took {:.1} s (series above)",
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let y = qg2l::regenerate_spinup(&out, seed, days)
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!(
        "wrote {}: spin_up(seed {seed}, {days} days) took {:.1} s, E {:.5e}",
        out.display(),
        t0.elapsed().as_secs_f64(),
        m.energy(&y)
    );
    Ok(())
}

fn equilibrium(seed: u64, years: f64) -> Result<(), String> {
    // Samples every 10 days; the statistics need samples past day 3600.
    if !(years > 10.0 && years.is_finite()) {
        return Err(format!("--years must be more than 10, got {years}"));
    }
    let p = Qg2lParams::default();
    let m = Qg2l::new(p.clone());
    let mut x = qg2l::random_initial_state(&p, seed);
    let samples = (years * 36.0).round() as usize;
    let mut e = Vec::with_capacity(samples);
    for _ in 0..samples {
        m.advance(&mut x, 10 * STEPS_PER_DAY);
        e.push(m.energy(&x));
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    // Sample k is day 10 (k + 1): days 1800-3600 are samples 180..360.
    println!(
        "mean E days 1800-3600: {:.5e}; days 3600-{}: {:.5e}",
        mean(&e[180..360]),
        10 * samples,
        mean(&e[360..])
    );
    let w: Vec<f64> = e[180..].chunks(18).map(mean).collect();
    let wm = mean(&w);
    let (lo, hi) = w
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(*v), b.max(*v)));
    let jumps = w
        .windows(2)
        .map(|p| (p[1] - p[0]).abs() / wm)
        .fold(0.0, f64::max);
    println!(
        "180-day means after day 1800: mean {wm:.4e}, min {lo:.4e}, max {hi:.4e}, \
         max successive change {jumps:.3}"
    );
    Ok(())
}

fn obs_stats(seed: u64, cycles: usize, resolution: usize) -> Result<(), String> {
    if cycles == 0 {
        return Err("--cycles must be at least 1".into());
    }
    let tb = Testbed::qg2l(resolution)?;
    let t0 = Instant::now();
    let mut x = tb.initial_truth(seed);
    let np = tb.space.geometry.n_points();
    let n_vars = tb.space.variables.len();
    let mut s2 = vec![0.0; n_vars];
    let (mut fs, mut fs2) = ([0.0; 2], [0.0; 2]);
    println!(
        "qg2l {resolution}²: initial truth in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    for _ in 0..cycles {
        tb.dynamics.forecast(&mut x);
        for f in 0..2 {
            for v in &x[f * np..(f + 1) * np] {
                fs[f] += v;
                fs2[f] += v * v;
            }
        }
        for (v, acc) in s2.iter_mut().enumerate() {
            let f = tb.space.variable_field(v, &x);
            *acc += f.iter().map(|a| a * a).sum::<f64>() / f.len() as f64;
        }
    }
    println!(
        "{cycles} cycles in {:.1} s ({:.1} ms per cycle of one member)",
        t0.elapsed().as_secs_f64(),
        1e3 * t0.elapsed().as_secs_f64() / cycles as f64
    );
    for (v, acc) in s2.iter().enumerate() {
        println!(
            "{}: rms {:.4}",
            tb.space.variables[v].name,
            (acc / cycles as f64).sqrt()
        );
    }
    let n = (cycles * np) as f64;
    for (f, name) in ["psi1", "psi2"].iter().enumerate() {
        let mean = fs[f] / n;
        println!(
            "{name}: mean {mean:.1}, std {:.1} m²/s",
            (fs2[f] / n - mean * mean).max(0.0).sqrt()
        );
    }
    Ok(())
}
