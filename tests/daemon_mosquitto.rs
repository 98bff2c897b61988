//! End-to-end tests of `assimd run` against a real Mosquitto (Debian package) on a free port, with
//! the queue limits of configs/mosquitto.conf. Observations come from `assimd simulate` (l96,
//! stations+satellite, with the truth) and from raw publishes.

#[path = "common/daemon.rs"]
mod common;
use common::*;

const TB: &str = "l96";
const NET: &str = "stations+satellite";

/// Observations in, analyses and metrics out; SIGTERM stops cleanly.
#[test]
fn observations_in_analyses_and_metrics_out() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"));
    let s = write_config(tmp.path(), broker.port, "");
    let daemon = Daemon::start(&s, &[]);
    let summaries = Collector::start(broker.port, "test/analysis/#");
    let per_cycle = messages_per_cycle(TB, NET);
    simulate(&s, 1, 8);
    // Cutoff one cycle: the observations of cycle 8 close the window of cycle 6.
    wait_for("cycle 6 to be committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 6.0)
    });
    // Every message of cycle 8 journaled (the first of them closed window 6).
    let all = (8 * per_cycle) as f64;
    wait_for("all 8 cycles journaled", || {
        metric(s.metrics_port, "assimd_obs_journaled_total").filter(|v| *v >= all)
    });
    let text = scrape(s.metrics_port).unwrap();
    assert_eq!(sample(&text, "assimd_obs_journaled_total"), Some(all));
    assert_eq!(
        sample(&text, "assimd_obs_assimilated_total"),
        Some((6 * per_cycle) as f64)
    );
    assert_eq!(
        sample(&text, "assimd_obs_rejected_total{reason=\"schema\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "assimd_obs_late_total"), Some(0.0));
    assert_eq!(sample(&text, "assimd_mqtt_connected"), Some(1.0));
    let rmse = sample(
        &text,
        "assimd_analysis_rmse{filter=\"letkf\",against=\"truth\"}",
    )
    .expect("analysis RMSE against truth exported");
    assert!(rmse.is_finite());
    assert!(sample(
        &text,
        "assimd_background_rmse{filter=\"letkf\",against=\"truth\"}"
    )
    .is_some());
    assert!(sample(
        &text,
        "assimd_analysis_rmse{filter=\"letkf\",against=\"withheld\"}"
    )
    .is_some());
    assert!(
        text.contains("assimd_cycle_duration_seconds_bucket"),
        "cycle durations are a histogram"
    );
    assert!(text.contains("assimd_omb_rms{filter=\"letkf\",modality=\"satellite\"}"));

    wait_for("six summaries and means", || {
        (summaries.payloads("test/analysis/letkf/summary").len() >= 6).then_some(())
    });
    let all: Vec<serde_json::Value> = summaries
        .payloads("test/analysis/letkf/summary")
        .iter()
        .map(|p| serde_json::from_slice(p).unwrap())
        .collect();
    let total = |key: &str| all.iter().map(|v| v[key].as_f64().unwrap()).sum::<f64>();
    assert!(
        total("rmse_a_truth") < total("rmse_f_truth"),
        "over 6 cycles the analyses improve on their backgrounds"
    );
    let last = all.last().unwrap().clone();
    assert_eq!(last["filter"], "letkf");
    assert!(last["rmse_a_truth"].as_f64().unwrap().is_finite());
    assert!(
        last["obs"]["satellite"].as_u64().unwrap() > 0,
        "a granule of footprints per cycle: {last}"
    );
    let mean = summaries
        .payloads("test/analysis/letkf/mean")
        .last()
        .unwrap()
        .clone();
    assert_eq!(&mean[..8], b"ASSIMD01");
    assert_eq!(u32::from_le_bytes(mean[24..28].try_into().unwrap()), 40);
    assert_eq!(mean.len(), 32 + 4 * 40);

    daemon.terminate();
    let state = inspect(&s.store);
    assert_eq!(state["assimilated_up_to"], 6);
    assert_eq!(
        committed_messages(&state),
        (1..=6).map(|k| (k, per_cycle)).collect::<Vec<_>>()
    );

    // One cycle's journal: a committed cycle with its summary, an open one without, and a cycle
    // the store never had.
    for (k, committed) in [(6, true), (8, false)] {
        let c = inspect_cycle(&s.store, k).unwrap();
        assert_eq!(c["committed"], committed, "cycle {k}");
        let messages = c["messages"].as_array().unwrap();
        assert_eq!(messages.len() as u64, per_cycle, "cycle {k}: {c}");
        let ids: std::collections::BTreeSet<&str> =
            messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), messages.len(), "message ids are unique");
        let stations = messages.iter().filter(|m| m["station"].is_string()).count();
        let granules = messages.len() - stations;
        assert!(stations > 0 && granules > 0, "stations and a granule: {c}");
        assert!(messages
            .iter()
            .all(|m| !m["obs"].as_array().unwrap().is_empty()));
        if committed {
            assert_eq!(c["summary"]["cycle"], k);
            assert_eq!(c["summary"]["messages"].as_u64(), Some(per_cycle));
            assert_eq!(
                c["summary"]["obs"]["satellite"].as_u64().unwrap() > 0,
                granules > 0
            );
        } else {
            assert!(c["summary"].is_null(), "an open cycle has no summary: {c}");
        }
    }
    let err = inspect_cycle(&s.store, 100).unwrap_err();
    assert!(
        err.contains("cycle 100") && err.contains("cycle.keep"),
        "a cycle the store does not hold: {err}"
    );
}

/// A burst of malformed and duplicate messages is rejected and counted, sent to the dead-letter
/// topic, and cycling goes on with exactly the valid observations.
#[test]
fn malformed_and_duplicate_burst_is_counted_while_cycling_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"));
    let s = write_config(tmp.path(), broker.port, "");
    let daemon = Daemon::start(&s, &[]);
    let dead = Collector::start(broker.port, "test/deadletter/#");
    let per_cycle = messages_per_cycle(TB, NET);
    simulate(&s, 1, 4);

    // Duplicates: cycle 4's own messages again (journaled, window still open).
    use assimd_models::testbed::Testbed;
    let tb = Testbed::new(TB.parse().unwrap());
    let mut sim = assimd::simulate::Simulator::new(
        tb.clone(),
        tb.network(NET.parse().unwrap()).unwrap(),
        101,
    );
    for _ in 0..4 {
        sim.step();
    }
    let valid: Vec<(String, Vec<u8>)> = sim
        .messages()
        .iter()
        .map(|m| {
            (
                format!("test/{}", m.topic),
                serde_json::to_vec(&m.feature).unwrap(),
            )
        })
        .collect();
    let station = String::from_utf8(valid[0].1.clone()).unwrap();
    let t = "test/obs/station/sim/S00".to_string();
    let mut burst = Vec::new();
    for i in 0..30 {
        burst.push((
            t.clone(),
            format!("{{\"type\":\"Feature\",\"id\":{i}").into_bytes(),
        )); // truncated JSON
    }
    for _ in 0..20 {
        burst.push((
            t.clone(),
            station
                .replacen("\"value\":", "\"value\":NaN,\"x\":", 1)
                .into_bytes(),
        ));
    }
    for _ in 0..15 {
        burst.push((
            t.clone(),
            station
                .replace("45.0", "89.0")
                .replace("45]", "89]")
                .into_bytes(),
        ));
    }
    for _ in 0..10 {
        burst.push((
            t.clone(),
            station
                .replace("\"var\":\"x\"", "\"var\":\"humidity\"")
                .into_bytes(),
        ));
    }
    for _ in 0..5 {
        burst.push((
            t.clone(),
            station.replace("\"sigma\":", "\"sigma\":-").into_bytes(),
        ));
    }
    burst.extend(valid.iter().cloned());
    publish_all(broker.port, &burst);
    simulate(&s, 5, 4);
    wait_for("cycle 6 to be committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 6.0)
    });
    let all = (8 * per_cycle) as f64;
    wait_for("all 8 cycles journaled", || {
        metric(s.metrics_port, "assimd_obs_journaled_total").filter(|v| *v >= all)
    });
    let text = scrape(s.metrics_port).unwrap();
    let r = |reason: &str| {
        sample(
            &text,
            &format!("assimd_obs_rejected_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(f64::NAN)
    };
    assert_eq!(r("malformed_json"), 30.0);
    assert_eq!(r("non_finite"), 20.0);
    assert_eq!(r("out_of_domain"), 15.0);
    assert_eq!(r("unknown_variable"), 10.0);
    assert_eq!(r("bad_sigma"), 5.0);
    assert_eq!(
        sample(&text, "assimd_obs_duplicates_total"),
        Some(valid.len() as f64)
    );
    assert_eq!(
        sample(&text, "assimd_obs_journaled_total"),
        Some((8 * per_cycle) as f64)
    );
    wait_for("80 dead letters", || {
        (dead.count_prefix("test/deadletter/") >= 80).then_some(())
    });
    // A new message for a closed window is late: counted, not assimilated.
    let late = station.replace("\"id\":\"", "\"id\":\"late-");
    publish_all(broker.port, &[(t.clone(), late.into_bytes())]);
    wait_for("the late message to be counted", || {
        metric(s.metrics_port, "assimd_obs_late_total").filter(|v| *v == 1.0)
    });
    assert_eq!(dead.payloads("test/deadletter/unknown_variable").len(), 10);
    daemon.terminate();
    let state = inspect(&s.store);
    assert_eq!(
        committed_messages(&state),
        (1..=6).map(|k| (k, per_cycle)).collect::<Vec<_>>()
    );
}

/// SIGKILL of the daemon mid-cycle (after the analyses of cycle 4, before their commit), then a
/// restart while the simulator keeps publishing: the state resumes from cycle 3 and every
/// acknowledged observation is assimilated exactly once.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the crash-test fault hook: cargo test --features assimd/test-hooks (scripts/test does)"
)]
fn sigkill_mid_cycle_then_restart_assimilates_everything_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"));
    let s = write_config(tmp.path(), broker.port, "");
    let per_cycle = messages_per_cycle(TB, NET);
    let daemon = Daemon::start(&s, &[("ASSIMD_TEST_STALL_BEFORE_COMMIT", "4")]);
    simulate(&s, 1, 7);
    wait_for("the daemon to stall before committing cycle 4", || {
        daemon
            .log_text()
            .contains("stalling before the commit of cycle 4")
            .then_some(())
    });
    daemon.kill();
    // While it is down the broker queues the rest for its persistent session.
    simulate(&s, 8, 5);
    let daemon = Daemon::start(&s, &[]);
    wait_for("cycle 10 to be committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 10.0)
    });
    let log = daemon.log_text();
    daemon.terminate();
    assert!(
        log.contains("committed=3"),
        "the restart resumes from cycle 3:\n{log}"
    );
    let state = inspect(&s.store);
    assert_eq!(state["assimilated_up_to"], 10);
    assert_eq!(
        committed_messages(&state),
        (1..=10).map(|k| (k, per_cycle)).collect::<Vec<_>>()
    );
    // Cycles 11 and 12 may be partly journaled at SIGTERM (the rest stays with the broker), never twice.
    let journaled = state["journaled_total"].as_u64().unwrap();
    assert!(
        journaled > 10 * per_cycle && journaled <= 12 * per_cycle,
        "journaled {journaled} of {} published",
        12 * per_cycle
    );
    assert_eq!(
        state["assimilated_messages_total"].as_u64(),
        Some(10 * per_cycle),
        "every message of cycles 1-10 assimilated once"
    );
}

/// Broker restart: the daemon reconnects to its persistent session, and the messages published
/// before it is back are delivered to it; nothing is lost.
#[test]
fn broker_restart_daemon_reconnects_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&tmp.path().join("broker"));
    let s = write_config(tmp.path(), broker.port, "");
    let per_cycle = messages_per_cycle(TB, NET);
    let daemon = Daemon::start(&s, &[]);
    simulate(&s, 1, 4);
    wait_for("cycle 2 to be committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 2.0)
    });
    broker.stop();
    wait_for("the daemon to notice", || {
        metric(s.metrics_port, "assimd_mqtt_connected").filter(|v| *v == 0.0)
    });
    broker.restart();
    simulate(&s, 5, 6);
    wait_for_or(
        "cycle 8 to be committed",
        || metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 8.0),
        || {
            format!(
                "{}\n{}",
                daemon.log_text(),
                std::fs::read_to_string(broker.dir.join("mosquitto.log")).unwrap_or_default()
            )
        },
    );
    let errors = metric(s.metrics_port, "assimd_mqtt_connection_errors_total").unwrap_or(0.0);
    assert!(errors >= 1.0, "the connection loss was counted");
    assert_eq!(
        metric(s.metrics_port, "assimd_mqtt_sessions_lost_total"),
        Some(0.0),
        "the persistent broker kept the session"
    );
    daemon.terminate();
    let state = inspect(&s.store);
    assert_eq!(
        committed_messages(&state),
        (1..=8).map(|k| (k, per_cycle)).collect::<Vec<_>>()
    );
    let journaled = state["journaled_total"].as_u64().unwrap();
    assert!(
        journaled > 8 * per_cycle && journaled <= 10 * per_cycle,
        "journaled {journaled} of {} published",
        10 * per_cycle
    );
    assert_eq!(
        state["assimilated_messages_total"].as_u64(),
        Some(8 * per_cycle)
    );
}

/// A broker that dies with publications in flight and comes back without their session (here the
/// simulator's clean session on one broker; a cluster that lost a session record does the same):
/// rumqttc drops what the broker had not acknowledged. The simulator keeps those publications and
/// sends them again, so that it ends with every message acknowledged (it fails after 120 s of
/// waiting otherwise) and says so in its log.
#[test]
fn publications_in_flight_survive_a_broker_that_lost_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&tmp.path().join("broker"));
    let s = write_config(tmp.path(), broker.port, "");
    // 20 ms a cycle (1,250 messages a second): the stream is still running when the broker dies.
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("interval_ms = 0", "interval_ms = 20");
    std::fs::write(&s.config, cfg).unwrap();
    let config = s.config.clone();
    let sim = std::thread::spawn(move || {
        std::process::Command::new(ASSIMD)
            .args(["simulate", "--config"])
            .arg(&config)
            .args(["--cycles", "100"])
            .output()
            .unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Frozen for 300 ms: a few hundred publications sent and not acknowledged when it dies.
    broker.freeze_then_kill(std::time::Duration::from_millis(300));
    broker.restart();
    let out = sim.join().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "simulate failed: {log}");
    let again: u64 = log
        .lines()
        .filter_map(|l| l.split("publishing again ").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        again > 0,
        "the broker died with publications unacknowledged, sent again on the new session: {log}"
    );
    let published = format!("{} observation messages", 100 * messages_per_cycle(TB, NET));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&published), "{stdout}");
}

/// A broker that comes back without its persistence (here: its file deleted) no longer has the
/// daemon's session: the daemon subscribes again, counts the loss and says so, both when the
/// broker restarts under a running daemon and when a daemon with a journal starts on such a
/// broker. A daemon's very first connection (empty store) expects no session and counts none.
#[test]
fn a_broker_that_lost_the_session_is_counted_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(&tmp.path().join("broker"));
    let s = write_config(tmp.path(), broker.port, "");
    let lost = |port| metric(port, "assimd_mqtt_sessions_lost_total");
    let forget = |broker: &mut Mosquitto| {
        broker.stop();
        std::fs::remove_file(broker.dir.join("mosquitto.db")).expect("the persistence file");
        broker.restart();
    };
    let daemon = Daemon::start(&s, &[]);
    simulate(&s, 1, 2);
    wait_for("messages journaled", || {
        metric(s.metrics_port, "assimd_obs_journaled_total").filter(|v| *v > 0.0)
    });
    assert_eq!(lost(s.metrics_port), Some(0.0), "a first connection");
    forget(&mut broker);
    wait_for("the lost session counted", || {
        lost(s.metrics_port).filter(|v| *v == 1.0)
    });
    simulate(&s, 3, 1);
    wait_for("subscribed again: cycle 3 journaled", || {
        metric(s.metrics_port, "assimd_obs_journaled_total")
            .filter(|v| *v >= 3.0 * messages_per_cycle(TB, NET) as f64)
    });
    daemon.terminate();
    forget(&mut broker);
    let daemon = Daemon::start(&s, &[]);
    wait_for("the lost session counted after a restart", || {
        lost(s.metrics_port).filter(|v| *v == 1.0)
    });
    let log = daemon.log_text();
    assert!(
        log.contains("no longer had this client's session"),
        "the loss is logged:\n{log}"
    );
    daemon.terminate();
}

/// SIGINT abandons a running cycle at once; SIGTERM lets it run for the grace period, then
/// abandons it. Either way the cycle is redone, from the journal, after the restart.
#[test]
#[cfg_attr(
    not(feature = "test-hooks"),
    ignore = "needs the crash-test fault hook: cargo test --features assimd/test-hooks (scripts/test does)"
)]
fn sigint_and_sigterm_abandon_a_stuck_cycle_which_the_restart_redoes() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"));
    let s = write_config(tmp.path(), broker.port, "");
    std::fs::write(
        &s.config,
        std::fs::read_to_string(&s.config)
            .unwrap()
            .replace("grace_seconds = 30", "grace_seconds = 1"),
    )
    .unwrap();
    let per_cycle = messages_per_cycle(TB, NET);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let mut daemon = Daemon::start(&s, &[("ASSIMD_TEST_STALL_BEFORE_COMMIT", "2")]);
        if signal == libc::SIGINT {
            simulate(&s, 1, 4);
        }
        wait_for("the stall before cycle 2", || {
            daemon
                .log_text()
                .contains("stalling before the commit of cycle 2")
                .then_some(())
        });
        unsafe { libc::kill(daemon.child.id() as i32, signal) };
        let status = wait_for("the daemon to exit", || daemon.child.try_wait().unwrap());
        assert!(
            status.success(),
            "exit {status} after signal {signal}:\n{}",
            daemon.log_text()
        );
        assert!(
            daemon.log_text().contains("abandoned"),
            "{}",
            daemon.log_text()
        );
    }
    let daemon = Daemon::start(&s, &[]);
    wait_for("cycle 2 to be committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 2.0)
    });
    daemon.terminate();
    assert_eq!(
        committed_messages(&inspect(&s.store)),
        vec![(1, per_cycle), (2, per_cycle)]
    );
}

/// TLS (a CA made here, the broker's certificate for 127.0.0.1) and username/password: the daemon
/// and the simulator connect and cycle; a wrong password is refused and counted, and retried.
#[test]
fn tls_and_password_authentication() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(&certs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=assimd-test-ca");
    sh("openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj /CN=127.0.0.1");
    sh("printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out broker.pem -days 2 -extfile san.ext");
    sh("mosquitto_passwd -b -c passwd assimd s3cret && printf 's3cret\\n' > good && printf 'wrong\\n' > bad && chmod 0644 *");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = certs.display();
    let broker = Mosquitto::start_with(
        &tmp.path().join("broker"),
        &format!("cafile {c}/ca.pem\ncertfile {c}/broker.pem\nkeyfile {c}/broker.key\nallow_anonymous false\npassword_file {c}/passwd"),
    );
    let auth = |pw: &str| {
        format!(
            "tls_ca_file = \"{c}/ca.pem\"\nusername = \"assimd\"\npassword_file = \"{c}/{pw}\"\n"
        )
    };
    let s = write_config(tmp.path(), broker.port, "");
    let base = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        base.replace("[mqtt]\n", &format!("[mqtt]\n{}", auth("good"))),
    )
    .unwrap();
    let daemon = Daemon::start(&s, &[]);
    simulate(&s, 1, 4);
    wait_for("cycle 2 over TLS", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 2.0)
    });
    daemon.terminate();

    std::fs::write(
        &s.config,
        base.replace("[mqtt]\n", &format!("[mqtt]\n{}", auth("bad"))),
    )
    .unwrap();
    let mut child = std::process::Command::new(ASSIMD)
        .arg("run")
        .arg("--config")
        .arg(&s.config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the refused connection to be counted", || {
        metric(s.metrics_port, "assimd_mqtt_connection_errors_total").filter(|v| *v >= 2.0)
    });
    assert_eq!(metric(s.metrics_port, "assimd_mqtt_connected"), Some(0.0));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
