//! # Daemon benchmarks (end to end, real Mosquitto, the real binary)
//!
//! `cargo bench --bench ingest` measures:
//! 1. ingest throughput: N station reports (distinct ids, one window, so no cycle runs) published at
//!    QoS 1 to Mosquitto; msg/s until a plain QoS 1 subscriber has received them all, and until the
//!    daemon has journaled (sled insert + flush, then acknowledged) them all, same broker, same stream;
//! 2. memory: peak RSS of the daemon cycling qg2l with N = 32 (LETKF);
//! 3. time from SIGKILL to READY=1 of the restarted daemon (sd_notify on a test socket), qg2l store.
//!
//! Without `--bench` (as under `cargo test --all-targets`) it runs a small smoke version of 1 and 3.
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

/// msg/s of a plain QoS 1 subscriber (auto acks) on the same stream.
fn plain_subscriber(port: u16, msgs: &[(String, Vec<u8>)]) -> f64 {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let n = msgs.len() as u64;
    let mut o = MqttOptions::new(format!("plain-{}", free_port()), "127.0.0.1", port);
    o.set_inflight(1000);
    let (client, mut conn) = Client::new(o, 100);
    client
        .subscribe("bench/obs/station/#", QoS::AtLeastOnce)
        .unwrap();
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
