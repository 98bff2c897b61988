//! # The daemon (`assimd run`)
//!
//! Services, each its own type and file, each a task that ends when told to (one
//! [`CancellationToken`] tree, all spawned under one [`TaskTracker`]):
//! - [`mqtt::Connection`]: the broker event loop (persistent session, reconnect with backoff);
//! - [`ingest::Ingest`]: validate, de-duplicate, journal, acknowledge; it owns the cycle clock;
//! - [`cycles::Cycles`]: runs every closed window as one cycle of the [`engine::Engine`];
//! - [`publisher::Publisher`]: summaries ([`summary::CycleSummary`]), means and dead letters, QoS 1;
//! - [`notifier::Notifier`]: systemd READY, STATUS, WATCHDOG, STOPPING;
//! - [`reload::Reload`]: SIGHUP re-reads `[qc]`.
//!
//! [`run`] wires them and waits for the shutdown future: [`Stop::Graceful`] (SIGTERM) stops
//! ingestion, lets the running cycle finish and commit within `service.grace_seconds`, then
//! disconnects; [`Stop::Fast`] (SIGINT) abandons the running cycle (it is redone after restart from
//! the journal). Nothing acknowledged is lost either way: acknowledgements follow the journal flush.

pub mod broker;
pub mod clock;
pub mod config;
pub mod cycles;
pub mod demo;
pub mod engine;
pub mod ingest;
pub mod mqtt;
pub mod notifier;
pub mod publisher;
pub mod reload;
pub mod simulator;
pub mod store;
pub mod summary;
pub mod telemetry;

use crate::filters::LoadedBundle;
use anyhow::{bail, Context, Result};
use assimd_models::testbed::Testbed;
use clock::CycleClock;
use config::Config;
use engine::{CycleReport, Engine, FilterSlot};
use rumqttc::AsyncClient;
use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;
use store::Store;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A message to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Full topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Retained (the latest mean is).
    pub retain: bool,
}

/// How to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: finish the running cycle within the grace period.
    Graceful,
    /// SIGINT: abandon the running cycle.
    Fast,
}

/// What the caller of [`run`] can hook in.
#[derive(Default)]
pub struct RunOptions {
    /// Receives every committed cycle's summary (the demo's table).
    pub reports: Option<mpsc::UnboundedSender<CycleReport>>,
    /// Install the Prometheus recorder (once per process; the demo's second daemon would not).
    pub install_metrics: bool,
    /// Set to true once the daemon is subscribed (the demo starts its simulator then).
    pub subscribed: Option<watch::Sender<bool>>,
    /// The config file's name, for messages that suggest `assimd reset --config FILE`.
    pub config_hint: String,
    /// The config file, re-read on SIGHUP for its `[qc]` section (None: no reload).
    pub config_path: Option<std::path::PathBuf>,
}

pub use crate::filters::bundle_hash;

/// The settings that a stored state depends on: changing one of them needs `assimd reset`.
pub fn compat_key(cfg: &Config, cycle_ms: i64, filters: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "testbed": cfg.testbed.name.to_string(),
        "members": cfg.cycle.members,
        "start": cfg.cycle.start,
        "cycle_ms": cycle_ms,
        "filters": filters,
    })
}

/// Named analysis steps, in the order the engine runs them (the LETKF first).
pub type Filters = Vec<(&'static str, Box<dyn assimd_filter::Analysis>)>;

/// The filters of a config, built by [`crate::filters::build_filter`]: the LETKF always, the score
/// filter when a bundle is configured. Returns them with the bundle that was loaded.
pub fn build_filters(cfg: &Config, testbed: &Testbed) -> Result<(Filters, Option<LoadedBundle>)> {
    use crate::filters::build_filter;
    use crate::settings::FilterKind;
    let settings = cfg.filters();
    let letkf = build_filter(FilterKind::Letkf, &settings, testbed)?
        .context("the LETKF has an analysis step")?;
    let mut filters = vec![("letkf", letkf.analysis)];
    let mut bundle = None;
    if cfg.score.bundle.is_some() {
        let score = build_filter(FilterKind::Score, &settings, testbed)?
            .context("the score filter has an analysis step")?;
        if let Some(note) = score.bundle.as_ref().and_then(|b| b.provider_note.as_ref()) {
            tracing::warn!("score filter: {note}");
        }
        filters.push(("score", score.analysis));
        bundle = score.bundle;
    }
    Ok((filters, bundle))
}

/// The daemon's state when it starts: the filters with their ensembles, the store, the clock.
struct Started {
    testbed: Testbed,
    network: assimd_models::testbed::Network,
    clock: CycleClock,
    store: Store,
    filters: Vec<FilterSlot>,
    committed: u64,
    closed: u64,
}

/// Build the filters, open the store (checking that it belongs to this configuration) and load
/// the last committed ensembles, or draw a fresh climatological ensemble.
async fn start(cfg: &Config, opts: &RunOptions) -> Result<Started> {
    let testbed = cfg.testbed.testbed()?;
    let network = cfg.testbed.network(&testbed)?;
    let cycle_ms = (testbed.dynamics.cycle_seconds() * 1000.0).round() as i64;
    let clock = CycleClock {
        start_ms: cfg.start_time()?.timestamp_millis(),
        cycle_ms,
        cutoff_ms: cfg.cutoff_ms(cycle_ms),
    };
    if opts.install_metrics {
        let listen = match cfg.metrics.listen.as_str() {
            "" => None,
            l => Some(l.parse()?),
        };
        telemetry::install(listen)?;
    }
    let (built, bundle) = {
        let (cfg2, tb2) = (cfg.clone(), testbed.clone());
        tokio::task::spawn_blocking(move || build_filters(&cfg2, &tb2)).await??
    };
    if let Some(b) = &bundle {
        metrics::gauge!(telemetry::ORT_PROVIDER, "provider" => b.provider.clone()).set(1.0);
        tracing::info!(hash = %b.hash, provider = %b.provider, "score filter: model bundle loaded");
    }
    let names: Vec<&str> = built.iter().map(|(n, _)| *n).collect();
    telemetry::register_filters(&names);
    metrics::gauge!(telemetry::CYCLE_LENGTH).set(cycle_ms as f64 / 1000.0);
    let store = Store::open(&cfg.store.path)?;
    let hash = bundle.as_ref().map(|b| b.hash.as_str());
    store.check_or_init(&compat_key(cfg, cycle_ms, &names), hash, &opts.config_hint)?;
    let committed = store.assimilated_up_to()?;
    // Climatological draws are costly for qg2l (model integrations): only for a fresh state.
    let draws = if committed == 0 {
        testbed.climatological_draws(cfg.cycle.members, cfg.cycle.seed)
    } else {
        Vec::new()
    };
    let mut filters = Vec::new();
    for (name, analysis) in built {
        let ens = if committed == 0 {
            assimd_filter::Ensemble::from_members(draws.clone())?
        } else {
            store.load_ensemble(name, committed, cfg.cycle.members)?
        };
        let last_good = None;
        filters.push(FilterSlot {
            name,
            analysis,
            ens,
            last_good,
        });
    }
    let closed = committed.max(store.obs_clock_ms()?.map_or(0, |c| clock.closed_by(c)));
    tracing::info!(
        committed,
        closed,
        journaled = store.journaled_total()?,
        "state loaded from {}",
        cfg.store.path.display()
    );
    metrics::gauge!(telemetry::LAST_CYCLE).set(committed as f64);
    Ok(Started {
        testbed,
        network,
        clock,
        store,
        filters,
        committed,
        closed,
    })
}

/// The ingest service of a config.
fn ingest_service(
    cfg: &Config,
    s: &Started,
    client: AsyncClient,
    gate: mqtt::AckGate,
    closed: watch::Sender<u64>,
    out: &mpsc::UnboundedSender<Outgoing>,
) -> Result<ingest::Ingest> {
    let space = s.testbed.space.clone();
    let prefix = &cfg.mqtt.prefix;
    Ok(ingest::Ingest {
        store: s.store.clone(),
        checks: cfg.ingest.checks(&space)?,
        dim: space.dim(),
        space,
        reject_future: cfg.ingest.reject_future,
        prefix: prefix.clone(),
        truth_topic: cfg
            .ingest
            .truth
            .then(|| format!("{prefix}/truth/{}", cfg.testbed.name)),
        clock: s.clock,
        closed,
        client,
        gate,
        dead_letter: cfg.mqtt.dead_letter.then(|| out.clone()),
        max_batch: cfg.ingest.max_batch,
    })
}

/// The cycle engine of a config, with the station monitor's state from the store. Republishes the
/// last committed cycle (at-least-once for summaries: a crash between commit and publication
/// loses none).
fn engine(
    cfg: &Config,
    s: Started,
    out: mpsc::UnboundedSender<Outgoing>,
    reports: Option<mpsc::UnboundedSender<CycleReport>>,
    qc_reload: watch::Receiver<crate::qc::QcSettings>,
) -> Result<Engine> {
    let withheld: HashSet<String> = match &cfg.ingest.withheld_stations {
        Some(v) => v.iter().cloned().collect(),
        None => s
            .network
            .stations
            .iter()
            .filter(|s| s.withheld)
            .map(|s| s.id.clone())
            .collect(),
    };
    let (mut qc, cleared) =
        crate::qc::Qc::new(cfg.qc.clone(), s.store.monitor_state()?.unwrap_or_default());
    let clim = s.testbed.climatology();
    // The maps' colour scale: ± three climatological standard deviations of the upper layer.
    let field_limit = crate::plot::nice_ceil(3.0 * clim.std[0]);
    qc.climatology = Some((clim.mean, clim.std));
    if !cleared.is_empty() {
        tracing::info!(?cleared, "qc.clear: automatic blacklisting lifted");
    }
    let last = s.store.summaries()?.pop();
    let engine = Engine {
        store: s.store,
        testbed: s.testbed,
        clock: s.clock,
        filters: s.filters,
        withheld,
        seed: cfg.cycle.seed,
        keep: cfg.cycle.keep,
        keep_summaries: cfg.cycle.keep_summaries,
        maps: cfg.maps.enabled.then(|| crate::plot::maps::MapWriter {
            dir: cfg.maps.dir.clone(),
            every: cfg.maps.every,
            keep: cfg.maps.keep,
            field_limit,
        }),
        max_gap: cfg.cycle.max_gap,
        committed: s.committed,
        prefix: cfg.mqtt.prefix.clone(),
        out,
        reports,
        qc,
        qc_reload: Some(qc_reload),
    };
    if let Some((k, summary)) = last {
        engine.publish(k, &summary);
        engine.publish_stations(k);
    }
    Ok(engine)
}

/// The connection service of a config.
fn connection(
    cfg: &Config,
    client: AsyncClient,
    eventloop: rumqttc::EventLoop,
    endpoints: Vec<(String, rumqttc::MqttOptions)>,
    publishes: mpsc::UnboundedSender<(u64, rumqttc::Publish)>,
    connected: Option<watch::Sender<bool>>,
    expect_session: bool,
) -> mqtt::Connection {
    let prefix = &cfg.mqtt.prefix;
    mqtt::Connection {
        client,
        eventloop,
        topics: mqtt::subscriptions(prefix, &cfg.testbed.name.to_string(), cfg.ingest.truth),
        endpoints,
        backoff: (
            Duration::from_millis(cfg.mqtt.reconnect_min_ms),
            Duration::from_millis(cfg.mqtt.reconnect_max_ms),
        ),
        publishes,
        gate: mqtt::AckGate::default(),
        connected: connected.unwrap_or_else(|| watch::channel(false).0),
        expect_session,
    }
}

/// The cancellation tree of the services. `root` (the connection, the notifier, the reload
/// handler) ⊃ `work` (the cycle service: cancelled, it abandons the cycles not yet run) ⊃ `ingest`
/// (stop taking messages). A graceful stop cancels `ingest`, lets the cycles finish within the
/// grace period, then cancels `work` and `root`; a fast stop cancels `work` at once.
struct Tokens {
    root: CancellationToken,
    work: CancellationToken,
    ingest: CancellationToken,
}

impl Tokens {
    fn new() -> Tokens {
        let root = CancellationToken::new();
        let work = root.child_token();
        let ingest = work.child_token();
        Tokens { root, work, ingest }
    }
}

/// Run the daemon until `shutdown` resolves (or a service fails): the wiring of the services,
/// each spawned under one [`TaskTracker`].
pub async fn run(
    cfg: Config,
    mut opts: RunOptions,
    shutdown: impl Future<Output = Stop>,
) -> Result<()> {
    let started = start(&cfg, &opts).await?;
    let (store, tokens, tracker) = (started.store.clone(), Tokens::new(), TaskTracker::new());
    let mut endpoints = mqtt::endpoint_options(&cfg.mqtt, &cfg.mqtt.client_id, false)?;
    for (_, o) in &mut endpoints {
        o.set_manual_acks(true);
    }
    let (client, eventloop) = AsyncClient::new(endpoints[0].1.clone(), 16_384);
    let (pub_tx, pub_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let (closed_tx, closed_rx) = watch::channel(started.closed);
    let connected = opts.subscribed.take();
    let conn = connection(
        &cfg,
        client.clone(),
        eventloop,
        endpoints,
        pub_tx,
        connected,
        store.journaled_total()? > 0,
    );
    let gate = conn.gate.clone();
    tracker.spawn(conn.run(tokens.ingest.clone(), tokens.root.clone()));
    let ingest = ingest_service(&cfg, &started, client.clone(), gate, closed_tx, &out_tx)?;
    let mut ingest = tracker.spawn(ingest.run(pub_rx));
    let publisher = tracker.spawn(publisher::Publisher { client, rx: out_rx }.run());
    let (qc_tx, qc_rx) = watch::channel(cfg.qc.clone());
    if let Some(path) = opts.config_path.clone() {
        tracker.spawn(reload::Reload { path, tx: qc_tx }.run(tokens.root.clone()));
    }
    let engine = engine(&cfg, started, out_tx, opts.reports.take(), qc_rx)?;
    let cycles = cycles::Cycles {
        engine,
        closed: closed_rx,
        stop: tokens.work.clone(),
    };
    let mut cycles = tracker.spawn(cycles.run());
    let endpoint = cfg.mqtt.endpoint_names().join(", ");
    tracing::info!(
        "ready: cycle {} committed, subscribing on {endpoint}",
        store.assimilated_up_to()?
    );
    tracker.spawn(
        notifier::Notifier {
            store: store.clone(),
            endpoint,
        }
        .run(tokens.root.clone()),
    );
    tracker.close();
    tokio::pin!(shutdown);
    let stop = tokio::select! {
        s = &mut shutdown => s,
        r = &mut cycles => {
            tokens.root.cancel();
            return match r { Ok(Ok(_)) => bail!("the cycle engine stopped unexpectedly"), Ok(Err(e)) => Err(e.context("cycle engine")), Err(e) => Err(e.into()) };
        }
        r = &mut ingest => {
            tokens.root.cancel();
            return match r { Ok(Ok(())) => bail!("ingestion stopped unexpectedly"), Ok(Err(e)) => Err(e.context("journal writer")), Err(e) => Err(e.into()) };
        }
    };
    let grace = Duration::from_secs_f64(cfg.service.grace_seconds);
    let services = Running {
        tokens,
        tracker,
        ingest,
        cycles,
        publisher,
    };
    services.stop(stop, grace).await;
    store.flush()?;
    Ok(())
}

/// The running services, as [`run`] stops them.
struct Running {
    tokens: Tokens,
    tracker: TaskTracker,
    ingest: tokio::task::JoinHandle<Result<()>>,
    cycles: tokio::task::JoinHandle<Result<u64>>,
    publisher: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop: ingest first (graceful) or all the work (fast), the running cycle within the grace
    /// period (500 ms when fast), the last publications, then the connection and the rest.
    async fn stop(mut self, stop: Stop, grace: Duration) {
        tracing::info!("stopping ({stop:?})");
        let fast = stop == Stop::Fast;
        let deadline = tokio::time::Instant::now()
            + if fast {
                Duration::from_millis(500)
            } else {
                grace
            };
        if fast {
            self.tokens.work.cancel();
        } else {
            self.tokens.ingest.cancel();
        }
        match tokio::time::timeout_at(deadline, &mut self.ingest).await {
            Ok(Ok(Err(e))) => tracing::error!("journal writer: {e:#}"),
            Err(_) => tracing::warn!("the journal writer did not finish in time; its batch is unacknowledged and will be redelivered"),
            _ => {}
        }
        let committed = match tokio::time::timeout_at(deadline, &mut self.cycles).await {
            Ok(Ok(Ok(k))) => Some(k),
            Ok(Ok(Err(e))) => {
                tracing::error!("cycle engine: {e:#}");
                None
            }
            Ok(Err(e)) => {
                tracing::error!("cycle engine: {e}");
                None
            }
            Err(_) => {
                self.tokens.work.cancel();
                let why = if fast {
                    "SIGINT".to_string()
                } else {
                    format!("grace period of {grace:?} over")
                };
                tracing::warn!(
                    "the running cycle was abandoned ({why}); it is redone after restart"
                );
                None
            }
        };
        // Let the last publications out, then disconnect and stop the rest.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.publisher).await;
        self.tokens.root.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.tracker.wait()).await;
        tracing::info!(
            "stopped; last committed cycle {}",
            committed.map_or("unknown (abandoned)".into(), |k| k.to_string())
        );
    }
}

/// `assimd reset`: delete the state store of a config (refuses a path that is not a sled store).
pub fn reset(cfg: &Config) -> Result<()> {
    let p = &cfg.store.path;
    if !p.exists() {
        println!("{} does not exist: nothing to reset", p.display());
        return Ok(());
    }
    if !p.join("conf").is_file() && !p.join("db").exists() {
        bail!(
            "{} does not look like an assimd store (no sled files): refusing to delete it",
            p.display()
        );
    }
    std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))?;
    println!(
        "removed the state store {}; the next start begins at cycle 0",
        p.display()
    );
    Ok(())
}
