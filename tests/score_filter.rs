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
        .args(["experiment", "--config", "configs/experiments/l96-full-score.toml", "--cycles", "60", "--burn-in", "20"])
        .args(["--initial-spread", "1.0", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Started from truth + N(0, I) with all 40 points observed (R = I): a working filter keeps the
    // analysis error well below the observation error (1) and the climatology (3.6); a filter that
    // ignored the observations or the prior would drift towards either.
    let rmse = v["rmse_a"].as_f64().unwrap();
    let ss = v["spread_skill"].as_f64().unwrap();
    assert!(rmse < 0.6, "score filter analysis RMSE {rmse}");
    assert!(v["rmse_f"].as_f64().unwrap() > rmse, "the analysis must improve on the background");
    assert!((0.5..2.0).contains(&ss), "spread/skill {ss}");
}

#[test]
fn score_filter_without_a_bundle_names_the_fix() {
    let out = Command::new(env!("CARGO_BIN_EXE_assimd"))
        .args(["experiment", "--testbed", "l96", "--network", "full", "--filter", "score", "--cycles", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --bundle DIR"));
}
