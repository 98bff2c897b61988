//! # Daemon benchmarks (end to end, real Mosquitto, the real binary)
//!
//! `cargo bench --bench ingest` measures:
//! 1. ingest throughput: N station reports (distinct ids, one window, so no cycle runs) published at
//!    QoS 1 to Mosquitto; msg/s until a plain QoS 1 subscriber has received them all, and until the
//!    daemon has journaled (sled insert + flush, then acknowledged) them all, same broker, same stream;
//! 2. memory: peak RSS of the daemon cycling qg2l with N = 32 (LETKF);
//! 3. time from SIGKILL to READY=1 of the restarted daemon (sd_notify on a test socket), qg2l store;
//! 4. with `nats-server` installed (full run only), 1 again through a three-node NATS cluster
//!    (`configs/nats/node.conf`, JetStream R3), all clients on one node;
//! 5. ingest while cycling ([`ingest_while_cycling`]): the journal rate while both filters cycle
//!    qg2l at N = 32, against a plain subscriber in the same run under the same load, and whether
//!    any cycle overran its window.
//!
//! Without `--bench` (as under `cargo test --all-targets`) it runs a small smoke version of 1, 3 and 4
//! (l96, 2,000 reports, one round; it checks that no flood message came late).
//! Results are printed as a table; docs/operations.md records the reference numbers.

#[path = "../tests/common/daemon.rs"]
mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn station_messages(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let body = format!(
                r#"{{"type":"Feature","id":"B{i:07}/2026-01-01T06:00:00Z","geometry":{{"type":"Point","coordinates":[9.0,45.0]}},"properties":{{"station":"B{i:07}","time":"2026-01-01T06:00:00Z","observations":[{{"var":"x","value":{v:.3},"sigma":1.0}}]}}}}"#,
                v = (i as f64 * 0.37).sin() * 4.0
            );
            (format!("bench/obs/station/bench/B{i:07}"), body.into_bytes())
        })
        .collect()
}

/// msg/s of a plain QoS 1 subscriber (auto acks) on the same stream (topics under `bench/`).
fn plain_subscriber(port: u16, msgs: &[(String, Vec<u8>)]) -> f64 {
    plain_subscriber_on(port, "bench/obs/station/#", msgs)
}

/// msg/s of a plain QoS 1 subscriber to `filter` until it has received all of `msgs`.
fn plain_subscriber_on(port: u16, filter: &str, msgs: &[(String, Vec<u8>)]) -> f64 {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let n = msgs.len() as u64;
    let mut o = MqttOptions::new(format!("plain-{}", free_port()), "127.0.0.1", port);
    o.set_inflight(1000);
    let (client, mut conn) = Client::new(o, 100);
    client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let (sub_tx, sub_rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => sub_tx.send(()).unwrap(),
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    if g.fetch_add(1, Ordering::SeqCst) + 1 == n {
                        return Instant::now();
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("plain subscriber: {e}"),
            }
        }
        unreachable!()
    });
    sub_rx.recv_timeout(GUARD).unwrap();
    let t0 = Instant::now();
    publish_all(port, msgs);
    let t1 = h.join().unwrap();
    let _ = client.disconnect();
    n as f64 / (t1 - t0).as_secs_f64()
}

/// msg/s journaled by the daemon.
fn daemon_ingest(port: u16, dir: &std::path::Path, msgs: &[(String, Vec<u8>)]) -> f64 {
    let s = write_config(dir, port, "");
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("prefix = \"test\"", "prefix = \"bench\"")
        .replace("[ingest]\n", "[ingest]\ntruth = false\n");
    std::fs::write(&s.config, cfg).unwrap();
    let d = Daemon::start(&s, &[]);
    let n = msgs.len() as f64;
    let t0 = Instant::now();
    publish_all(port, msgs);
    wait_for_or(
        "every message journaled",
        || metric(s.metrics_port, "assimd_obs_journaled_total").filter(|v| *v >= n),
        || {
            let t = scrape(s.metrics_port).unwrap_or_default();
            t.lines()
                .filter(|l| {
                    l.starts_with("assimd_obs")
                        || l.starts_with("assimd_journal_batch_duration_seconds_count")
                        || l.starts_with("assimd_journal_batch_duration_seconds_sum")
                })
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    let rate = n / t0.elapsed().as_secs_f64();
    d.terminate();
    rate
}

/// Spawn `assimd run` with a NOTIFY_SOCKET; seconds until READY=1.
fn time_to_ready(s: &Setup, sock_path: &std::path::Path) -> (f64, std::process::Child) {
    let _ = std::fs::remove_file(sock_path);
    let sock = UnixDatagram::bind(sock_path).unwrap();
    sock.set_read_timeout(Some(GUARD)).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(ASSIMD)
        .arg("run")
        .arg("--config")
        .arg(&s.config)
        .env("NOTIFY_SOCKET", sock_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no READY=1 from the daemon: {e}");
            }
        };
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            return (t0.elapsed().as_secs_f64(), child);
        }
    }
}

/// What [`ingest_while_cycling`] measured.
struct WhileCycling {
    /// msg/s of the plain subscriber per round.
    plain: Vec<f64>,
    /// msg/s journaled by the daemon per round.
    journaled: Vec<f64>,
    /// Cycles committed during the run.
    cycles: u64,
    /// Largest backlog of closed but uncommitted windows seen (sampled every 50 ms).
    max_pending: f64,
    /// Mean and largest whole-cycle wall time, s (per-filter summary seconds summed per cycle).
    mean_cycle: f64,
    max_cycle: f64,
    /// Flood messages that arrived after their window closed (should be 0).
    late: f64,
    /// Peak RSS of the daemon, bytes.
    peak_rss: u64,
}

/// The flood: `n` reports of withheld (verification-only) stations `V00`..`V09`, copied from one
/// real report of the simulated network (its position, variables and time), each with its own id.
fn flood(template: &serde_json::Value, n: usize, prefix: &str) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let station = format!("V{:02}", i % 10);
            let mut f = template.clone();
            let time = f["properties"]["time"].as_str().unwrap().to_string();
            f["id"] = format!("{station}/{time}/{i:07}").into();
            f["properties"]["station"] = station.clone().into();
            (
                format!("{prefix}/obs/station/bench/{station}"),
                serde_json::to_vec(&f).unwrap(),
            )
        })
        .collect()
}

/// Ingest while cycling: the daemon runs both filters (LETKF and the score filter with `bundle`)
/// on `testbed` while `assimd simulate` publishes the network at one cycle per `window_ms` of wall
/// time. At the start of each round (a new simulated cycle) a flood of `n` station reports goes
/// either to topics the daemon does not subscribe to, timed by a plain QoS 1 subscriber, or to the
/// daemon's own, timed until journaled: same broker, same cycling load, alternating. The flood is
/// dated at the newest simulated time, in a window kept open for three more cycles
/// (`ingest.cutoff_seconds` = 2 cycles), from withheld stations so it is journaled and verified
/// against, not assimilated.
fn ingest_while_cycling(
    broker_port: u16,
    dir: &std::path::Path,
    testbed: &str,
    bundle: &str,
    n: usize,
    rounds: usize,
    window_ms: u64,
) -> WhileCycling {
    let cycle_s = if testbed == "qg2l" { 43_200 } else { 21_600 };
    let extra = format!("[testbed]\nname = \"{testbed}\"\n[score]\nbundle = \"{bundle}\"\n");
    let s = write_config(dir, broker_port, &extra);
    let withheld: Vec<String> = (0..10).map(|j| format!("\"V{j:02}\"")).collect();
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(
            "[ingest]\n",
            &format!(
                "[ingest]\ncutoff_seconds = {}\nwithheld_stations = [{}]\n",
                2 * cycle_s,
                withheld.join(", ")
            ),
        )
        .replace("interval_ms = 0", &format!("interval_ms = {window_ms}"));
    std::fs::write(&s.config, cfg).unwrap();
    let d = Daemon::start(&s, &[]);
    let network = Collector::start(broker_port, &format!("{}/obs/station/sim/#", s.prefix));
    let summaries = Collector::start(broker_port, &format!("{}/analysis/+/summary", s.prefix));
    // Three cycles to start, two per round, three for the last flood's window to close.
    let cycles = 3 + 2 * rounds as u64 + 3;
    let mut sim = Command::new(ASSIMD)
        .args(["simulate", "--config"])
        .arg(&s.config)
        .args(["--first-cycle", "1", "--cycles", &cycles.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The backlog, sampled throughout.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (st, port) = (stop.clone(), s.metrics_port);
    let sampler = std::thread::spawn(move || {
        let mut max = 0.0f64;
        while !st.load(Ordering::SeqCst) {
            if let Some(p) = metric(port, "assimd_cycles_pending") {
                max = max.max(p);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        max
    });
    // The newest simulated report (its time and a template), once it is newer than `after`.
    let newest = |after: &str| -> serde_json::Value {
        wait_for("a new simulated cycle", || {
            let got = network.got.lock().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&got.last()?.1).ok()?;
            (v["properties"]["time"].as_str()? > after).then_some(v)
        })
    };
    let mut last = newest("");
    for _ in 0..2 {
        last = newest(last["properties"]["time"].as_str().unwrap());
    }
    let (mut plain, mut journaled) = (Vec::new(), Vec::new());
    for r in 0..2 * rounds {
        last = newest(last["properties"]["time"].as_str().unwrap());
        if r % 2 == 0 {
            let msgs = flood(&last, n, "plain");
            plain.push(plain_subscriber_on(
                broker_port,
                "plain/obs/station/#",
                &msgs,
            ));
        } else {
            let msgs = flood(&last, n, &s.prefix);
            let before = metric(s.metrics_port, "assimd_obs_journaled_total").unwrap_or(0.0);
            let t0 = Instant::now();
            publish_all(broker_port, &msgs);
            wait_for("the flood journaled", || {
                metric(s.metrics_port, "assimd_obs_journaled_total")
                    .filter(|v| *v >= before + n as f64)
            });
            journaled.push(n as f64 / t0.elapsed().as_secs_f64());
        }
    }
    let status = sim.wait().unwrap();
    assert!(status.success(), "assimd simulate failed");
    // Every window the simulator closed is committed (the last two stay open: nothing later).
    wait_for("the last windows committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= (cycles - 3) as f64)
    });
    stop.store(true, Ordering::SeqCst);
    let max_pending = sampler.join().unwrap();
    let late = metric(s.metrics_port, "assimd_obs_late_total").unwrap_or(0.0);
    // Whole-cycle time: both filters' seconds of each cycle.
    let mut per_cycle = std::collections::BTreeMap::<u64, f64>::new();
    for (_, p) in summaries.got.lock().unwrap().iter() {
        let v: serde_json::Value = serde_json::from_slice(p).unwrap();
        *per_cycle.entry(v["cycle"].as_u64().unwrap()).or_default() +=
            v["seconds"].as_f64().unwrap();
    }
    let secs: Vec<f64> = per_cycle.values().copied().collect();
    let (peak_rss, _) = rss(d.child.id());
    d.terminate();
    WhileCycling {
        plain,
        journaled,
        cycles: secs.len() as u64,
        max_pending,
        mean_cycle: secs.iter().sum::<f64>() / secs.len().max(1) as f64,
        max_cycle: secs.iter().copied().fold(0.0, f64::max),
        late,
        peak_rss,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let tmp = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&tmp.path().join("broker"));
    let n = std::env::var("ASSIMD_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 100_000 } else { 2_000 });
    let msgs = station_messages(n);
    let reps = if full { 3 } else { 1 };
    let mut plain = Vec::new();
    let mut daemon = Vec::new();
    for r in 0..reps {
        plain.push(plain_subscriber(broker.port, &msgs));
        // A fresh store and client id each time: every id is new.
        daemon.push(daemon_ingest(
            broker.port,
            &tmp.path().join(format!("ingest-{r}")),
            &msgs,
        ));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, d) = (med(&mut plain), med(&mut daemon));
    println!("ingest, {n} station reports, QoS 1, Mosquitto, median of {reps}:");
    println!("  plain subscriber   {p:>10.0} msg/s");
    println!(
        "  assimd journaled   {d:>10.0} msg/s  ({:.2} of plain)",
        d / p
    );

    // The same through a three-node NATS cluster (JetStream R3, MQTT gateway; configs/nats/), if
    // nats-server is installed: publisher, plain subscriber and daemon all on node 1.
    if let Some(bin) = nats_server().filter(|_| full) {
        let cluster = NatsCluster::start(&tmp.path().join("nats"), &bin);
        let port = cluster.nodes[0].mqtt_port;
        let (mut cp, mut cd) = (Vec::new(), Vec::new());
        for r in 0..reps {
            cp.push(plain_subscriber(port, &msgs));
            cd.push(daemon_ingest(
                port,
                &tmp.path().join(format!("nats-ingest-{r}")),
                &msgs,
            ));
        }
        let (p2, d2) = (med(&mut cp), med(&mut cd));
        println!(
            "ingest through a 3-node NATS cluster (R3), {n} station reports, median of {reps}:"
        );
        println!(
            "  plain subscriber   {p2:>10.0} msg/s  ({:.2} of Mosquitto's)",
            p2 / p
        );
        println!(
            "  assimd journaled   {d2:>10.0} msg/s  ({:.2} of plain; {:.2} of Mosquitto's)",
            d2 / p2,
            d2 / d
        );
    }

    // Ingest while both filters cycle: qg2l N = 32 (full) or l96 N = 20 (smoke).
    let env_u64 = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (testbed, bundle) = if full {
        ("qg2l", "models/zoo/qg2l")
    } else {
        ("l96", "models/zoo/l96")
    };
    let bundle = format!("{}/{bundle}", env!("CARGO_MANIFEST_DIR"));
    let window_ms = env_u64("ASSIMD_BENCH_WINDOW_MS", if full { 6000 } else { 1000 });
    let rounds = if full { 3 } else { 1 };
    let w = ingest_while_cycling(
        broker.port,
        &tmp.path().join("while-cycling"),
        testbed,
        &bundle,
        n,
        rounds,
        window_ms,
    );
    assert_eq!(
        w.late, 0.0,
        "flood messages arrived after their window closed"
    );
    let (mut wp, mut wj) = (w.plain.clone(), w.journaled.clone());
    let (p, j) = (med(&mut wp), med(&mut wj));
    println!(
        "ingest while cycling {testbed} (LETKF + score filter, one cycle per {window_ms} ms), {n} reports, median of {rounds}:"
    );
    println!(
        "  plain subscriber   {p:>10.0} msg/s  (rounds {:?})",
        w.plain.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "  assimd journaled   {j:>10.0} msg/s  ({:.2} of plain; rounds {:?})",
        j / p,
        w.journaled.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "  {} cycles: mean {:.2} s, longest {:.2} s against a {:.1} s window; largest backlog {} window(s); daemon peak RSS {:.0} MB",
        w.cycles,
        w.mean_cycle,
        w.max_cycle,
        window_ms as f64 / 1000.0,
        w.max_pending,
        w.peak_rss as f64 / 1e6
    );

    // Memory and restart on qg2l N=32 (full) or l96 (smoke).
    let (testbed, extra, members, cycles) = if full {
        ("qg2l", "[testbed]\nname = \"qg2l\"\n[letkf]\ninflation = 1.0\nrtps = 0.5\nlocalization_km = 100\nweight_stride = 2\n", 32, 6)
    } else {
        ("l96", "", 20, 4)
    };
    let dir = tmp.path().join("cycling");
    let s = write_config(&dir, broker.port, extra);
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("[cycle]\n", &format!("[cycle]\nmembers = {members}\n"));
    std::fs::write(&s.config, cfg).unwrap();
    let d = Daemon::start(&s, &[]);
    simulate(&s, 1, cycles);
    let target = (cycles - 2) as f64;
    wait_for("cycles committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= target)
    });
    let (peak, now) = rss(d.child.id());
    println!(
        "memory, {testbed} after {} cycles: peak RSS {:.0} MB, RSS {:.0} MB",
        target,
        peak as f64 / 1e6,
        now as f64 / 1e6
    );
    d.kill();
    let sock = dir.join("notify.sock");
    let mut ready = Vec::new();
    for _ in 0..reps {
        let (t, mut child) = time_to_ready(&s, &sock);
        ready.push(t);
        child.kill().unwrap();
        let _ = child.wait();
    }
    println!(
        "SIGKILL -> restart -> READY=1 ({testbed} store): {:.3} s (median of {reps})",
        med(&mut ready)
    );
}
