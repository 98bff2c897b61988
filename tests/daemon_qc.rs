//! End-to-end quality control of `assimd run` against a real Mosquitto: the ingest checks (topic
//! binding, missing-value codes, physical ranges), gross errors, a stuck and a drifting station
//! streamed by `assimd simulate` with `[simulate.faults]`, and a wrecked state caught by the
//! divergence guard, whose alert rule promtool then evaluates on the daemon's own counter.

#[path = "common/daemon.rs"]
mod common;
use assimd::faults::{FaultInjector, Faults, StationBias};
use assimd::simulate::Simulator;
use assimd::wire::DEFAULT_MISSING_VALUES;
use assimd_models::testbed::Testbed;
use common::*;
use serde_json::Value;

/// The simulator's messages of one cycle (seed 101, the `[simulate]` default), as (topic, JSON).
fn cycle_messages(testbed: &str, network: &str, cycle: u64) -> Vec<(String, Value)> {
    let tb = Testbed::new(testbed.parse().unwrap());
    let mut sim = Simulator::new(
        tb.clone(),
        tb.network(network.parse().unwrap()).unwrap(),
        101,
    );
    for _ in 0..cycle {
        sim.step();
    }
    sim.messages()
        .iter()
        .map(|m| (m.topic.clone(), serde_json::to_value(&m.feature).unwrap()))
        .collect()
}

/// The shipped alert's description (configs/assimd-alerts.yml).
const DESCRIPTION: &str = "error: the analysis raised an error; non_finite: it produced non-finite values (both keep the background); divergence: the background was wrecked (values far outside climatology, or innovations far beyond its spread) and the filter rolled back to its last good analysis or restarted from climatological draws. See the daemon's log.";

fn rejected(text: &str, reason: &str) -> f64 {
    sample(
        text,
        &format!("assimd_obs_rejected_total{{reason=\"{reason}\"}}"),
    )
    .unwrap_or(f64::NAN)
}

/// Every topic-mismatch case, every default missing-value code and values outside the physical
/// range, published to a real Mosquitto: each is rejected under its reason and dead-lettered, and
/// every valid message of the run is journaled and assimilated.
#[test]
fn ingest_binds_topics_and_rejects_missing_codes_and_out_of_range_values() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"));
    let s = write_config(tmp.path(), broker.port, "");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        text.replace(
            "[ingest]\nreject_future = false\n",
            "[ingest]\nreject_future = false\nnetworks = [\"sim\"]\n",
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&s, &[]);
    let dead = Collector::start(broker.port, "test/deadletter/#");
    let per_cycle = messages_per_cycle("l96", "stations+satellite");
    simulate(&s, 1, 3);

    // Cycle 3's messages, changed (new ids, so that nothing is a duplicate of a valid one).
    let msgs = cycle_messages("l96", "stations+satellite", 3);
    let (st_topic, station) = msgs
        .iter()
        .find(|(t, _)| t == "obs/station/sim/S00")
        .cloned()
        .unwrap();
    let (sat_topic, granule) = msgs
        .iter()
        .find(|(t, _)| t.starts_with("obs/satellite/"))
        .cloned()
        .unwrap();
    let mut n = 0;
    let mut with_id = |v: &Value| {
        n += 1;
        let mut v = v.clone();
        v["id"] = Value::String(format!("bad-{n}"));
        serde_json::to_vec(&v).unwrap()
    };
    let t = |suffix: &str| format!("test/{suffix}");
    let mut burst: Vec<(String, Vec<u8>)> = Vec::new();
    // topic_mismatch: another station's topic, a withheld station's, a granule on a station topic,
    // a report on a satellite topic, another instrument, another platform, missing and extra
    // levels, the bare level, an empty level, a network not in ingest.networks.
    let mismatches = [
        ("obs/station/sim/S02".to_string(), &station),
        ("obs/station/sim/V00".into(), &station),
        ("obs/station/sim/S00".into(), &granule),
        (sat_topic.clone(), &station),
        (sat_topic.replace("blk4", "blk8"), &granule),
        (sat_topic.replace("sat1", "sat2"), &granule),
        ("obs/station/sim".into(), &station),
        ("obs/station/sim/S00/extra".into(), &station),
        ("obs/station".into(), &station),
        ("obs/station//S00".into(), &station),
        ("obs/station/rogue/S00".into(), &station),
    ];
    for (topic, payload) in &mismatches {
        burst.push((t(topic), with_id(payload)));
    }
    // missing_value: each default code in a station report, and one footprint of a granule.
    for code in DEFAULT_MISSING_VALUES {
        let mut v = station.clone();
        v["properties"]["observations"][0]["value"] = serde_json::json!(code);
        burst.push((t(&st_topic), with_id(&v)));
    }
    let mut g = granule.clone();
    g["properties"]["values"][1] = serde_json::json!(-9999.0);
    burst.push((t(&sat_topic), with_id(&g)));
    // out_of_range: l96's x lies in [-25, 30].
    for value in [30.5, -25.5, 1.0e4] {
        let mut v = station.clone();
        v["properties"]["observations"][0]["value"] = serde_json::json!(value);
        burst.push((t(&st_topic), with_id(&v)));
    }
    let mut g = granule.clone();
    g["properties"]["values"][0] = serde_json::json!(55.0);
    burst.push((t(&sat_topic), with_id(&g)));
    publish_all(broker.port, &burst);
    simulate(&s, 4, 3);

    let all = (6 * per_cycle) as f64;
    wait_for("all 6 cycles journaled and 4 committed", || {
        let text = scrape(s.metrics_port)?;
        (sample(&text, "assimd_obs_journaled_total")? >= all
            && sample(&text, "assimd_last_cycle")? >= 4.0)
            .then_some(())
    });
    let expected = mismatches.len() + DEFAULT_MISSING_VALUES.len() + 1 + 4;
    wait_for("every rejection dead-lettered", || {
        (dead.count_prefix("test/deadletter/") >= expected).then_some(())
    });
    let text = scrape(s.metrics_port).unwrap();
    assert_eq!(rejected(&text, "topic_mismatch"), mismatches.len() as f64);
    assert_eq!(
        rejected(&text, "missing_value"),
        (DEFAULT_MISSING_VALUES.len() + 1) as f64
    );
    assert_eq!(rejected(&text, "out_of_range"), 4.0);
    for other in [
        "malformed_json",
        "schema",
        "non_finite",
        "bad_sigma",
        "out_of_domain",
        "unknown_variable",
        "length_mismatch",
        "oversized",
    ] {
        assert_eq!(rejected(&text, other), 0.0, "{other}");
    }
    // Nothing good was refused: every simulated message journaled once, none a duplicate.
    assert_eq!(sample(&text, "assimd_obs_journaled_total"), Some(all));
    assert_eq!(sample(&text, "assimd_obs_duplicates_total"), Some(0.0));
    assert_eq!(
        dead.payloads("test/deadletter/topic_mismatch").len(),
        mismatches.len()
    );
    assert_eq!(
        dead.payloads("test/deadletter/missing_value").len(),
        DEFAULT_MISSING_VALUES.len() + 1
    );
    assert_eq!(dead.payloads("test/deadletter/out_of_range").len(), 4);
    // The dead letters are the payloads as published.
    let first: Value =
        serde_json::from_slice(&dead.payloads("test/deadletter/topic_mismatch")[0]).unwrap();
    assert_eq!(first["properties"]["station"], "S00");
    daemon.terminate();
    let state = inspect(&s.store);
    assert_eq!(
        committed_messages(&state)[..4],
        (1..=4).map(|k| (k, per_cycle)).collect::<Vec<_>>()[..]
    );
}

/// l96 with every grid point observed and the LETKF tuned for it
/// (configs/experiments/l96-full-letkf.toml).
const L96_FULL: &str =
    "[testbed]\nnetwork = \"full\"\n[letkf]\ninflation = 1.02\nlocalization_km = 8500\n";

/// Mean analysis RMSE against the truth of the committed cycles in `range`, from a store.
fn mean_rmse(state: &Value, range: std::ops::RangeInclusive<u64>) -> f64 {
    let v: Vec<f64> = state["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| range.contains(&c["cycle"].as_u64().unwrap()))
        .map(|c| c["filters"]["letkf"]["rmse_a_truth"].as_f64().unwrap())
        .collect();
    assert_eq!(
        v.len() as u64,
        range.end() - range.start() + 1,
        "cycles {range:?} all committed"
    );
    v.iter().sum::<f64>() / v.len() as f64
}

/// Run a daemon on its own broker over `cycles` simulated l96 `full` cycles with this extra
/// config, calling `raw(broker port)` after cycle `split` has been published (raw messages must
/// be timed in a window still open then); returns its store's inspection, the retained station
/// status and the final scrape.
fn run_l96_full(
    dir: &std::path::Path,
    extra: &str,
    cycles: u64,
    split: u64,
    raw: impl FnOnce(u16),
) -> (Value, Value, String) {
    let broker = Mosquitto::start(&dir.join("broker"));
    let s = write_config(dir, broker.port, &format!("{L96_FULL}{extra}"));
    let daemon = Daemon::start(&s, &[]);
    simulate(&s, 1, split);
    raw(broker.port);
    simulate(&s, split + 1, cycles - split);
    // Cutoff one cycle: the last cycle's observations close the window two cycles before.
    let last = (cycles - 2) as f64;
    wait_for("every closed cycle committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= last)
    });
    let text = scrape(s.metrics_port).unwrap();
    let status = Collector::start(broker.port, "test/stations");
    let stations: Value = wait_for("the retained station status", || {
        status
            .payloads("test/stations")
            .last()
            .map(|p| serde_json::from_slice(p).unwrap())
    });
    daemon.terminate();
    (inspect(&s.store), stations, text)
}

/// Gross errors (2 % of the values: 50 σ spikes and −9999 codes), a stuck station, a station
/// drifting +3 σ_o from cycle 250, topic mismatches and one report 10 σ off that passes every ingest
/// check: the first are rejected at ingest, the stuck and drifting stations blacklisted, the
/// report rejected by the background check and kept with its reason; the skill stays that of the
/// clean run.
#[test]
fn gross_errors_stuck_and_drifting_stations_are_caught_and_skill_is_kept() {
    const CYCLES: u64 = 400;
    const EXTRA: u64 = 300;
    let bias = StationBias {
        station: "S04".into(),
        sigmas: 3.0,
        from_cycle: 250,
    };
    let faults = Faults {
        gross_errors: 0.02,
        bias: Some(bias.clone()),
    };
    // What the simulator will inject (the same seeded injector as `assimd simulate`).
    let tb = Testbed::new("l96".parse().unwrap());
    let net = tb.network("full".parse().unwrap()).unwrap();
    let assimilated: Vec<String> = net
        .stations
        .iter()
        .filter(|s| !s.withheld)
        .map(|s| s.id.clone())
        .collect();
    let mut injector = FaultInjector::new(faults, 101, &assimilated);
    let stuck = injector.stuck_station().unwrap().to_string();
    let mut sim = Simulator::new(tb.clone(), net, 101);
    let mut extra_report = None;
    for k in 1..=CYCLES {
        sim.step();
        let mut m = sim.messages();
        injector.apply(k, &mut m);
        if k == EXTRA {
            // S10's clean report of this cycle, 10 σ_o off: inside [-25, 30], far outside k σ_d.
            let (topic, mut v) = cycle_messages("l96", "full", EXTRA)
                .into_iter()
                .find(|(t, _)| t.ends_with("/S10"))
                .unwrap();
            let x = v["properties"]["observations"][0]["value"]
                .as_f64()
                .unwrap();
            v["properties"]["observations"][0]["value"] = serde_json::json!(x + 10.0);
            v["id"] = Value::String("S10/extra".into());
            extra_report = Some((format!("test/{topic}"), serde_json::to_vec(&v).unwrap()));
        }
    }
    let inj = injector.injected;
    assert!(inj.spikes > 0 && inj.missing_codes > 0);
    let station = cycle_messages("l96", "full", 50)
        .into_iter()
        .find(|(t, _)| t.ends_with("/S20"))
        .unwrap()
        .1;
    let mut mismatch = station.clone();
    mismatch["id"] = Value::String("S20/mismatch".into());
    let mismatch = serde_json::to_vec(&mismatch).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let faulty = format!("[simulate.faults]\ngross_errors = 0.02\nbias = {{ station = \"S04\", sigmas = 3.0, from_cycle = {} }}\n", bias.from_cycle);
    let (state, stations, text) =
        run_l96_full(&tmp.path().join("faulty"), &faulty, CYCLES, EXTRA, |port| {
            publish_all(
                port,
                &[
                    ("test/obs/station/sim/S21".into(), mismatch.clone()),
                    ("test/obs/satellite/sat1/blk4".into(), mismatch.clone()),
                    ("test/obs/station/S20".into(), mismatch.clone()),
                    extra_report.clone().unwrap(),
                ],
            )
        });
    let (clean, _, _) = run_l96_full(&tmp.path().join("clean"), "", CYCLES, CYCLES / 2, |_| {});

    // Ingest: every −9999 and every spike (±50 σ_o leaves [-25, 30] from anywhere on l96's
    // attractor) refused under its reason; the three mismatches too.
    assert_eq!(rejected(&text, "missing_value"), inj.missing_codes as f64);
    assert_eq!(rejected(&text, "out_of_range"), inj.spikes as f64);
    assert_eq!(rejected(&text, "topic_mismatch"), 3.0);
    // The monitor: exactly the stuck and the drifting station, for those reasons, S04 within 30
    // cycles of its drift.
    let blacklisted: Vec<&Value> = stations["stations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["status"] == "blacklisted")
        .collect();
    let mut names: Vec<&str> = blacklisted
        .iter()
        .map(|l| l["station"].as_str().unwrap())
        .collect();
    names.sort();
    let mut want = vec![stuck.as_str(), "S04"];
    want.sort();
    assert_eq!(names, want, "{stations}");
    let line = |id: &str| blacklisted.iter().find(|l| l["station"] == id).unwrap();
    assert_eq!(line(&stuck)["reason"], "stuck");
    // A sudden +3 σ_o step: the CUSUM (`shift`) sees it before the running mean (`bias`).
    assert_eq!(line("S04")["reason"], "shift");
    let since = line("S04")["blacklisted_since"].as_u64().unwrap();
    assert!(
        since <= bias.from_cycle + 30,
        "S04 excluded from cycle {since}: {stations}"
    );
    assert_eq!(
        sample(&text, "assimd_station_blacklistings_total"),
        Some(2.0)
    );
    assert_eq!(sample(&text, "assimd_stations_blacklisted"), Some(2.0));
    // The 10 σ report: rejected by the background check, kept with its reason and departure.
    let records = state["qc_rejections"].as_array().unwrap();
    let extra = records
        .iter()
        .find(|r| r["record"]["message"] == "S10/extra")
        .expect("the 10 σ report is kept");
    assert_eq!(extra["cycle"], EXTRA);
    assert_eq!(extra["record"]["reason"], "background_check");
    assert!(extra["record"]["z"].as_f64().unwrap() > 5.0);
    assert!(
        sample(
            &text,
            "assimd_qc_rejected_total{modality=\"station\",reason=\"background_check\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &text,
            "assimd_qc_rejected_total{modality=\"station\",reason=\"blacklisted\"}"
        )
        .unwrap()
            > 0.0
    );
    let summary = state["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cycle"] == EXTRA)
        .unwrap();
    assert!(
        summary["qc"]["station"]["background_check"]
            .as_u64()
            .unwrap()
            >= 1,
        "{summary}"
    );
    // No divergence, and the skill of the clean run: within 5 % before the drift (gross errors,
    // the stuck station) and within 10 % from 20 cycles after S04's exclusion on (the bands of
    // issue 13's acceptance).
    assert_eq!(
        sample(
            &text,
            "assimd_analysis_failures_total{filter=\"letkf\",reason=\"divergence\"}"
        ),
        Some(0.0)
    );
    // After the spin-up from climatology (which the stuck station's first reports slow down).
    let before = 150..=bias.from_cycle - 1;
    let (a, b) = (
        mean_rmse(&state, before.clone()),
        mean_rmse(&clean, before.clone()),
    );
    let series = |st: &Value| {
        st["cycles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (c["filters"]["letkf"]["rmse_a_truth"].as_f64().unwrap() * 100.0).round() / 100.0
            })
            .collect::<Vec<_>>()
    };
    eprintln!(
        "gross errors, cycles {before:?}: RMSE {a:.4} with faults, {b:.4} clean ({:+.1} %)",
        100.0 * (a / b - 1.0)
    );
    assert!(
        a <= 1.05 * b,
        "cycles {before:?}: RMSE {a} with faults, {b} clean\n{:?}\n{:?}",
        series(&state),
        series(&clean)
    );
    // The cycle that blacklisted S04 re-ran the filters from the analysis before its change
    // point: Page's estimate lies within a few cycles of the drift's real start (a good station's
    // CUSUM run before a shift is short: 0-3 cycles on the tuning seeds).
    let replayed = state["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["cycle"] == since - 1)
        .map(|c| c["qc"]["replayed_from"].clone());
    let from = replayed.as_ref().and_then(Value::as_u64);
    assert!(
        from.is_some_and(|f| f + 5 >= bias.from_cycle && f < bias.from_cycle),
        "cycle {}: replayed_from {replayed:?}, drift from {}",
        since - 1,
        bias.from_cycle
    );
    let after = since + 20..=CYCLES - 2;
    let (a, b) = (
        mean_rmse(&state, after.clone()),
        mean_rmse(&clean, after.clone()),
    );
    eprintln!("S04 excluded from cycle {since}; cycles {after:?}: RMSE {a:.4} with faults, {b:.4} clean ({:+.1} %)", 100.0 * (a / b - 1.0));
    assert!(
        a <= 1.10 * b,
        "cycles {after:?}: RMSE {a} with faults, {b} clean\n{:?}\n{:?}",
        series(&state),
        series(&clean)
    );
}

/// A −9999 report that every check lets through (no missing-value codes, ranges and k opened up)
/// wrecks the LETKF analysis; the next cycle's divergence guard flags it, the filter rolls back to
/// its last good analysis, the failure counter (reason `divergence`) makes promtool's evaluation of
/// the shipped alert rule fire, and the state is back within 10 % of a clean run's skill.
#[test]
fn a_wrecked_state_is_flagged_recovered_and_alerted() {
    const CYCLES: u64 = 80;
    let tmp = tempfile::tempdir().unwrap();
    let (bad_topic, mut bad) = cycle_messages("l96", "full", 40)
        .into_iter()
        .find(|(t, _)| t.ends_with("/S12"))
        .unwrap();
    bad["properties"]["observations"][0]["value"] = serde_json::json!(-9999.0);
    bad["id"] = Value::String("S12/extra/40".into());
    let bad = serde_json::to_vec(&bad).unwrap();
    let permissive = "[qc.station]\nk = 1.0e6\n";
    let dir = tmp.path().join("wrecked");
    std::fs::create_dir_all(&dir).unwrap();
    // Open the ingest checks up through the config the test writes (no second [ingest] table).
    let (state, _, text) = {
        let broker = Mosquitto::start(&dir.join("broker"));
        let s = write_config(&dir, broker.port, &format!("{L96_FULL}{permissive}"));
        let cfg = std::fs::read_to_string(&s.config).unwrap();
        std::fs::write(&s.config, cfg.replace("[ingest]\nreject_future = false\n", "[ingest]\nreject_future = false\nmissing_values = []\n[ingest.ranges]\nx = [-1.0e6, 1.0e6]\n")).unwrap();
        let daemon = Daemon::start(&s, &[]);
        simulate(&s, 1, CYCLES / 2);
        publish_all(broker.port, &[(format!("test/{bad_topic}"), bad)]);
        simulate(&s, CYCLES / 2 + 1, CYCLES / 2);
        wait_for("every closed cycle committed", || {
            metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= (CYCLES - 2) as f64)
        });
        let text = scrape(s.metrics_port).unwrap();
        daemon.terminate();
        (inspect(&s.store), Value::Null, text)
    };
    let (clean, _, _) = run_l96_full(&tmp.path().join("clean"), "", CYCLES, CYCLES / 2, |_| {});
    let summary = |k: u64| {
        state["cycles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cycle"] == k)
            .unwrap()["filters"]["letkf"]
            .clone()
    };
    // The −9999 went into cycle 40's analysis; cycle 41's background is flagged and rolled back.
    // Wrecked: worse than climatology (l96's climatological standard deviation is 3.64).
    assert!(
        summary(40)["rmse_a_truth"].as_f64().unwrap() > 3.64,
        "the bad value wrecked cycle 40: {}",
        summary(40)
    );
    assert_eq!(
        summary(41)["failure_reason"],
        "divergence",
        "{}",
        summary(41)
    );
    assert!(
        summary(41)["analysis_failed"]
            .as_str()
            .unwrap()
            .contains("rolled back to the analysis of cycle 39"),
        "{}",
        summary(41)
    );
    let failures = sample(
        &text,
        "assimd_analysis_failures_total{filter=\"letkf\",reason=\"divergence\"}",
    )
    .unwrap();
    assert_eq!(failures, 1.0);
    // Recovered: cycles 41-60 within 10 % of the clean run's skill.
    let (a, b) = (mean_rmse(&state, 41..=60), mean_rmse(&clean, 41..=60));
    eprintln!(
        "after the wreck, cycles 41-60: RMSE {a:.4}, clean {b:.4} ({:+.1} %)",
        100.0 * (a / b - 1.0)
    );
    assert!(
        a <= 1.10 * b,
        "cycles 41-60: RMSE {a} after the wreck, {b} clean"
    );
    // The shipped alert rule fires on this counter (scraped every 5 minutes: 0, then the value).
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/assimd-alerts.yml");
    let test = tmp.path().join("divergence.test.yml");
    std::fs::write(
        &test,
        format!(
            "rule_files: [{}]\nevaluation_interval: 1m\ntests:\n  - interval: 5m\n    input_series:\n      - series: 'assimd_analysis_failures_total{{job=\"assimd\",instance=\"a\",filter=\"letkf\",reason=\"divergence\"}}'\n        values: '0x3 {failures}x20'\n    alert_rule_test:\n      - eval_time: 10m\n        alertname: AssimdAnalysisFailures\n        exp_alerts: []\n      - eval_time: 30m\n        alertname: AssimdAnalysisFailures\n        exp_alerts:\n          - exp_labels: {{severity: warning, job: assimd, instance: a, filter: letkf, reason: divergence}}\n            exp_annotations:\n              summary: \"the letkf analysis of assimd on a failed (divergence) in the last hour\"\n              description: \"{DESCRIPTION}\"\n",
            rules.display()
        ),
    )
    .unwrap();
    let (ok, out) = run_promtool(&["test", "rules", test.to_str().unwrap()], None);
    assert!(ok, "promtool test rules:\n{out}");
}

/// The operator's blacklist: written into the config file of a running daemon and applied on
/// SIGHUP (`systemctl reload`) without a restart; the retained status and `assimd stations` show
/// it, and the station's reports are journaled but not assimilated from the next cycle on.
#[test]
fn sighup_rereads_the_operators_blacklist() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"));
    let s = write_config(tmp.path(), broker.port, "");
    let daemon = Daemon::start(&s, &[]);
    let per_cycle = messages_per_cycle("l96", "stations+satellite");
    simulate(&s, 1, 20);
    wait_for("cycle 18 committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 18.0)
    });
    let blacklisted = "assimd_qc_rejected_total{modality=\"station\",reason=\"blacklisted\"}";
    assert_eq!(metric(s.metrics_port, blacklisted), Some(0.0));
    // A broken file is refused and the running settings stay.
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, format!("{good}\n[qc]\nblacklist = 7\n")).unwrap();
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    wait_for("the broken file to be refused", || {
        daemon
            .log_text()
            .contains("does not load, keeping the running settings")
            .then_some(())
    });
    std::fs::write(&s.config, format!("{good}\n[qc]\nblacklist = [\"S02\"]\n")).unwrap();
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    wait_for("the reload", || {
        daemon
            .log_text()
            .contains("SIGHUP: re-read [qc]")
            .then_some(())
    });
    let status = Collector::start(broker.port, "test/stations");
    simulate(&s, 21, 10);
    wait_for("cycle 28 committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 28.0)
    });
    // S02 reports one value per cycle: cycles 19-28 ran after the reload.
    let text = scrape(s.metrics_port).unwrap();
    assert_eq!(sample(&text, blacklisted), Some(10.0));
    let live: Value = wait_for("the retained status", || {
        status
            .payloads("test/stations")
            .last()
            .map(|p| serde_json::from_slice(p).unwrap())
    });
    assert_eq!(
        sample(&text, "assimd_stations_blacklisted"),
        Some(1.0),
        "{live}"
    );
    assert_eq!(
        sample(&text, "assimd_obs_journaled_total"),
        Some((30 * per_cycle) as f64),
        "blacklisted reports are still journaled"
    );
    assert_eq!(live["blacklisted"], serde_json::json!(["S02"]));
    assert_eq!(live["stations"][0]["station"], "S02");
    assert_eq!(live["stations"][0]["status"], "operator_blacklisted");
    daemon.terminate();
    let out = std::process::Command::new(ASSIMD)
        .args(["stations", "--json", "--store"])
        .arg(&s.store)
        .arg("--config")
        .arg(&s.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored["cycle"], 28);
    assert_eq!(stored["blacklisted"], serde_json::json!(["S02"]));
    let n = stored["stations"].as_array().unwrap().len();
    let network = Testbed::new("l96".parse().unwrap())
        .network("stations+satellite".parse().unwrap())
        .unwrap();
    assert_eq!(
        n,
        network.stations.iter().filter(|s| !s.withheld).count(),
        "every assimilated station is monitored"
    );
    let table = std::process::Command::new(ASSIMD)
        .args(["stations", "--store"])
        .arg(&s.store)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.starts_with("cycle 28:") && table.contains("S02"),
        "{table}"
    );
}
