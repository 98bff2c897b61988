//! The score-based filter cycling on Lorenz-96 with the shipped bundle, through `assimd experiment`.
//! Needs ONNX Runtime: `scripts/test` installs it and sets ORT_DYLIB_PATH.

use std::process::Command;

#[test]
fn score_filter_cycles_and_tracks_the_truth() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "set ORT_DYLIB_PATH to libonnxruntime.so.1.31.1 from the onnxruntime==1.31.1 wheel, or run scripts/test"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_assimd"))
        .current_dir(root)
        .args([
            "experiment",
            "--config",
            "configs/experiments/l96-full-score.toml",
            "--cycles",
            "60",
            "--burn-in",
            "20",
        ])
        .args(["--initial-spread", "1.0", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let letkf = experiment_json(
        root,
        "configs/experiments/l96-full-letkf.toml",
        &[
            "--cycles",
            "60",
            "--burn-in",
            "20",
            "--initial-spread",
            "1.0",
        ],
    );
    // Started from truth + N(0, I) with all 40 points observed (R = I). Measured over these 60
    // cycles on seeds 1-5 with the issue-16 file (LETKF start, sigma_start 0.02 x spread): score
    // 0.160 / 0.176 / 0.193 / 0.244 / 0.206, the tuned LETKF on the same cycles 0.159 / 0.179 /
    // 0.191 / 0.241 / 0.209, a ratio of 0.98-1.01; spread/skill 0.95-1.40 (the issue-15 sampler:
    // ratio 1.03-1.24, spread/skill 1.03-1.31). The bands, kept from issue 5: at most 1.4 times the
    // LETKF, below issue 5's bound of 0.30 for the cycled filter, spread/skill 0.8-1.6. A filter that
    // ignored the observations would drift towards the climatology (3.6); one that ignored the
    // prior would sit near the observation error (1).
    let rmse = v["rmse_a"].as_f64().unwrap();
    let rl = letkf["rmse_a"].as_f64().unwrap();
    let ss = v["spread_skill"].as_f64().unwrap();
    assert!(rmse < 0.30, "score filter analysis RMSE {rmse}");
    assert!(
        rmse <= 1.4 * rl,
        "score filter RMSE {rmse} against the LETKF's {rl}"
    );
    assert!(
        v["rmse_f"].as_f64().unwrap() > rmse,
        "the analysis must improve on the background"
    );
    assert!((0.8..1.6).contains(&ss), "spread/skill {ss}");
}

#[test]
fn score_filter_without_a_bundle_names_the_fix() {
    // Outside the repository there is no models/zoo/l96 to default to.
    let out = Command::new(env!("CARGO_BIN_EXE_assimd"))
        .current_dir(std::env::temp_dir())
        .args([
            "experiment",
            "--testbed",
            "l96",
            "--network",
            "full",
            "--filter",
            "score",
            "--cycles",
            "2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give --bundle DIR"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bundle_for_another_grid_fails_before_the_run_and_names_the_fix() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "set ORT_DYLIB_PATH (scripts/setup.sh does)"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_assimd"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "experiment",
            "--config",
            "configs/experiments/qg2l-stations+satellite-n16-score.toml",
            "--resolution",
            "128",
            "--cycles",
            "2",
            "--burn-in",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("models states of 8192 values ([2, 64, 64]), this testbed's have 32768: use the grid the bundle was trained for (qg2l bundles: [testbed] resolution = 64)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 5's must on l96 `full`: the shipped score-filter file, cycled 1,000 times from a
/// climatological start on test seed 1, stays at or below its `max_rmse_a` (0.30; measured 0.184 over
/// 2,000 cycles) with spread/skill within 0.7–1.3.
#[test]
fn l96_full_score_file_meets_the_issue_bound() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "set ORT_DYLIB_PATH (scripts/setup.sh does)"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let file = "configs/experiments/l96-full-score.toml";
    let text = std::fs::read_to_string(std::path::Path::new(root).join(file)).unwrap();
    let max: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("max_rmse_a = "))
        .expect("the file records max_rmse_a")
        .trim()
        .parse()
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_assimd"))
        .current_dir(root)
        .args([
            "experiment",
            "--config",
            file,
            "--cycles",
            "1000",
            "--burn-in",
            "200",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (rmse, ss) = (
        v["rmse_a"].as_f64().unwrap(),
        v["spread_skill"].as_f64().unwrap(),
    );
    assert!(rmse <= max, "score filter on l96 full: RMSE {rmse} > {max}");
    assert!((0.7..=1.3).contains(&ss), "spread/skill {ss}");
}

fn experiment_json(root: &str, file: &str, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_assimd"))
        .current_dir(root)
        .args(["experiment", "--config", file, "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The latent qg2l score filter cycles stably next to the LETKF it starts from: the shipped
/// stations+satellite file over 120 cycles from a climatological start (test seed 1) stays within
/// 20% of the LETKF's RMSE over the same cycles, with spread/skill within 0.7–1.3. Before its
/// analyses became increments on the LETKF members it diverged (4,693 against the LETKF's 281 over
/// 400 cycles); measured now over 400 cycles: 306 against 281, spread/skill 0.98.
#[test]
fn qg2l_score_filter_cycles_next_to_its_letkf() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "set ORT_DYLIB_PATH (scripts/setup.sh does)"
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let cycles = ["--cycles", "120", "--burn-in", "60"];
    let score = experiment_json(
        root,
        "configs/experiments/qg2l-stations+satellite-score.toml",
        &cycles,
    );
    let letkf = experiment_json(
        root,
        "configs/experiments/qg2l-stations+satellite-letkf.toml",
        &cycles,
    );
    let (rs, rl) = (
        score["rmse_a"].as_f64().unwrap(),
        letkf["rmse_a"].as_f64().unwrap(),
    );
    let ss = score["spread_skill"].as_f64().unwrap();
    eprintln!(
        "qg2l stations+satellite, 120 cycles: score {rs:.1} (spread/skill {ss:.2}), LETKF {rl:.1}"
    );
    assert!(
        rs <= 1.2 * rl,
        "score filter RMSE {rs} against the LETKF's {rl}"
    );
    assert!((0.7..=1.3).contains(&ss), "spread/skill {ss}");
}
