//! Helpers of the daemon's end-to-end tests: a real Mosquitto on a free port, the real `assimd`
//! binary (run, simulate, state inspect), a Prometheus scrape, an MQTT subscriber. Every wait has a
//! generous timeout that only guards against a hang; nothing asserts on timing.
#![allow(dead_code)]

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ASSIMD: &str = env!("CARGO_BIN_EXE_assimd");
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// Failure guard of every wait.
pub const GUARD: Duration = Duration::from_secs(120);

/// A free TCP port on 127.0.0.1, each handed out once per test process, taken below the kernel's
/// ephemeral range (32768–60999 by default): a port from that range can be taken as the source
/// port of some outgoing connection (a client retrying a killed node every 100 ms) between this
/// call and the server's bind, which then fails with "address already in use" (seen with a NATS
/// node in the cluster tests).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test processes run one after another; a per-process offset keeps one from retrying the
    // ports the last one used (possibly still in TIME_WAIT).
    let offset = std::process::id().wrapping_mul(7_919);
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (FIRST + offset.wrapping_add(n) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT)
}

/// Poll `f` until it returns Some, or panic with `what` after the guard.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < GUARD, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// As [`wait_for`], with `context()` (logs) in the failure message.
pub fn wait_for_or<T>(
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < GUARD,
            "timed out waiting for {what}:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Mosquitto broker with its own config, persistence directory and port.
pub struct Mosquitto {
    pub port: u16,
    pub dir: PathBuf,
    /// Extra lines for the listener (TLS, authentication).
    pub extra: String,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Mosquitto::start_with(dir, "allow_anonymous true")
    }

    pub fn start_with(dir: &Path, extra: &str) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is missing: run ./scripts/test (its setup installs the Debian package mosquitto) or apt-get install mosquitto"
        );
        let mut m = Mosquitto {
            port: free_port(),
            dir: dir.to_path_buf(),
            extra: extra.to_string(),
            child: None,
        };
        m.restart();
        m
    }

    /// Start (again) on the same port with the same persistence.
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        // Mosquitto started as root drops to the user `mosquitto`, which must write its persistence file here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = self.dir.join("mosquitto.conf");
        // As configs/mosquitto.conf: QoS 1 messages for a slow or absent subscriber are never dropped.
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nlistener {} 127.0.0.1\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 1000\nautosave_interval 0\n\
                 log_dest file {}/mosquitto.log\n{}\n",
                self.port,
                self.dir.display(),
                self.dir.display(),
                self.extra
            ),
        )
        .unwrap();
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let port = self.port;
        wait_for("mosquitto to accept connections", || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
    }

    /// Freeze the broker (SIGSTOP) for `frozen`, so that publications pile up unacknowledged,
    /// then SIGKILL it: nothing is saved, and every client's connection breaks at once.
    pub fn freeze_then_kill(&mut self, frozen: Duration) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGSTOP) };
            std::thread::sleep(frozen);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (Mosquitto saves its persistence file) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A daemon config for tests.
pub struct Setup {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub store: PathBuf,
    pub metrics_port: u16,
    pub prefix: String,
}

pub fn write_config(dir: &Path, broker_port: u16, extra: &str) -> Setup {
    std::fs::create_dir_all(dir).unwrap();
    let metrics_port = free_port();
    let store = dir.join("store");
    let prefix = "test".to_string();
    let config = dir.join("assimd.toml");
    std::fs::write(
        &config,
        format!(
            "[mqtt]\nport = {broker_port}\nclient_id = \"assimd-test-{metrics_port}\"\nprefix = \"{prefix}\"\nreconnect_max_ms = 1000\n\
             [ingest]\nreject_future = false\n[store]\npath = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [cycle]\nkeep = 100\n[service]\ngrace_seconds = 30\n[simulate]\ninterval_ms = 0\n{extra}",
            store.display()
        ),
    )
    .unwrap();
    Setup {
        dir: dir.to_path_buf(),
        config,
        store,
        metrics_port,
        prefix,
    }
}

/// A running daemon; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

/// Peak and current resident set size of a process, bytes (from /proc).
pub fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

impl Daemon {
    pub fn start(s: &Setup, env: &[(&str, &str)]) -> Daemon {
        let d = Daemon::spawn(s, env);
        let port = s.metrics_port;
        wait_for("the daemon to subscribe", || {
            metric(port, "assimd_mqtt_subscribed").filter(|v| *v == 1.0)
        });
        d
    }

    /// Start without waiting for the subscription.
    pub fn spawn(s: &Setup, env: &[(&str, &str)]) -> Daemon {
        let n = std::fs::read_dir(&s.dir).unwrap().count();
        let log = s.dir.join(format!("daemon-{n}.log"));
        let mut cmd = Command::new(ASSIMD);
        cmd.arg("run")
            .arg("--config")
            .arg(&s.config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting assimd run");
        Daemon { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; the exit must be a success.
    pub fn terminate(mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "assimd exited with {status} after SIGTERM:\n{}",
            self.log_text()
        );
    }

    /// SIGKILL and wait.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `assimd simulate` to completion (every message acknowledged by the broker).
pub fn simulate(s: &Setup, first_cycle: u64, cycles: u64) {
    simulate_config(&s.config, first_cycle, cycles)
}

/// [`simulate`] with a config file.
pub fn simulate_config(config: &Path, first_cycle: u64, cycles: u64) {
    let out = Command::new(ASSIMD)
        .args(["simulate", "--config"])
        .arg(config)
        .args([
            "--first-cycle",
            &first_cycle.to_string(),
            "--cycles",
            &cycles.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "assimd simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GET /metrics.
pub fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// One sample, by its full name with labels as exported (e.g. `assimd_obs_rejected_total{reason="schema"}`).
pub fn metric(port: u16, series: &str) -> Option<f64> {
    let text = scrape(port)?;
    sample(&text, series)
}

pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `assimd state inspect --json` (the daemon must be stopped: sled locks the store).
pub fn inspect(store: &Path) -> serde_json::Value {
    let out = Command::new(ASSIMD)
        .args(["state", "inspect", "--json", "--store"])
        .arg(store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "state inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `assimd state inspect --json --cycle K`: the cycle's journal, or the error it printed.
pub fn inspect_cycle(store: &Path, cycle: u64) -> Result<serde_json::Value, String> {
    let out = Command::new(ASSIMD)
        .args([
            "state",
            "inspect",
            "--json",
            "--cycle",
            &cycle.to_string(),
            "--store",
        ])
        .arg(store)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Observation messages the simulator publishes per cycle for this testbed and network.
pub fn messages_per_cycle(testbed: &str, network: &str) -> u64 {
    use assimd_models::testbed::Testbed;
    let tb = Testbed::new(testbed.parse().unwrap());
    let net = tb.network(network.parse().unwrap()).unwrap();
    let mut sim = assimd::simulate::Simulator::new(tb, net, 1);
    sim.step();
    sim.messages().len() as u64
}

/// Length of one cycle of this testbed in model seconds.
pub fn cycle_seconds(testbed: &str) -> u64 {
    use assimd_models::testbed::Testbed;
    Testbed::new(testbed.parse().unwrap())
        .dynamics
        .cycle_seconds()
        .round() as u64
}

/// A received message: topic and payload.
pub type Message = (String, Vec<u8>);

/// A subscriber that collects (topic, payload) of everything matching `filter`.
pub struct Collector {
    pub got: Arc<Mutex<Vec<Message>>>,
    client: Client,
}

impl Collector {
    pub fn start(port: u16, filter: &str) -> Collector {
        let mut o = MqttOptions::new(format!("collector-{}", free_port()), "127.0.0.1", port);
        o.set_max_packet_size(1 << 22, 1 << 22);
        let (client, mut conn) = Client::new(o, 100);
        client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => g
                        .lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec())),
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        rx.recv_timeout(GUARD).expect("collector subscribed");
        Collector { got, client }
    }

    pub fn payloads(&self, topic: &str) -> Vec<Vec<u8>> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }

    pub fn count_prefix(&self, prefix: &str) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.starts_with(prefix))
            .count()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Publish raw payloads at QoS 1 and wait until the broker acknowledged all of them.
pub fn publish_all(port: u16, msgs: &[(String, Vec<u8>)]) {
    let mut o = MqttOptions::new(format!("burst-{}", free_port()), "127.0.0.1", port);
    o.set_inflight(1000);
    let (client, mut conn) = Client::new(o, 1000);
    let n = msgs.len();
    let h = std::thread::spawn(move || {
        let mut acked = 0;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == n {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("burst publisher: {e}"),
            }
        }
    });
    for (t, p) in msgs {
        client
            .publish(t.clone(), QoS::AtLeastOnce, false, p.clone())
            .unwrap();
    }
    h.join().unwrap();
    let _ = client.disconnect();
}

/// Per cycle, the number of messages the committed summary says it consumed.
pub fn committed_messages(state: &serde_json::Value) -> Vec<(u64, u64)> {
    state["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cycle"].as_u64().unwrap(),
                c["messages"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// promtool: `$PROMTOOL` (set by scripts/setup.sh), else `.tools/bin/promtool` (where setup puts
/// it), else `promtool` on the PATH. Panics with the fix when there is none: CI installs it, so a
/// missing promtool is a failure, never a skip.
pub fn promtool() -> PathBuf {
    tool("PROMTOOL", "promtool").unwrap_or_else(|| panic!("promtool is missing: run `source scripts/setup.sh` (it extracts promtool from Debian's prometheus package into .tools/bin) or set PROMTOOL"))
}

/// A tool that scripts/setup.sh provides: the file named by the environment variable `var`, else
/// `.tools/bin/<name>` (where setup extracts it), else `<name>` on the PATH.
fn tool(var: &str, name: &str) -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/bin")
        .join(name);
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| local.is_file().then_some(local))
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// Run promtool with `args` (and `stdin`); returns (success, stdout + stderr).
pub fn run_promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(promtool());
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting promtool");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `nats-server`: `$ASSIMD_NATS_SERVER` (set by scripts/setup.sh), else `.tools/bin/nats-server`, else
/// the PATH's; None where there is none (the cluster tests then skip, naming the fix). Panics, naming
/// the fix, on a version older than 2.14.4.
pub fn nats_server() -> Option<PathBuf> {
    let found = tool("ASSIMD_NATS_SERVER", "nats-server")?;
    // Older releases have MQTT and JetStream bugs these tests run into (scripts/setup.sh and
    // docs/operations.md, "A clustered broker").
    let out = Command::new(&found).arg("--version").output().ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let parts: Vec<u32> = version
        .rsplit_once('v')
        .map(|(_, v)| v.split('.').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default();
    assert!(
        parts.len() == 3 && parts.as_slice() >= [2, 14, 4].as_slice(),
        "{} is {version}; the cluster tests need nats-server 2.14.4 or later: run ./scripts/test \
         (its setup extracts Debian testing's nats-server into .tools/bin)",
        found.display()
    );
    Some(found)
}

/// The body of a 200 answer to GET `path` on a local HTTP port, None otherwise.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    if !r.starts_with("HTTP/1.0 200") {
        return None;
    }
    r.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// One node of a [`NatsCluster`].
pub struct NatsNode {
    pub mqtt_port: u16,
    pub http_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A three-node NATS cluster with JetStream and the MQTT gateway, each node from
/// `configs/nats/node.conf` (the file `scripts/cluster` uses) on free loopback ports.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    bin: PathBuf,
}

impl NatsCluster {
    pub fn start(dir: &Path, bin: &Path) -> NatsCluster {
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/nats/node.conf"),
        )
        .unwrap();
        let ports: Vec<[u16; 4]> = (0..3)
            .map(|_| [free_port(), free_port(), free_port(), free_port()])
            .collect();
        let mut nodes = Vec::new();
        for (i, [client, http, cluster, mqtt]) in ports.iter().copied().enumerate() {
            let routes: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("nats-route://127.0.0.1:{}", ports[j][2]))
                .collect();
            let store = dir.join(format!("n{}", i + 1));
            std::fs::create_dir_all(&store).unwrap();
            let conf = dir.join(format!("n{}.conf", i + 1));
            std::fs::write(
                &conf,
                template
                    .replace("@NAME@", &format!("test-n{}", i + 1))
                    .replace("@CLIENT_PORT@", &client.to_string())
                    .replace("@HTTP_PORT@", &http.to_string())
                    .replace(
                        "@STORE_DIR@",
                        &store.join("jetstream").display().to_string(),
                    )
                    .replace("@CLUSTER_PORT@", &cluster.to_string())
                    .replace("@ROUTES@", &routes.join(", "))
                    .replace("@MQTT_PORT@", &mqtt.to_string()),
            )
            .unwrap();
            nodes.push(NatsNode {
                mqtt_port: mqtt,
                http_port: http,
                conf,
                log: dir.join(format!("n{}.log", i + 1)),
                child: None,
            });
        }
        let mut c = NatsCluster {
            nodes,
            bin: bin.to_path_buf(),
        };
        for i in 0..3 {
            c.spawn(i);
        }
        for i in 0..3 {
            c.wait_healthy(i);
        }
        c
    }

    fn spawn(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&n.conf)
            .arg("-l")
            .arg(&n.log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        n.child = Some(child);
    }

    /// Until the node's /healthz answers 200 (JetStream up and current).
    pub fn wait_healthy(&self, i: usize) {
        self.wait_health(i, "/healthz");
    }

    /// Until the node's `path` on the monitoring port answers 200.
    fn wait_health(&self, i: usize, path: &str) {
        let port = self.nodes[i].http_port;
        let log = self.nodes[i].log.clone();
        let tail = move || {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        wait_for_or(
            "a NATS node to be healthy",
            || {
                http_get(port, path).map(|_| ()).or_else(|| {
                    std::thread::sleep(Duration::from_millis(200));
                    None
                })
            },
            tail,
        );
    }

    /// Until every JetStream stream and consumer of the running nodes (the MQTT sessions,
    /// messages and retained messages) has a leader, and its leader reports both other replicas
    /// taking part (streams: current; consumers: answering): the state in which losing any one
    /// node keeps a quorum for each of them. An operator takes
    /// a second node down only then; so do the tests. Returns the seconds waited.
    pub fn wait_current(&self) -> f64 {
        let t0 = Instant::now();
        let last = std::cell::RefCell::new(String::new());
        wait_for_or(
            "every stream and consumer of the cluster current on all three nodes",
            || {
                match self.not_current() {
                    None => return Some(t0.elapsed().as_secs_f64()),
                    Some(why) => *last.borrow_mut() = why,
                }
                std::thread::sleep(Duration::from_millis(250));
                None
            },
            || last.borrow().clone(),
        )
    }

    /// Why the cluster is not current, or None when it is: every stream and consumer any node
    /// lists is led by a running node whose view has both other replicas taking part. Streams'
    /// replicas must be current; consumers' must have answered their leader within 3 s (raft
    /// heartbeats are 1 s apart): nats-server 2.9 reports a rejoined node's idle consumer replica
    /// "not current" with a small constant lag, and that node's own view shows no leader for it,
    /// for minutes, while it answers its leader and takes part in its votes.
    fn not_current(&self) -> Option<String> {
        use std::collections::BTreeMap;
        // Every asset's name, and the verdict of its leader's view once a leader is found.
        let mut assets: BTreeMap<String, Option<Result<(), String>>> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                return Some(format!("node {} is down", i + 1));
            }
            let name = format!("test-n{}", i + 1);
            let jsz: serde_json::Value = match http_get(
                n.http_port,
                "/jsz?accounts=true&streams=true&consumers=true",
            ) {
                Some(body) => serde_json::from_str(&body).ok()?,
                None => return Some(format!("node {} does not answer /jsz", i + 1)),
            };
            let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
            for stream in list(&jsz["account_details"])
                .iter()
                .flat_map(|a| list(&a["stream_detail"]))
            {
                let consumers = list(&stream["consumer_detail"]);
                let all =
                    std::iter::once((&stream, true)).chain(consumers.iter().map(|c| (c, false)));
                for (asset, is_stream) in all {
                    let what = asset["name"].as_str().unwrap_or("?").to_string();
                    let cluster = &asset["cluster"];
                    let entry = assets.entry(what.clone()).or_insert(None);
                    if cluster["leader"].as_str() != Some(name.as_str()) {
                        continue;
                    }
                    let replicas = list(&cluster["replicas"]);
                    let ok = |r: &serde_json::Value| {
                        if is_stream {
                            r["current"] == serde_json::json!(true)
                        } else {
                            r["active"].as_u64().is_some_and(|ns| ns < 3_000_000_000)
                        }
                    };
                    // No replicas: a single-replica asset by design (nats-server keeps
                    // one retained-message consumer per node).
                    let replicated = replicas.len() == 2 || (replicas.is_empty() && !is_stream);
                    *entry = Some(if replicated && replicas.iter().all(ok) {
                        Ok(())
                    } else {
                        Err(format!("{what} (led by {name}): replicas {replicas:?}"))
                    });
                }
            }
        }
        if assets.is_empty() {
            return Some("no stream yet".into());
        }
        assets.into_iter().find_map(|(what, v)| match v {
            None => Some(format!("{what} has no leader on a running node")),
            Some(Err(why)) => Some(why),
            Some(Ok(())) => None,
        })
    }

    /// SIGKILL node i.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start node i again (same ports, same JetStream store) and wait until its JetStream is up.
    /// (Not the full /healthz: a rejoining node can report a consumer "not current" for minutes
    /// with nats-server 2.9 while serving normally.)
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_health(i, "/healthz?js-enabled-only=true");
    }

    /// `mqtt.hosts` of a daemon config.
    pub fn hosts_toml(&self) -> String {
        let v: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"127.0.0.1:{}\"", n.mqtt_port))
            .collect();
        format!("hosts = [{}]", v.join(", "))
    }

    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
