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
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/experiments/l96-full-letkf.toml"
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
    for v in ["member", "mean", "analysis", "sqrt"] {
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
}
