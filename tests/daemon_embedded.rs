//! End-to-end test of `assimd run` against the embedded rumqttd broker (the demo's broker), with
//! both filters: the LETKF and the score filter with the shipped l96 bundle.

#[path = "common/daemon.rs"]
mod common;
use common::*;

#[test]
fn embedded_broker_both_filters_analyses_and_metrics_out() {
    let port = free_port();
    assimd::service::broker::start_embedded(port).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = write_config(
        tmp.path(),
        port,
        "[testbed]\nnetwork = \"full\"\n[letkf]\nlocalization_km = 8500\n[score]\nbundle = \"models/zoo/l96\"\ndevice = \"cuda\"\n[score.sampler]\nsteps = 8\n",
    );
    let daemon = Daemon::start(&s, &[]);
    let out = Collector::start(port, "test/analysis/+/summary");
    let per_cycle = messages_per_cycle("l96", "full");
    simulate(&s, 1, 6);
    wait_for("cycle 4 to be committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 4.0)
    });
    let all = (6 * per_cycle) as f64;
    wait_for("all 6 cycles journaled", || {
        metric(s.metrics_port, "assimd_obs_journaled_total").filter(|v| *v >= all)
    });
    let text = scrape(s.metrics_port).unwrap();
    assert_eq!(sample(&text, "assimd_obs_journaled_total"), Some(all));
    assert_eq!(
        sample(&text, "assimd_ort_execution_provider{provider=\"CPU\"}"),
        Some(1.0),
        "CUDA requested, none here: the CPU fallback is reported"
    );
    for f in ["letkf", "score"] {
        let a = sample(
            &text,
            &format!("assimd_analysis_rmse{{filter=\"{f}\",against=\"truth\"}}"),
        )
        .unwrap_or(f64::NAN);
        assert!(a.is_finite(), "{f}: no analysis RMSE exported");
        wait_for("4 summaries", || {
            (out.payloads(&format!("test/analysis/{f}/summary")).len() >= 4).then_some(())
        });
        let last: serde_json::Value = serde_json::from_slice(
            out.payloads(&format!("test/analysis/{f}/summary"))
                .last()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            last["obs_used"]["station"].as_u64(),
            Some(40),
            "{f}: {last}"
        );
        assert!(last["analysis_failed"].is_null(), "{f}: {last}");
    }
    daemon.terminate();
    let state = inspect(&s.store);
    assert_eq!(
        committed_messages(&state),
        (1..=4).map(|k| (k, per_cycle)).collect::<Vec<_>>()
    );
    assert_eq!(
        state["compat"]["filters"],
        serde_json::json!(["letkf", "score"])
    );
}

/// A changed config that the state depends on is refused with the way out in the message.
#[test]
fn incompatible_config_change_is_refused_with_the_reset_command() {
    let port = free_port();
    assimd::service::broker::start_embedded(port).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let s = write_config(tmp.path(), port, "");
    Daemon::start(&s, &[]).terminate();
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("keep = 100", "keep = 100\nmembers = 10");
    std::fs::write(&s.config, text).unwrap();
    let out = std::process::Command::new(ASSIMD)
        .arg("run")
        .arg("--config")
        .arg(&s.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("members") && err.contains("assimd reset --config"),
        "{err}"
    );
    let out = std::process::Command::new(ASSIMD)
        .arg("reset")
        .arg("--config")
        .arg(&s.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Daemon::start(&s, &[]).terminate();
}

/// `check-config` accepts the shipped config and names the fix for a bad one.
#[test]
fn check_config_accepts_the_default_and_names_the_fix() {
    let out = std::process::Command::new(ASSIMD)
        .args(["check-config", "configs/assimd.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    for (text, expect) in [
        ("[mqtt]\nprot = 1884\n", "unknown field `prot`"),
        ("[cycle]\nmembers = 1\n", "cycle.members must be >= 2"),
        (
            "[mqtt]\ntls_client_cert_file = \"/etc/hostname\"\n",
            "go together",
        ),
        (
            "[ingest]\ncutoff_seconds = -5\n",
            "ingest.cutoff_seconds must be >= 0",
        ),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = std::process::Command::new(ASSIMD)
            .arg("check-config")
            .arg(&bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{text}: {err}"
        );
    }
}
