//! The `assimd experiment` command as a user runs it.

use std::process::Command;

fn assimd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_assimd"))
        .args(args)
        .output()
        .expect("the assimd binary runs")
}

#[test]
fn json_summary_has_the_documented_keys_and_climatology_skill() {
    let out = assimd(&[
        "experiment",
        "--testbed",
        "l96",
        "--filter",
        "climatology",
        "--network",
        "full",
        "--cycles",
        "2000",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    for key in [
        "testbed",
        "filter",
        "network",
        "members",
        "cycles",
        "seed",
        "rmse_a",
        "rmse_f",
        "spread_a",
        "spread_skill",
        "crps_a",
        "seconds_per_cycle",
    ] {
        assert!(v.get(key).is_some(), "missing key {key} in {v}");
    }
    // Published climatological RMSE of Lorenz-96 (F = 8): 3.6 (the climatological standard deviation).
    let rmse = v["rmse_a"].as_f64().unwrap();
    assert!((rmse - 3.6).abs() < 0.15, "climatology RMSE {rmse}");
    // A calibrated Gaussian forecast N(μ, σ²) of truths drawn from it has E[CRPS] = σ/√π ≈ 0.564 σ
    // (Gneiting & Raftery 2007) while its RMSE is σ; the band leaves room for the climatology's
    // departures from a Gaussian and for the finite run.
    let crps = v["crps_a"].as_f64().unwrap();
    assert!(crps > 0.45 * rmse && crps < 0.65 * rmse, "CRPS {crps}");
}

#[test]
fn experiment_files_are_read_and_flags_override_them() {
    let dir = std::env::temp_dir().join(format!("assimd-exp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("x.toml");
    std::fs::write(
        &file,
        "filter = \"free\"\nmembers = 5\ncycles = 50\n[testbed]\nname = \"l96\"\nnetwork = \"sparse\"\n",
    )
    .unwrap();
    let out = assimd(&[
        "experiment",
        "--config",
        file.to_str().unwrap(),
        "--members",
        "7",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["members"].as_u64(),
            v["cycles"].as_u64(),
            v["network"].as_str()
        ),
        (Some(7), Some(50), Some("sparse"))
    );
    std::fs::write(
        &file,
        "filtr = \"free\"\n[testbed]\nname = \"l96\"\nnetwork = \"full\"\n",
    )
    .unwrap();
    let out = assimd(&["experiment", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field `filtr`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A file in the layout before the settings were unified names the new place of its keys.
    std::fs::write(
        &file,
        "filter = \"letkf\"\nlocalization_km = 100.0\n[testbed]\nname = \"l96\"\nnetwork = \"full\"\n",
    )
    .unwrap();
    let out = assimd(&["experiment", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("moved to [letkf] localization_km"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A newcomer's first command gets the tuned filter: without a file, the flags' testbed and
/// network select the tuned settings (configs/tuned.toml), which are the tuned file's, so the two
/// runs are the same run.
#[test]
fn flags_alone_get_the_tuned_settings() {
    let common = [
        "--cycles",
        "300",
        "--burn-in",
        "50",
        "--seed",
        "1",
        "--json",
    ];
    let mut flags = vec![
        "experiment",
        "--testbed",
        "l96",
        "--network",
        "full",
        "--filter",
        "letkf",
    ];
    flags.extend(common);
    let mut file = vec!["experiment", "--config"];
    // The tuned defaults of l96 `full` are the adaptive LETKF at the file's localisation.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/experiments/l96-full-adaptive.toml"
    );
    file.push(path);
    file.extend(common);
    let (a, b) = (assimd(&flags), assimd(&file));
    assert!(a.status.success() && b.status.success());
    let va: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let vb: serde_json::Value = serde_json::from_slice(&b.stdout).unwrap();
    assert_eq!(va["rmse_a"], vb["rmse_a"]);
    assert_eq!(va["spread_a"], vb["spread_a"]);
}

/// Every value each enumerated flag accepts is listed in its help.
#[test]
fn help_lists_every_accepted_value() {
    let out = assimd(&["experiment", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for v in ["free", "climatology", "enkf", "etkf", "letkf", "score"] {
        assert!(help.contains(v), "--filter: {v} missing from\n{help}");
    }
    for v in [
        "l96",
        "qg2l",
        "full",
        "sparse",
        "stations",
        "satellite",
        "stations+satellite",
    ] {
        assert!(help.contains(v), "{v} missing from\n{help}");
    }
    for v in ["member", "mean", "analysis", "sqrt", "letkf"] {
        assert!(help.contains(v), "--start: {v} missing from\n{help}");
    }
    let out = assimd(&["demo", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for v in ["l96", "qg2l", "stations+satellite"] {
        assert!(help.contains(v), "demo: {v} missing from\n{help}");
    }
}

#[test]
fn bad_arguments_fail_with_a_message_that_names_the_fix() {
    let out = assimd(&[
        "experiment",
        "--testbed",
        "qg2l",
        "--filter",
        "free",
        "--network",
        "sparse",
        "--cycles",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("use stations, satellite or stations+satellite"));
    let out = assimd(&[
        "experiment",
        "--testbed",
        "l96",
        "--filter",
        "letkf",
        "--network",
        "full",
        "--inflation",
        "0.2",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("letkf.inflation must be >= 1.0"));
    let out = assimd(&[
        "experiment",
        "--testbed",
        "l96",
        "--filter",
        "kalman",
        "--network",
        "full",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("possible values: free, climatology, enkf, etkf, letkf, score"));
    let l96 = ["experiment", "--testbed", "l96", "--filter", "letkf"];
    let out = assimd(&[&l96[..], &["--network", "full", "--resolution", "128"]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("testbed.resolution exists for qg2l only: remove it from [testbed]"));
    let qg = [
        "experiment",
        "--testbed",
        "qg2l",
        "--filter",
        "letkf",
        "--network",
        "stations",
    ];
    let out = assimd(&[&qg[..], &["--resolution", "100"]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("qg2l resolution 100 is not available: use one of [64, 128, 256]"));
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let out = assimd(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

const SHORT: [&str; 10] = [
    "experiment",
    "--testbed",
    "l96",
    "--network",
    "full",
    "--cycles",
    "60",
    "--burn-in",
    "10",
    "--json",
];

#[test]
fn seeds_run_each_seed_as_alone_and_report_the_mean_with_its_interval() {
    let mut args = SHORT.to_vec();
    args.extend(["--filter", "letkf", "--seeds", "3-5"]);
    let v = json_of(&args);
    let per: Vec<f64> = v["per_seed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rmse_a"].as_f64().unwrap())
        .collect();
    assert_eq!(v["seeds"], serde_json::json!([3, 4, 5]));
    // Each seed's run is the single run of that seed, bit for bit (seeds run in parallel).
    for (k, seed) in ["3", "4", "5"].iter().enumerate() {
        let mut one = SHORT.to_vec();
        one.extend(["--filter", "letkf", "--seed", seed]);
        assert_eq!(
            json_of(&one)["rmse_a"].as_f64().unwrap(),
            per[k],
            "seed {seed}"
        );
    }
    let mean = per.iter().sum::<f64>() / 3.0;
    let sd = (per.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    // Student's t, 2 degrees of freedom: 4.303.
    let half = 4.303 * sd / 3f64.sqrt();
    let rmse = v["rmse_a"].as_f64().unwrap();
    assert!((rmse - mean).abs() < 1e-12);
    assert!((v["rmse_a_lo"].as_f64().unwrap() - (mean - half)).abs() < 1e-9);
    assert!((v["rmse_a_hi"].as_f64().unwrap() - (mean + half)).abs() < 1e-9);
    for key in ["spread_skill_lo", "crps_a_hi"] {
        assert!(v[key].is_f64(), "missing {key}");
    }
}

#[test]
fn compare_reports_the_paired_difference_on_the_same_truths() {
    let dir = std::env::temp_dir().join(format!("assimd-cmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let other = dir.join("climatology.toml");
    std::fs::write(
        &other,
        "filter = \"climatology\"\n[testbed]\nname = \"l96\"\nnetwork = \"full\"\n",
    )
    .unwrap();
    let mut args = SHORT.to_vec();
    args.extend(["--filter", "letkf", "--seeds", "1-3", "--compare"]);
    args.push(other.to_str().unwrap());
    let v = json_of(&args);
    let this: Vec<f64> = v["per_seed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rmse_a"].as_f64().unwrap())
        .collect();
    let that: Vec<f64> = v["compare"]["per_seed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["rmse_a"].as_f64().unwrap())
        .collect();
    // --cycles and --burn-in applied to the compared file too.
    assert_eq!(v["compare"]["per_seed"][0]["cycles"], 60);
    let diff = this.iter().zip(&that).map(|(a, b)| a - b).sum::<f64>() / 3.0;
    assert!((v["diff"].as_f64().unwrap() - diff).abs() < 1e-12);
    // The LETKF (~0.2) beats climatology (~3.6) on every seed: the interval is far below zero.
    assert!(v["diff_hi"].as_f64().unwrap() < -2.0, "{v}");
    assert!(v["diff_lo"].as_f64().unwrap() < v["diff"].as_f64().unwrap());
    // A file compared with itself differs by exactly nothing.
    let mut same = SHORT.to_vec();
    same.extend(["--config", other.to_str().unwrap(), "--seeds", "1-2"]);
    same.extend(["--compare", other.to_str().unwrap()]);
    let s = json_of(&same);
    assert_eq!(
        (
            s["diff"].as_f64(),
            s["diff_lo"].as_f64(),
            s["diff_hi"].as_f64()
        ),
        (Some(0.0), Some(0.0), Some(0.0))
    );
    // Different truths cannot be paired.
    let full = dir.join("letkf-full.toml");
    std::fs::write(
        &full,
        "filter = \"letkf\"\ncycles = 60\n[testbed]\nname = \"l96\"\nnetwork = \"full\"\n",
    )
    .unwrap();
    let sparse = dir.join("letkf-sparse.toml");
    std::fs::write(
        &sparse,
        "filter = \"letkf\"\ncycles = 60\n[testbed]\nname = \"l96\"\nnetwork = \"sparse\"\n",
    )
    .unwrap();
    let out = assimd(&[
        "experiment",
        "--config",
        full.to_str().unwrap(),
        "--compare",
        sparse.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("same truths and observations"));
    let mut bad = SHORT.to_vec();
    bad.extend(["--filter", "letkf", "--seed", "1", "--seeds", "1-2"]);
    assert!(
        !assimd(&bad).status.success(),
        "--seed and --seeds conflict"
    );
}

#[test]
fn steps_per_cycle_and_obs_error_variance_shape_the_testbed() {
    // 8 steps of 0.05 per cycle: the free run's RMSE is that of climatology either way, but a
    // 48-hour window leaves the LETKF well above its 6-hour skill (DAPPER: ~1.0 vs ~0.38 on sparse).
    let mut args: Vec<&str> = SHORT
        .iter()
        .map(|a| if *a == "full" { "sparse" } else { a })
        .collect();
    args.extend(["--filter", "letkf"]);
    let short = json_of(&args)["rmse_a"].as_f64().unwrap();
    args.extend(["--steps-per-cycle", "8", "--obs-error-variance", "0.5"]);
    let long = json_of(&args)["rmse_a"].as_f64().unwrap();
    assert!(long > 1.5 * short, "Δt 0.4 {long} vs Δt 0.05 {short}");
    for (flag, value, message) in [
        (
            "--steps-per-cycle",
            "0",
            "steps_per_cycle must be in 1..=1000",
        ),
        (
            "--obs-error-variance",
            "0",
            "obs_error_variance must be a finite number > 0",
        ),
    ] {
        let mut bad = SHORT.to_vec();
        bad.extend(["--filter", "letkf", flag, value]);
        let out = assimd(&bad);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{err}");
    }
    let out = assimd(&[
        "experiment",
        "--testbed",
        "qg2l",
        "--network",
        "stations",
        "--filter",
        "letkf",
        "--steps-per-cycle",
        "2",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists for l96 only"));
}
