//! Every experiment file in `configs/experiments/` reaches the skill it records in `[expected]`.
//!
//! A file's own run is repeated when it takes under a minute in release (the l96 EnKF family,
//! 5,000 cycles each; the arena's l96 LETKF and start-only files, 2,000 cycles); a slower one (the l96 score files, 2,000 cycles of 0.05-0.15 s; qg2l,
//! 5,000 LETKF cycles of 0.2 s or 400 score-filter cycles of 1.9 s) records a shorter run in
//! `expected.short_cycles` (and `short_burn_in`) with its `short_rmse_a`, measured with the same
//! file, which is repeated instead. Runs are deterministic for a seed: the
//! 0.005 slack absorbs floating-point differences between CPUs and ONNX Runtime builds in the
//! stable regimes. In the intermittent ones (the long window, `sparse`, `satellite`) a change of
//! the arithmetic at the rounding level grows over a long run into a different, equally likely
//! trajectory whose time mean can differ by several per cent, so their values are re-measured
//! whenever the filters' arithmetic changes (issue 17, docs/benchmarks.md).
//! The score files need ONNX Runtime (`source scripts/setup.sh` sets ORT_DYLIB_PATH).

use assimd::experiment::{run, ExperimentFile};
use std::path::Path;

fn check(name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Bundle paths in the files are relative to the repository.
    std::env::set_current_dir(root).unwrap();
    let path = root.join("configs/experiments").join(name);
    let file = ExperimentFile::load(&path).unwrap();
    let expected = file
        .expected
        .clone()
        .unwrap_or_else(|| panic!("{name} records no [expected] skill"));
    let mut spec = file.spec().unwrap();
    let (want, what) = match (expected.short_cycles, expected.short_rmse_a) {
        (Some(k), Some(r)) => {
            spec.cycles = k;
            spec.burn_in = expected.short_burn_in.or(spec.burn_in);
            (r, format!("short run, {k} cycles"))
        }
        (None, None) => (expected.rmse_a, format!("{} cycles", spec.cycles)),
        _ => panic!("{name}: short_cycles and short_rmse_a go together"),
    };
    let s = run(&spec).unwrap();
    eprintln!(
        "{name} ({what}): rmse_a {:.4} spread/skill {:.3} (expected {want:.4}, bound {})",
        s.rmse_a, s.spread_skill, expected.max_rmse_a
    );
    assert!(
        expected.rmse_a <= expected.max_rmse_a,
        "{name}: the recorded rmse_a {} is above its bound {}",
        expected.rmse_a,
        expected.max_rmse_a
    );
    assert!(
        (s.rmse_a - want).abs() < 0.005 * want.max(1.0),
        "{name} ({what}): rmse_a {} differs from the recorded {want}",
        s.rmse_a
    );
}

/// Issue 16's start-only controls: the score filter with `start = "letkf"`, the diffusion off
/// (`steps = 0`) and no RTPS is its tuned LETKF file exactly, on the same truths and observations:
/// the same RMSE to the last bit, so that the arena's "start-only" row is the LETKF's and the score
/// row's difference to it is what the diffusion adds.
#[test]
fn start_only_files_are_their_letkf_exactly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::set_current_dir(root).unwrap();
    let dir = root.join("configs/experiments");
    let mut pairs = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix("-start.toml") else {
            continue;
        };
        let text = std::fs::read_to_string(dir.join(&name)).unwrap();
        if !text.contains("start = \"letkf\"") {
            continue; // an issue-15 start (the square-root update under the bundle's Gaussian)
        }
        let spec = |f: &str| {
            let mut s = ExperimentFile::load(&dir.join(f)).unwrap().spec().unwrap();
            s.cycles = 120;
            s.burn_in = Some(20);
            s
        };
        let (a, b) = (spec(&name), spec(&format!("{stem}-letkf.toml")));
        let (ra, rb) = (run(&a).unwrap(), run(&b).unwrap());
        assert_eq!(
            (ra.rmse_a, ra.spread_a),
            (rb.rmse_a, rb.spread_a),
            "{name} against {stem}-letkf.toml"
        );
        pairs += 1;
    }
    assert!(
        pairs >= 3,
        "only {pairs} start-only files start from the LETKF"
    );
}

/// One test per file, so that they run in parallel and a failure names its file.
macro_rules! files {
    ($($test:ident => $file:literal),* $(,)?) => {
        $(#[test] fn $test() { check($file) })*

        #[test]
        fn every_experiment_file_has_a_test() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/experiments");
            let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".toml"))
                .collect();
            on_disk.sort();
            let mut tested = vec![$($file.to_string()),*];
            tested.sort();
            assert_eq!(on_disk, tested, "add a line to files! in tests/tuned_skill.rs");
        }
    };
}

files! {
    l96_full_enkf => "l96-full-enkf.toml",
    l96_full_etkf => "l96-full-etkf.toml",
    l96_full_letkf => "l96-full-letkf.toml",
    l96_full_score => "l96-full-score.toml",
    l96_full_start => "l96-full-start.toml",
    l96_full_adaptive => "l96-full-adaptive.toml",
    l96_sparse_adaptive => "l96-sparse-adaptive.toml",
    l96_long_window_letkf => "l96-sparse-r0.5-dt0.4-letkf.toml",
    l96_long_window_adaptive => "l96-sparse-r0.5-dt0.4-adaptive.toml",
    l96_long_window_start => "l96-sparse-r0.5-dt0.4-start.toml",
    l96_long_window_score => "l96-sparse-r0.5-dt0.4-score.toml",
    l96_long_window_n20_letkf => "l96-sparse-r0.5-dt0.4-n20-letkf.toml",
    l96_long_window_n20_gaussian => "l96-sparse-r0.5-dt0.4-n20-gaussian.toml",
    l96_long_window_n20_score => "l96-sparse-r0.5-dt0.4-n20-score.toml",
    l96_long_window_n20_start => "l96-sparse-r0.5-dt0.4-n20-start.toml",
    l96_full_long_window_letkf => "l96-full-dt0.4-letkf.toml",
    l96_full_long_window_adaptive => "l96-full-dt0.4-adaptive.toml",
    l96_full_long_window_start => "l96-full-dt0.4-start.toml",
    l96_full_long_window_score => "l96-full-dt0.4-score.toml",
    l96_full_n8_letkf => "l96-full-n8-letkf.toml",
    l96_full_n8_adaptive => "l96-full-n8-adaptive.toml",
    l96_full_n8_start => "l96-full-n8-start.toml",
    l96_full_n8_score => "l96-full-n8-score.toml",
    qg2l_stations_satellite_adaptive => "qg2l-stations+satellite-adaptive.toml",
    qg2l_stations_satellite_n16_letkf => "qg2l-stations+satellite-n16-letkf.toml",
    qg2l_stations_satellite_n16_adaptive => "qg2l-stations+satellite-n16-adaptive.toml",
    qg2l_stations_satellite_n16_start => "qg2l-stations+satellite-n16-start.toml",
    qg2l_stations_satellite_n16_score => "qg2l-stations+satellite-n16-score.toml",
    l96_satellite_letkf => "l96-satellite-letkf.toml",
    l96_sparse_letkf => "l96-sparse-letkf.toml",
    l96_sparse_score => "l96-sparse-score.toml",
    l96_stations_satellite_letkf => "l96-stations+satellite-letkf.toml",
    l96_stations_satellite_score => "l96-stations+satellite-score.toml",
    l96_stations_letkf => "l96-stations-letkf.toml",
    qg2l_satellite_letkf => "qg2l-satellite-letkf.toml",
    qg2l_satellite_score => "qg2l-satellite-score.toml",
    qg2l_stations_satellite_letkf => "qg2l-stations+satellite-letkf.toml",
    qg2l_stations_satellite_score => "qg2l-stations+satellite-score.toml",
    qg2l_stations_letkf => "qg2l-stations-letkf.toml",
    qg2l_stations_score => "qg2l-stations-score.toml",
}
