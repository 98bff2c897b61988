//! `assimd experiment --history` and `assimd plot skill` as a user runs them.

use assimd::plot::picture::read_png;
use assimd::plot::skill::colour;
use std::process::Command;

fn assimd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_assimd"))
        .args(args)
        .output()
        .expect("the assimd binary runs")
}

/// The history holds every scored cycle, its means are the summary's, and it plots; the progress
/// bar stays off when stderr is not a terminal (here: a pipe).
#[test]
fn experiment_history_matches_its_summary_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let h = dir.path().join("letkf.jsonl");
    let base = [
        "experiment",
        "--testbed",
        "l96",
        "--filter",
        "letkf",
        "--network",
        "full",
        "--localization-km",
        "8500",
        "--inflation",
        "1.02",
        "--cycles",
        "60",
        "--burn-in",
        "10",
        "--json",
        "--history",
    ];
    let out = assimd(&[&base[..], &[h.to_str().unwrap()]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "no progress bar on a pipe: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&h)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50, "cycles 11..=60 are scored");
    assert_eq!(lines[0]["cycle"], 11);
    assert_eq!(lines[49]["cycle"], 60);
    for (key, summary_key) in [
        ("rmse_a_truth", "rmse_a"),
        ("rmse_f_truth", "rmse_f"),
        ("spread_a", "spread_a"),
        ("crps_a", "crps_a"),
        ("rmse_a_withheld", "rmse_withheld_a"),
    ] {
        let mean = lines.iter().map(|l| l[key].as_f64().unwrap()).sum::<f64>() / 50.0;
        let want = s[summary_key].as_f64().unwrap();
        assert!(
            (mean - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{key}: history mean {mean} vs summary {want}"
        );
    }
    assert!(lines.iter().all(|l| l["filter"] == "letkf"));

    // A second run (a free run) overlaid on the first.
    let free = dir.path().join("free.jsonl");
    let out = assimd(&[
        "experiment",
        "--testbed",
        "l96",
        "--filter",
        "free",
        "--network",
        "full",
        "--cycles",
        "60",
        "--burn-in",
        "10",
        "--history",
        free.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = dir.path().join("skill.png");
    let out = assimd(&[
        "plot",
        "skill",
        "--input",
        h.to_str().unwrap(),
        "--input",
        free.to_str().unwrap(),
        "--output",
        png.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("100 points of letkf, free"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let c = read_png(&png).unwrap();
    assert_eq!(
        (c.width, c.height),
        (900, 70 + 2 * 350),
        "truth and withheld panels"
    );
    for i in 0..2 {
        assert!(
            c.pixels.chunks(3).filter(|p| *p == colour(i)).count() > 200,
            "run {i} drawn in its colour"
        );
    }

    // The one-line summary is not a history: the error names the fix.
    let summary = dir.path().join("summary.json");
    std::fs::write(&summary, serde_json::to_vec(&s).unwrap()).unwrap();
    let out = assimd(&[
        "plot",
        "skill",
        "--input",
        summary.to_str().unwrap(),
        "--output",
        png.to_str().unwrap(),
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--history"));
}
