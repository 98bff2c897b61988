//! # Daemon configuration (`assimd run --config FILE`)
//!
//! One TOML file, every section and field optional: what is left out keeps the value of the
//! embedded default, `configs/assimd.toml` (compiled into the binary, so `assimd run` works with a
//! file that names only what differs). Unknown keys are errors, and every load path ends in
//! [`Config::validate`], whose messages name the fix. `assimd check-config FILE` runs exactly that.

use crate::settings::{self, LetkfSettings, ScoreSettings, TestbedSettings};
use crate::wire::Limits;
use anyhow::{bail, Context, Result};
use assimd_models::testbed::{Testbed, TestbedKind};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The embedded default configuration (`configs/assimd.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/assimd.toml");

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What is being assimilated: the model and its observing network.
    pub testbed: TestbedSettings,
    /// The broker connection.
    pub mqtt: MqttSection,
    /// Validation, de-duplication and lateness of incoming observations.
    pub ingest: IngestSection,
    /// The cycle clock and the ensemble.
    pub cycle: CycleSection,
    /// The EnKF baseline (always run).
    pub letkf: LetkfSettings,
    /// The score-based filter (run only when a bundle is configured).
    pub score: ScoreSettings,
    /// The on-disk state.
    pub store: StoreSection,
    /// The Prometheus endpoint.
    pub metrics: MetricsSection,
    /// Per-cycle PNG maps (qg2l).
    pub maps: MapsSection,
    /// Process behaviour: shutdown grace, logging.
    pub service: ServiceSection,
    /// `assimd simulate`: the simulated observing network.
    pub simulate: SimulateSection,
    /// Quality control: background check, station monitor, divergence guard, blacklist.
    pub qc: crate::qc::QcSettings,
}

/// `[mqtt]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSection {
    /// Broker host name or address (one endpoint; default 127.0.0.1).
    pub host: Option<String>,
    /// Broker port (1883 plain, 8883 TLS by convention; default 1883).
    pub port: Option<u16>,
    /// The nodes of a clustered broker, `"host:port"` each (`"[::1]:1883"` for IPv6), tried in
    /// order: on a lost connection the client moves to the next one and resumes its persistent
    /// session there. Instead of `host`/`port`, not with them.
    pub hosts: Vec<String>,
    /// Fixed client id: the broker keeps the persistent session (subscriptions and queued QoS 1
    /// messages) under it while the daemon is away, so it must not change between restarts.
    pub client_id: String,
    /// Topic prefix of DESIGN §4 (`{prefix}/obs/station/...`, `{prefix}/analysis/...`).
    pub prefix: String,
    /// MQTT keep-alive in seconds: how fast a dead connection is noticed.
    pub keep_alive_seconds: u64,
    /// User name, when the broker requires authentication.
    pub username: Option<String>,
    /// File holding the password (kept out of the config file; systemd `LoadCredential=` fits).
    pub password_file: Option<PathBuf>,
    /// Connect with TLS, trusting the CA certificates in this PEM file.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs `tls_client_key_file`.
    pub tls_client_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    pub tls_client_key_file: Option<PathBuf>,
    /// First reconnect delay in milliseconds; doubles after each failure.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay in milliseconds.
    pub reconnect_max_ms: u64,
    /// Publish every rejected message, unchanged, to `{prefix}/deadletter/{reason}` so that a
    /// network operator can see what was refused.
    pub dead_letter: bool,
    /// Largest MQTT packet accepted, bytes (above the largest granule plus headers).
    pub max_packet_bytes: usize,
}

impl MqttSection {
    /// The broker endpoints (host, port) in the order they are tried: `hosts`, or else the one of
    /// `host` and `port`.
    pub fn endpoints(&self) -> Result<Vec<(String, u16)>> {
        if self.hosts.is_empty() {
            return Ok(vec![(
                self.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
                self.port.unwrap_or(1883),
            )]);
        }
        self.hosts.iter().map(|h| parse_endpoint(h)).collect()
    }

    /// The endpoints as `host:port` strings, for logs and metrics.
    pub fn endpoint_names(&self) -> Vec<String> {
        self.endpoints()
            .unwrap_or_default()
            .iter()
            .map(|(h, p)| endpoint_name(h, *p))
            .collect()
    }
}

/// `host:port` (brackets around an IPv6 address).
pub fn endpoint_name(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Parse one `mqtt.hosts` entry, `host:port` or `[v6 address]:port`.
fn parse_endpoint(s: &str) -> Result<(String, u16)> {
    let fix = || {
        format!(
            "mqtt.hosts entry {s:?} must be \"host:port\" (e.g. \"broker-1.example.org:1883\", \"[::1]:1883\")"
        )
    };
    let (host, port) = s.rsplit_once(':').with_context(fix)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|p| *p > 0).with_context(fix)?;
    if host.is_empty() || (host.contains(':') && !s.starts_with('[')) {
        bail!("{}", fix());
    }
    Ok((host.to_string(), port))
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            host: None,
            port: None,
            hosts: Vec::new(),
            client_id: "assimd".into(),
            prefix: "assimd".into(),
            keep_alive_seconds: 30,
            username: None,
            password_file: None,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            dead_letter: true,
            max_packet_bytes: 1 << 20,
        }
    }
}

/// `[ingest]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSection {
    /// How far, in observation time (seconds), the newest observation must lie past the end of a
    /// window before that window closes and is analysed. Messages of a closed window are late:
    /// acknowledged, counted and dropped. Larger values tolerate more reordering between topics.
    /// Default (absent): one cycle.
    pub cutoff_seconds: Option<i64>,
    /// Reject observations timed more than `limits.max_future_seconds` after the wall clock. Off
    /// for simulations on an accelerated clock, whose times run ahead of the wall clock.
    pub reject_future: bool,
    /// Most messages journaled per sled flush (the flush is what an acknowledgement waits for).
    pub max_batch: usize,
    /// Station ids used only for verification, never assimilated. Absent: the withheld stations
    /// of the testbed's network (what `simulate` publishes).
    pub withheld_stations: Option<Vec<String>>,
    /// Subscribe to `{prefix}/truth/{testbed}` (published by `assimd simulate`) and score the
    /// analyses against it (OSSE mode).
    pub truth: bool,
    /// Size limits of messages.
    pub limits: Limits,
    /// Network labels accepted in station topics (`obs/station/{network}/{station}`); absent: any.
    /// The payload has no network field, so this is where a deployment says which networks it
    /// takes.
    pub networks: Option<Vec<String>>,
    /// Values rejected as `missing_value`: the fill codes of dataloggers
    /// (`wire::DEFAULT_MISSING_VALUES`).
    pub missing_values: Vec<f64>,
    /// Physical range `[lo, hi]` per variable name, overriding `wire::DEFAULT_RANGES`; a value
    /// outside it is rejected as `out_of_range`.
    pub ranges: BTreeMap<String, [f64; 2]>,
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            cutoff_seconds: None,
            reject_future: true,
            max_batch: 1024,
            withheld_stations: None,
            truth: true,
            limits: Limits::default(),
            networks: None,
            missing_values: crate::wire::DEFAULT_MISSING_VALUES.to_vec(),
            ranges: BTreeMap::new(),
        }
    }
}

impl IngestSection {
    /// The ingest checks for a state space.
    pub fn checks(&self, space: &assimd_filter::StateSpace) -> Result<crate::wire::Checks> {
        let values = crate::wire::ValueChecks::new(space, Some(&self.missing_values), &self.ranges)
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(crate::wire::Checks {
            limits: self.limits.clone(),
            networks: self.networks.clone(),
            values,
        })
    }
}

/// `[cycle]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CycleSection {
    /// Valid time of cycle 0 (RFC 3339): cycle k is valid at start + k * cycle length, and its
    /// window is the half-open interval (t_k - cycle/2, t_k + cycle/2].
    pub start: String,
    /// Ensemble size N of both filters.
    pub members: usize,
    /// Seed of the initial ensemble (climatological draws) and of the filters' random numbers.
    pub seed: u64,
    /// Analysis cycles kept in the store (the rolling state); older ones are deleted at commit.
    pub keep: u64,
    /// Cycle summaries kept in the store (small JSON, about 1 KB each), at least `keep`: the skill
    /// history that `assimd plot skill --input STORE` draws.
    pub keep_summaries: u64,
    /// Most empty cycles run in a row to catch up with observations far ahead of the state; a
    /// larger gap is refused (reset or move `start`).
    pub max_gap: u64,
}

impl Default for CycleSection {
    fn default() -> Self {
        CycleSection {
            start: "2026-01-01T00:00:00Z".into(),
            members: 20,
            seed: 1,
            keep: 8,
            keep_summaries: 1460,
            max_gap: 10_000,
        }
    }
}

/// `[store]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// sled database directory (systemd: `StateDirectory=assimd` gives `/var/lib/assimd`).
    pub path: PathBuf,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            path: PathBuf::from("/var/lib/assimd/store"),
        }
    }
}

/// `[metrics]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the Prometheus `/metrics` endpoint; empty = no endpoint.
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[maps]`: pictures of every cycle (qg2l only), for operators who want to see the fields.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapsSection {
    /// Write a PNG per cycle: truth (in simulation), observations, each filter's analysis mean and
    /// spread (`plot::maps`). Off by default: it costs a few tens of milliseconds and disk space.
    pub enabled: bool,
    /// Directory of the pictures (`cycle-NNNNNN.png`); created when missing.
    pub dir: PathBuf,
    /// Draw every this many cycles.
    pub every: u64,
    /// Most pictures kept, the oldest deleted first (0 = keep all), so that the disk does not fill.
    pub keep: usize,
}

impl Default for MapsSection {
    fn default() -> Self {
        MapsSection {
            enabled: false,
            dir: PathBuf::from("/var/lib/assimd/maps"),
            every: 1,
            keep: 240,
        }
    }
}

/// `[service]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSection {
    /// On SIGTERM, how long the running cycle may take to finish and commit before it is
    /// abandoned (it is then redone after restart). Keep below systemd's `TimeoutStopSec`.
    pub grace_seconds: f64,
}

impl Default for ServiceSection {
    fn default() -> Self {
        ServiceSection {
            grace_seconds: 20.0,
        }
    }
}

/// `[simulate]`: used by `assimd simulate` only.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulateSection {
    /// Seed of the truth and of the observation errors.
    pub seed: u64,
    /// First cycle published (the truth is run silently up to it).
    pub first_cycle: u64,
    /// Cycles published.
    pub cycles: u64,
    /// Wall-clock milliseconds between cycles (the accelerated clock); 0 = as fast as the broker
    /// acknowledges.
    pub interval_ms: u64,
    /// Also publish the truth on `{prefix}/truth/{testbed}`.
    pub truth: bool,
    /// Bad observations to inject (gross errors, a stuck station, a drifting station), as
    /// `assimd experiment --gross-errors/--bias` does: for watching the daemon's quality control.
    pub faults: crate::faults::Faults,
}

impl Default for SimulateSection {
    fn default() -> Self {
        SimulateSection {
            seed: 101,
            first_cycle: 1,
            cycles: 100,
            interval_ms: 500,
            truth: true,
            faults: crate::faults::Faults::default(),
        }
    }
}

impl Config {
    /// The embedded default.
    pub fn embedded() -> Result<Config> {
        Config::parse(DEFAULT_CONFIG, Path::new("<embedded configs/assimd.toml>"))
    }

    /// Parse and validate TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let origin = format!("config {}", origin.display());
        let file = settings::parse_table(text, &origin)?;
        Config::layered(file)
            .and_then(Config::validate)
            .with_context(|| format!("invalid {origin}"))
    }

    /// The layers of [`crate::settings`] for the daemon: built-in defaults, the tuned table of the
    /// configured testbed and network (`[letkf]`, `[score]` and `cycle.members`), then the file.
    pub fn layered(file: toml::Table) -> Result<Config> {
        let tb = settings::testbed_of(&file, None)?;
        let mut tuned = settings::tuned(tb.name, tb.network);
        let mut layered = toml::Table::new();
        if let Some(m) = tuned.remove("members") {
            let mut cycle = toml::Table::new();
            cycle.insert("members".into(), m);
            layered.insert("cycle".into(), cycle.into());
        }
        for t in ["letkf", "score"] {
            if let Some(v) = tuned.remove(t) {
                layered.insert(t.into(), v);
            }
        }
        settings::merge(&mut layered, file);
        settings::from_table(layered, "config")
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Config::parse(&text, path)
    }

    /// The filter settings of the config (the daemon runs `letkf`, and `score` with a bundle).
    pub fn filters(&self) -> settings::FilterSettings {
        settings::FilterSettings {
            letkf: self.letkf.clone(),
            score: self.score.clone(),
            ..Default::default()
        }
    }

    pub fn start_time(&self) -> Result<DateTime<Utc>> {
        Ok(DateTime::parse_from_rfc3339(&self.cycle.start)
            .with_context(|| {
                format!(
                    "cycle.start = {:?} must be an RFC 3339 time such as \"2026-01-01T00:00:00Z\"",
                    self.cycle.start
                )
            })?
            .with_timezone(&Utc))
    }

    /// Check everything that can be checked without the network; errors name the fix.
    pub fn validate(self) -> Result<Config> {
        let tb = self.testbed.name;
        let testbed = self.testbed.testbed()?;
        self.start_time()?;
        self.check_mqtt()?;
        self.check_ingest(&testbed)?;
        self.check_rest(tb)?;
        Ok(self)
    }

    /// `[mqtt]`.
    fn check_mqtt(&self) -> Result<()> {
        let m = &self.mqtt;
        if !m.hosts.is_empty() && (m.host.is_some() || m.port.is_some()) {
            bail!(
                "mqtt.hosts and mqtt.host/mqtt.port are both given: list every node in mqtt.hosts \
                 (\"host:port\" each) and remove host and port"
            );
        }
        if m.host.as_deref() == Some("") {
            bail!("mqtt.host is empty: give the broker's host name or address");
        }
        if m.port == Some(0) {
            bail!("mqtt.port must be a port number 1..65535, got 0");
        }
        let endpoints = m.endpoints()?;
        let mut seen = std::collections::HashSet::new();
        for (h, p) in &endpoints {
            if !seen.insert((h, p)) {
                bail!(
                    "mqtt.hosts lists {} twice: give each node once",
                    endpoint_name(h, *p)
                );
            }
        }
        if m.client_id.is_empty() || m.client_id.len() > 64 {
            bail!("mqtt.client_id must be 1..64 characters (it names the persistent session)");
        }
        if m.prefix.is_empty() || m.prefix.contains(['+', '#']) || m.prefix.ends_with('/') {
            bail!(
                "mqtt.prefix {:?} must be non-empty, without wildcards or a trailing '/'",
                m.prefix
            );
        }
        if m.keep_alive_seconds < 5 {
            bail!(
                "mqtt.keep_alive_seconds must be >= 5, got {}",
                m.keep_alive_seconds
            );
        }
        if m.reconnect_min_ms == 0 || m.reconnect_max_ms < m.reconnect_min_ms {
            bail!(
                "mqtt.reconnect_min_ms must be > 0 and <= mqtt.reconnect_max_ms, got {} and {}",
                m.reconnect_min_ms,
                m.reconnect_max_ms
            );
        }
        if m.password_file.is_some() && m.username.is_none() {
            bail!("mqtt.password_file is set but mqtt.username is not: set both or neither");
        }
        if m.tls_client_cert_file.is_some() != m.tls_client_key_file.is_some() {
            bail!("mqtt.tls_client_cert_file and mqtt.tls_client_key_file go together: set both or neither");
        }
        if m.tls_client_cert_file.is_some() && m.tls_ca_file.is_none() {
            bail!(
                "mutual TLS needs mqtt.tls_ca_file (the CA that signed the broker's certificate)"
            );
        }
        for (name, p) in [
            ("password_file", &m.password_file),
            ("tls_ca_file", &m.tls_ca_file),
            ("tls_client_cert_file", &m.tls_client_cert_file),
            ("tls_client_key_file", &m.tls_client_key_file),
        ] {
            if let Some(p) = p {
                if !p.is_file() {
                    bail!(
                        "mqtt.{name} = {} does not exist or is not a file",
                        p.display()
                    );
                }
            }
        }
        if m.max_packet_bytes < self.ingest.limits.max_bytes {
            bail!(
                "mqtt.max_packet_bytes ({}) must be >= ingest.limits.max_bytes ({})",
                m.max_packet_bytes,
                self.ingest.limits.max_bytes
            );
        }
        Ok(())
    }

    /// `[ingest]` and `[qc]`.
    fn check_ingest(&self, testbed: &Testbed) -> Result<()> {
        if let Some(c) = self.ingest.cutoff_seconds {
            if c < 0 {
                bail!("ingest.cutoff_seconds must be >= 0, got {c}");
            }
        }
        if self.ingest.max_batch == 0 {
            bail!("ingest.max_batch must be >= 1");
        }
        if let Some(n) = &self.ingest.networks {
            if n.is_empty()
                || n.iter()
                    .any(|s| s.is_empty() || s.contains(['/', '+', '#']))
            {
                bail!("ingest.networks = {n:?}: give one or more topic levels (no '/', '+' or '#'), or remove the key to accept any network");
            }
        }
        self.ingest.checks(&testbed.space)?;
        self.qc.validate()?;
        self.simulate.faults.validate().context("simulate.faults")?;
        Ok(())
    }

    /// `[cycle]`, `[maps]`, the filters, `[metrics]`, `[service]`, `[store]`.
    fn check_rest(&self, tb: TestbedKind) -> Result<()> {
        if self.cycle.members < 2 {
            bail!(
                "cycle.members must be >= 2 (an ensemble), got {}",
                self.cycle.members
            );
        }
        if self.cycle.keep < 1 {
            bail!("cycle.keep must be >= 1 (the last committed cycle is the restart point)");
        }
        if self.cycle.keep_summaries < self.cycle.keep {
            bail!(
                "cycle.keep_summaries ({}) must be >= cycle.keep ({})",
                self.cycle.keep_summaries,
                self.cycle.keep
            );
        }
        if self.maps.enabled {
            if tb != TestbedKind::Qg2l {
                bail!("maps.enabled needs testbed.name = \"qg2l\" (l96 has no two-dimensional field to map): turn maps off");
            }
            if self.maps.every == 0 {
                bail!("maps.every must be >= 1 (1 = a picture every cycle)");
            }
            if self.maps.dir.as_os_str().is_empty() {
                bail!("maps.dir is empty: give the directory for the pictures");
            }
        }
        self.filters().validate()?;
        if !self.metrics.listen.is_empty() {
            self.metrics.listen.parse::<std::net::SocketAddr>().with_context(|| {
                format!("metrics.listen = {:?} must be an address such as \"127.0.0.1:9464\" (or \"\" for no endpoint)", self.metrics.listen)
            })?;
        }
        if !(self.service.grace_seconds >= 0.0 && self.service.grace_seconds.is_finite()) {
            bail!(
                "service.grace_seconds must be a finite number >= 0, got {}",
                self.service.grace_seconds
            );
        }
        if self.store.path.as_os_str().is_empty() {
            bail!("store.path is empty: give the directory of the state database");
        }
        Ok(())
    }

    /// The cutoff in milliseconds (default one cycle).
    pub fn cutoff_ms(&self, cycle_ms: i64) -> i64 {
        self.ingest
            .cutoff_seconds
            .map(|s| s * 1000)
            .unwrap_or(cycle_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded().unwrap();
        assert_eq!(c.testbed.name, assimd_models::testbed::TestbedKind::L96);
        assert_eq!(c.mqtt.prefix, "assimd");
        // The file documents the defaults: it must say what the code does without it.
        let empty = Config::parse("", Path::new("empty")).unwrap();
        assert_eq!(format!("{c:?}"), format!("{empty:?}"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = Config::parse("[mqtt]\nhots = \"x\"\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("hots"), "{e:#}");
    }

    #[test]
    fn errors_name_the_fix() {
        let e = Config::parse("[letkf]\ninflation = 0.9\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("inflation"), "{e:#}");
        let e = Config::parse("[testbed]\nname = \"l95\"\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("l95"), "{e:#}");
        assert!(format!("{e:#}").contains("testbed.name"), "{e:#}");
        let e = Config::parse("[cycle]\nmembers = 1\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("cycle.members"), "{e:#}");
        let e = Config::parse("[metrics]\nlisten = \"nowhere\"\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("metrics.listen"), "{e:#}");
        let e = Config::parse("[score]\nbundle = \"/nonexistent\"\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("manifest.toml"), "{e:#}");
        let e = Config::parse("[maps]\nenabled = true\n", Path::new("t")).unwrap_err();
        assert!(
            format!("{e:#}").contains("maps.enabled needs testbed.name = \"qg2l\""),
            "{e:#}"
        );
        assert!(Config::parse(
            "[testbed]\nname = \"qg2l\"\n[maps]\nenabled = true\n",
            Path::new("t")
        )
        .is_ok());
        let e =
            Config::parse("[ingest.ranges]\nhumidity = [0.0, 1.0]\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("ingest.ranges.humidity"), "{e:#}");
        let e = Config::parse("[ingest]\nnetworks = []\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("ingest.networks"), "{e:#}");
        // The sampler is validated as `run` builds it.
        let e = Config::parse("[score.sampler]\nsteps = 1\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("score.sampler"), "{e:#}");
        // A qg2l config that names nothing else gets the qg2l tuning, not the l96 one.
        let c = Config::parse("[testbed]\nname = \"qg2l\"\n", Path::new("t")).unwrap();
        assert_eq!(
            (c.letkf.localization_km, c.letkf.rtps, c.cycle.members),
            (100.0, 0.5, 32)
        );
        let e = Config::parse("[qc.station]\nk = -1.0\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("qc.station.k"), "{e:#}");
        assert!(Config::parse(
            "[testbed]\nname = \"qg2l\"\n[ingest.ranges]\npressure = [-8.0, 8.0]\n",
            Path::new("t")
        )
        .is_ok());
        let e =
            Config::parse("[cycle]\nkeep = 10\nkeep_summaries = 5\n", Path::new("t")).unwrap_err();
        assert!(format!("{e:#}").contains("cycle.keep_summaries"), "{e:#}");
    }

    #[test]
    fn broker_endpoints_are_one_host_or_a_list_never_both() {
        let t = Path::new("t");
        let one = Config::parse("", t).unwrap();
        assert_eq!(
            one.mqtt.endpoints().unwrap(),
            [("127.0.0.1".to_string(), 1883)]
        );
        let one = Config::parse("[mqtt]\nhost = \"b1\"\nport = 8883\n", t).unwrap();
        assert_eq!(one.mqtt.endpoint_names(), ["b1:8883"]);
        let many = Config::parse(
            "[mqtt]\nhosts = [\"n1.example.org:4001\", \"10.0.0.2:1883\", \"[::1]:1884\"]\n",
            t,
        )
        .unwrap();
        assert_eq!(
            many.mqtt.endpoints().unwrap(),
            [
                ("n1.example.org".to_string(), 4001),
                ("10.0.0.2".to_string(), 1883),
                ("::1".to_string(), 1884)
            ]
        );
        assert_eq!(
            many.mqtt.endpoint_names(),
            ["n1.example.org:4001", "10.0.0.2:1883", "[::1]:1884"]
        );
        let both = Config::parse("[mqtt]\nport = 1883\nhosts = [\"a:1\"]\n", t).unwrap_err();
        assert!(
            format!("{both:#}").contains("list every node in mqtt.hosts"),
            "{both:#}"
        );
        for bad in ["a", "a:0", "a:x", ":1883", "::1:1883", "a:70000"] {
            let e = Config::parse(&format!("[mqtt]\nhosts = [\"{bad}\"]\n"), t).unwrap_err();
            assert!(
                format!("{e:#}").contains("must be \"host:port\""),
                "{bad}: {e:#}"
            );
        }
        let twice = Config::parse("[mqtt]\nhosts = [\"a:1\", \"a:1\"]\n", t).unwrap_err();
        assert!(
            format!("{twice:#}").contains("lists a:1 twice"),
            "{twice:#}"
        );
    }
}
