//! The daemon on a clustered broker: a real three-node NATS cluster (nats-server 2.14.4 or later,
//! JetStream, MQTT gateway, sessions and QoS 1 messages replicated on all three;
//! `configs/nats/node.conf`), `mqtt.hosts` listing its nodes. While `assimd simulate` streams the
//! l96 network through the cluster, the node the daemon is connected to is SIGKILLed (until each
//! of the three has been, at least three times, each restarted later), and, in the second test,
//! the daemon itself is SIGKILLed once while a node is down. As an operator would, a node is taken
//! down only once the cluster is current again ([`NatsCluster::wait_current`]), and the stream runs
//! on for the cutoff after the last failure, so that every window closes by the stream's own clock.
//!
//! Checked from the store and the daemon's own publications: every cycle's messages journaled and
//! assimilated exactly once (the count the simulator publishes per cycle, no more, no fewer), none
//! late, cycles contiguous, a summary received by a subscriber on the cluster for every cycle, and,
//! in the first test, one daemon process throughout. Failover times (SIGKILL to the next journaled
//! message) are printed. `ASSIMD_KEEP_TEST_DIRS=1` keeps the store and the logs of the daemon and
//! the nodes.
//!
//! Also on NATS (one node): a subscription the broker refuses is counted and asked for again until
//! it is granted.
//!
//! Skipped, with a message naming the fix, where `nats-server` is not installed.

#[path = "common/daemon.rs"]
mod common;
use common::*;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Wall time per simulated cycle, and the cutoff in cycles (45 s of wall time: longer than a
/// failover, which takes the cluster 5-20 s to elect new stream and consumer leaders in, plus
/// the broker's redelivery of unacknowledged messages).
const INTERVAL_MS: u64 = 300;
const CUTOFF_CYCLES: u64 = 150;
/// Cycles streamed at least, in chunks of [`CHUNK`].
const MIN_CYCLES: u64 = 100;
const CHUNK: u64 = 50;

/// One cluster at a time: three nodes each, the failover times and the cutoff are sized for a
/// machine not running two other clusters (`cargo test` runs a file's tests in parallel).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The test's directory: a temporary one (the guard removes it), kept with its path printed when
/// `ASSIMD_KEEP_TEST_DIRS` is set, so that the store and the daemon's and nodes' logs can be read
/// after a failure.
fn test_dir() -> (Option<tempfile::TempDir>, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    if std::env::var_os("ASSIMD_KEEP_TEST_DIRS").is_some() {
        let kept = tmp.keep();
        println!("test directory kept: {}", kept.display());
        (None, kept)
    } else {
        let path = tmp.path().to_path_buf();
        (Some(tmp), path)
    }
}

fn cluster_or_skip(dir: &std::path::Path) -> Option<NatsCluster> {
    match nats_server() {
        Some(bin) => Some(NatsCluster::start(&dir.join("cluster"), &bin)),
        None => {
            eprintln!(
                "SKIPPED: nats-server not found on the PATH: run ./scripts/test (its setup installs \
                 the Debian package nats-server) or apt-get install nats-server"
            );
            None
        }
    }
}

/// Stream in wall time, [`INTERVAL_MS`] per simulated cycle, with a cutoff of `cutoff_cycles`
/// cycles of `testbed`. A broker delivers each subscription's
/// messages in order, but not across subscriptions: NATS gives each topic filter its own
/// JetStream consumer, and with the simulator at full speed (interval 0) one of them ran several
/// cycles ahead of another (nats-server 2.15), so that its observations closed windows whose
/// station reports then came late. A network's real pace and a cutoff of a few cycles leave room.
fn on_a_wall_clock(config: &std::path::Path, testbed: &str, cutoff_cycles: u64) {
    let cfg = std::fs::read_to_string(config)
        .unwrap()
        .replace(
            "[ingest]\n",
            &format!(
                "[ingest]\ncutoff_seconds = {}\n",
                cutoff_cycles * cycle_seconds(testbed)
            ),
        )
        .replace("interval_ms = 0", &format!("interval_ms = {INTERVAL_MS}"));
    std::fs::write(config, cfg).unwrap();
}

/// A daemon config on the cluster: l96 stations+satellite, the cutoff of [`CUTOFF_CYCLES`].
fn cluster_config(dir: &std::path::Path, c: &NatsCluster) -> Setup {
    let s = write_config(dir, 0, "");
    let cfg = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("port = 0\n", &format!("{}\n", c.hosts_toml()));
    std::fs::write(&s.config, cfg).unwrap();
    on_a_wall_clock(&s.config, "l96", CUTOFF_CYCLES);
    s
}

/// A cluster, a daemon on it, a summary subscriber and the simulated stream, started in that
/// order; None where `nats-server` is missing.
fn streaming_on_a_cluster(
    dir: &std::path::Path,
) -> Option<(NatsCluster, Setup, Daemon, Summaries, Stream)> {
    let c = cluster_or_skip(dir)?;
    let s = cluster_config(&dir.join("daemon"), &c);
    let d = Daemon::start(&s, &[]);
    let summaries = Summaries::start(&c, &s.prefix);
    let sim = Stream::start(&s);
    Some((c, s, d, summaries, sim))
}

/// A subscriber with a persistent session that moves to the next node when its node dies,
/// collecting the cycle numbers of the daemon's LETKF summaries.
struct Summaries {
    cycles: Arc<Mutex<BTreeSet<u64>>>,
    client: Client,
    stop: Arc<AtomicBool>,
}

impl Drop for Summaries {
    /// Stop the subscriber: otherwise it would go on retrying the dead cluster's nodes while the
    /// next test runs.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.try_disconnect();
    }
}

impl Summaries {
    fn start(c: &NatsCluster, prefix: &str) -> Summaries {
        let ports: Vec<u16> = c.nodes.iter().map(|n| n.mqtt_port).collect();
        let id = format!("summaries-{}", free_port());
        let opts = move |i: usize| {
            let mut o = MqttOptions::new(id.clone(), "127.0.0.1", ports[i % ports.len()]);
            o.set_clean_session(false);
            o.set_max_packet_size(1 << 22, 1 << 22);
            o
        };
        let (client, mut conn) = Client::new(opts(0), 100);
        let topic = format!("{prefix}/analysis/letkf/summary");
        let cycles = Arc::new(Mutex::new(BTreeSet::new()));
        let got = cycles.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let client2 = client.clone();
        std::thread::spawn(move || {
            let mut node = 0;
            while let Ok(ev) = conn.recv() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                        got.lock().unwrap().insert(v["cycle"].as_u64().unwrap());
                    }
                    // As the daemon does: subscribe at every connection, in case the cluster
                    // answered without the session (a record not yet persisted when a node died).
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client2.try_subscribe(topic.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => {
                        node += 1;
                        conn.eventloop.mqtt_options = opts(node);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
        rx.recv_timeout(GUARD)
            .expect("summary subscriber subscribed");
        Summaries {
            cycles,
            client,
            stop,
        }
    }
}

/// `assimd simulate` in chunks of [`CHUNK`] cycles from cycle 1, in the background, until
/// [`Stream::stop`] is called and at least [`MIN_CYCLES`] are streamed.
struct Stream {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl Stream {
    fn start(s: &Setup) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let (st, config) = (stop.clone(), s.config.clone());
        let handle = std::thread::spawn(move || {
            let mut done = 0;
            while done < MIN_CYCLES || !st.load(Ordering::SeqCst) {
                simulate_config(&config, done + 1, CHUNK);
                done += CHUNK;
            }
            done
        });
        Stream { stop, handle }
    }

    /// Stop after the running chunk; the number of cycles streamed.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("the simulator thread")
    }
}

/// Stream on until the cluster is current again and then for the cutoff and 20 cycles more, so
/// that every window open during a failure closes by the clock of a live stream, as in service
/// (not by [`check_exactly_once`]'s closing cycle): a message the broker redelivers after its
/// `ack_wait` counts as late if, and only if, it arrives after its window's cutoff. Then stop
/// the stream; the number of cycles streamed.
fn stream_past_the_cutoff(c: &NatsCluster, sim: Stream) -> u64 {
    c.wait_current();
    std::thread::sleep(Duration::from_millis((CUTOFF_CYCLES + 20) * INTERVAL_MS));
    sim.stop()
}

/// The node the daemon is connected to (`assimd_mqtt_endpoint` = 1), once it is subscribed.
fn current_node(s: &Setup, c: &NatsCluster) -> usize {
    wait_for("the daemon subscribed on a node", || {
        let text = scrape(s.metrics_port)?;
        if sample(&text, "assimd_mqtt_subscribed") != Some(1.0) {
            return None;
        }
        c.nodes.iter().position(|n| {
            sample(
                &text,
                &format!(
                    "assimd_mqtt_endpoint{{endpoint=\"127.0.0.1:{}\"}}",
                    n.mqtt_port
                ),
            ) == Some(1.0)
        })
    })
}

/// SIGKILL the daemon's node; seconds until the daemon journals again: subscribed on another node,
/// then a message journaled after that (so at most one simulated cycle's interval late).
fn kill_current_node(s: &Setup, c: &mut NatsCluster) -> (usize, f64) {
    let node = current_node(s, c);
    let t0 = Instant::now();
    c.kill(node);
    wait_for("the daemon on another node", || {
        (current_node(s, c) != node).then_some(())
    });
    let before = metric(s.metrics_port, "assimd_obs_journaled_total").unwrap_or(0.0);
    wait_for("ingest resumed on another node", || {
        metric(s.metrics_port, "assimd_obs_journaled_total").filter(|v| *v > before)
    });
    (node, t0.elapsed().as_secs_f64())
}

/// The daemon's log lines about its broker connections and sessions.
fn broker_log(d: &Daemon) -> String {
    d.log_text()
        .lines()
        .filter(|l| l.contains("broker") || l.contains("session"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every closed window committed with exactly the simulator's messages, contiguous from 1, no late
/// message, and a summary for every cycle; stops the daemon (SIGTERM) to read its store.
fn check_exactly_once(s: &Setup, d: Daemon, summaries: &Summaries, streamed: u64) {
    // Window k closes once an observation later than t_k + c/2 + cutoff has arrived: one cycle of
    // the network at t_K, K = streamed + cutoff + 1, closes every streamed window (and only those).
    let closing = streamed + CUTOFF_CYCLES + 1;
    simulate(s, closing, 1);
    let last_closed = streamed;
    wait_for("every closed window committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= last_closed as f64)
    });
    let per_cycle = messages_per_cycle("l96", "stations+satellite");
    let late = metric(s.metrics_port, "assimd_obs_late_total").unwrap_or(0.0);
    let dups = metric(s.metrics_port, "assimd_obs_duplicates_total").unwrap_or(0.0);
    // Every cycle's summary reached the subscriber across the failovers (the daemon resends its
    // unacknowledged publications on the new node; the subscriber resumes its session there).
    wait_for_or(
        "a summary received for every committed cycle",
        || {
            let got = summaries.cycles.lock().unwrap();
            (1..=last_closed).all(|k| got.contains(&k)).then_some(())
        },
        || {
            let got = summaries.cycles.lock().unwrap();
            let missing: Vec<u64> = (1..=last_closed).filter(|k| !got.contains(k)).collect();
            format!(
                "cycles {missing:?} not received; the daemon's broker log:\n{}",
                broker_log(&d)
            )
        },
    );
    let sessions_lost = metric(s.metrics_port, "assimd_mqtt_sessions_lost_total").unwrap_or(0.0);
    let broker_log = broker_log(&d);
    d.terminate();
    let state = inspect(&s.store);
    let committed = committed_messages(&state);
    let cycles: Vec<u64> = committed.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        cycles,
        (1..=cycles.len() as u64).collect::<Vec<_>>(),
        "cycles not contiguous from 1"
    );
    assert_eq!(
        cycles.len() as u64,
        streamed,
        "every streamed window committed, no other"
    );
    assert!(streamed >= 60);
    let wrong: Vec<(u64, u64)> = committed
        .iter()
        .copied()
        .filter(|(_, m)| *m != per_cycle)
        .collect();
    assert!(
        wrong.is_empty(),
        "(cycle, messages journaled) {wrong:?}: the simulator published {per_cycle} per cycle (lost \
         or doubled); late {late}, redeliveries dropped by id {dups}, sessions lost {sessions_lost}; \
         the daemon's broker log:\n{broker_log}"
    );
    assert_eq!(late, 0.0, "messages arrived after their window closed");
    println!(
        "{} cycles streamed and committed, {} messages each ({} in all), lost 0, doubled 0, \
         late {late}, redeliveries dropped by id {dups}",
        committed.len(),
        per_cycle,
        committed.len() as u64 * per_cycle
    );
}

#[test]
fn the_daemon_fails_over_between_cluster_nodes_without_losing_or_doubling_an_observation() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_guard, tmp) = test_dir();
    let Some((mut c, s, mut d, summaries, sim)) = streaming_on_a_cluster(&tmp) else {
        return;
    };
    let pid = d.child.id();
    // Kill the node the daemon is on, three times at least, until each node has been killed.
    let mut killed = Vec::new();
    while killed.len() < 3 || killed.iter().collect::<BTreeSet<_>>().len() < 3 {
        assert!(
            killed.len() < 8,
            "killed {killed:?}: the daemon never moved to the third node"
        );
        // As an operator would: take a node down only once the last restarted one has caught
        // up, so that the two left hold a quorum of every stream and consumer.
        let waited = c.wait_current();
        let (node, secs) = kill_current_node(&s, &mut c);
        println!(
            "killed node {} (the daemon's) once the cluster was current ({waited:.1} s): ingest \
             resumed after {secs:.2} s",
            node + 1
        );
        killed.push(node);
        std::thread::sleep(Duration::from_secs(2));
        c.restart(node);
    }
    let streamed = stream_past_the_cutoff(&c, sim);
    assert!(
        d.child.try_wait().unwrap().is_none() && d.child.id() == pid,
        "the daemon exited:\n{}",
        d.log_text()
    );
    let errors = metric(s.metrics_port, "assimd_mqtt_connection_errors_total").unwrap_or(0.0);
    assert!(
        errors >= 3.0,
        "{errors} connection errors counted for 3 node losses"
    );
    let log = d.log_text();
    assert!(
        log.matches("connected to the broker at").count() >= 4,
        "the log names each node it connected to:\n{log}"
    );
    check_exactly_once(&s, d, &summaries, streamed);
}

#[test]
fn a_daemon_killed_while_a_node_is_down_resumes_on_the_others() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_guard, tmp) = test_dir();
    let Some((mut c, s, d, summaries, sim)) = streaming_on_a_cluster(&tmp) else {
        return;
    };
    std::thread::sleep(Duration::from_secs(8));
    let (node, secs) = kill_current_node(&s, &mut c);
    println!("killed node {}: ingest resumed after {secs:.2} s", node + 1);
    std::thread::sleep(Duration::from_secs(3));
    // The daemon dies while the node is still down; it restarts on the two left.
    d.kill();
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let d = Daemon::start(&s, &[]);
    let before = metric(s.metrics_port, "assimd_obs_journaled_total").unwrap_or(0.0);
    wait_for("the restarted daemon journals", || {
        metric(s.metrics_port, "assimd_obs_journaled_total").filter(|v| *v > before)
    });
    println!(
        "daemon SIGKILLed with node {} down: journaling again {:.2} s after its restart",
        node + 1,
        t0.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    c.restart(node);
    let streamed = stream_past_the_cutoff(&c, sim);
    check_exactly_once(&s, d, &summaries, streamed);
}

/// A fleet on one cluster: an l96 and a qg2l daemon, each with its own prefix, store and metrics
/// port, each fed by its own simulator through the same three nodes. Each commits its own windows
/// with exactly its own network's messages: nothing crosses between the prefixes.
#[test]
fn two_domains_share_one_cluster() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_guard, tmp) = test_dir();
    let Some(c) = cluster_or_skip(&tmp) else {
        return;
    };
    // A cutoff of FLEET_CUTOFF cycles: windows 1 ..= cycles - FLEET_CUTOFF - 1 close.
    const FLEET_CUTOFF: u64 = 4;
    let cycles = 14;
    let mut domains = Vec::new();
    for testbed in ["l96", "qg2l"] {
        let s = write_config(
            &tmp.join(testbed),
            0,
            &format!("[testbed]\nname = \"{testbed}\"\n"),
        );
        let cfg = std::fs::read_to_string(&s.config)
            .unwrap()
            .replace("port = 0\n", &format!("{}\n", c.hosts_toml()))
            .replace(
                "prefix = \"test\"",
                &format!("prefix = \"{testbed}-domain\""),
            );
        std::fs::write(&s.config, cfg).unwrap();
        on_a_wall_clock(&s.config, testbed, FLEET_CUTOFF);
        let d = Daemon::start(&s, &[]);
        domains.push((testbed, s, d));
    }
    let sims: Vec<_> = domains
        .iter()
        .map(|(_, s, _)| {
            let config = s.config.clone();
            std::thread::spawn(move || simulate_config(&config, 1, cycles))
        })
        .collect();
    for h in sims {
        h.join().unwrap();
    }
    for (testbed, s, d) in domains {
        let closed = cycles - FLEET_CUTOFF - 1;
        wait_for("the domain's windows committed", || {
            metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= closed as f64)
        });
        let rejected = scrape(s.metrics_port)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("assimd_obs_rejected_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        let log = broker_log(&d);
        d.terminate();
        let per_cycle = messages_per_cycle(testbed, "stations+satellite");
        let committed = committed_messages(&inspect(&s.store));
        assert_eq!(committed.len() as u64, closed, "{testbed}: {committed:?}");
        for (k, m) in &committed {
            assert_eq!(
                *m, per_cycle,
                "{testbed} cycle {k}: {m} messages, its network sends {per_cycle}; committed \
                 {committed:?}; the daemon's broker log:\n{log}"
            );
        }
        assert_eq!(rejected, 0.0, "{testbed}: messages rejected");
        println!(
            "{testbed}: {} cycles, {per_cycle} messages each, none rejected",
            committed.len()
        );
    }
}

/// A broker that refuses a subscription (here a NATS node whose user may not subscribe to the
/// satellite topics; a cluster refuses one whose consumer it cannot create) answers the SUBSCRIBE
/// with a failure code for that filter. The daemon counts it, stays unsubscribed
/// (`assimd_mqtt_subscribed` 0, so the alert on it fires) and asks again with backoff; once the
/// operator lifts the restriction (config reload) the next attempt is granted and both networks'
/// messages are journaled.
#[test]
fn a_refused_subscription_is_counted_and_asked_again_until_granted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (_guard, tmp) = test_dir();
    let Some(bin) = nats_server() else {
        eprintln!("SKIPPED: nats-server not found: run ./scripts/test (its setup installs it)");
        return;
    };
    let (client_port, mqtt_port) = (free_port(), free_port());
    let conf = tmp.join("nats.conf");
    let write_conf = |deny: &str| {
        std::fs::write(
            &conf,
            format!(
                "server_name: single\nlisten: 127.0.0.1:{client_port}\n\
                 jetstream {{ store_dir: \"{}\" }}\nmqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n\
                 authorization {{ users: [ {{ user: assimd, password: s3cret, permissions: {{ \
                 subscribe: {{ deny: [{deny}] }} }} }} ] }}\n",
                tmp.join("js").display()
            ),
        )
        .unwrap();
    };
    write_conf("\"test.obs.satellite\", \"test.obs.satellite.>\"");
    // Killed when the test ends, passed or not.
    struct Node(std::process::Child);
    impl Drop for Node {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let node = Node(
        std::process::Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(tmp.join("nats.log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the NATS node's MQTT listener", || {
        std::net::TcpStream::connect(("127.0.0.1", mqtt_port)).ok()
    });
    let s = write_config(&tmp.join("daemon"), mqtt_port, "");
    let password = tmp.join("password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let cfg = std::fs::read_to_string(&s.config).unwrap().replace(
        "[mqtt]\n",
        &format!(
            "[mqtt]\nusername = \"assimd\"\npassword_file = \"{}\"\n",
            password.display()
        ),
    );
    std::fs::write(&s.config, cfg).unwrap();
    on_a_wall_clock(&s.config, "l96", 2);
    let d = Daemon::spawn(&s, &[]);
    // The first refusal and at least one refused retry.
    wait_for("two refused subscriptions counted", || {
        metric(s.metrics_port, "assimd_mqtt_subscribe_failures_total").filter(|v| *v >= 2.0)
    });
    assert_eq!(metric(s.metrics_port, "assimd_mqtt_subscribed"), Some(0.0));
    let log = d.log_text();
    assert!(
        log.contains("refused the subscription") && log.contains("test/obs/satellite/#"),
        "the log names the refused filter:\n{log}"
    );
    assert!(
        !log.contains("refused the subscription to [\"test/obs/station/#"),
        "the station filter was granted:\n{log}"
    );
    // The operator lifts the restriction and reloads the broker's configuration.
    write_conf("\"nothing.denied\"");
    unsafe { libc::kill(node.0.id() as i32, libc::SIGHUP) };
    wait_for("the daemon subscribed once granted", || {
        metric(s.metrics_port, "assimd_mqtt_subscribed").filter(|v| *v == 1.0)
    });
    // A cutoff of 2 cycles: the observations of cycle 5 close window 2.
    simulate(&s, 1, 5);
    wait_for("cycle 2 committed", || {
        metric(s.metrics_port, "assimd_last_cycle").filter(|v| *v >= 2.0)
    });
    d.terminate();
    drop(node);
    let per_cycle = messages_per_cycle("l96", "stations+satellite");
    assert_eq!(
        committed_messages(&inspect(&s.store)),
        vec![(1, per_cycle), (2, per_cycle)],
        "both networks' messages journaled once granted"
    );
}
