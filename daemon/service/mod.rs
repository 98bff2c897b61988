//! # The daemon (`assimd run`)
//!
//! Services, each a task that ends when told to:
//! - [`mqtt::Connection`]: the broker event loop (persistent session, reconnect with backoff);
//! - [`ingest::Ingest`]: validate, de-duplicate, journal, acknowledge; it owns the cycle clock;
//! - the cycle engine ([`engine::Engine`]): runs every closed window as one cycle;
//! - the publisher: summaries, means and dead letters, QoS 1;
//! - the systemd notifier (READY, STATUS, WATCHDOG).
//!
//! [`run`] wires them and waits for the shutdown future: [`Stop::Graceful`] (SIGTERM) stops
//! ingestion, lets the running cycle finish and commit within `service.grace_seconds`, then
//! disconnects; [`Stop::Fast`] (SIGINT) abandons the running cycle (it is redone after restart from
//! the journal). Nothing acknowledged is lost either way: acknowledgements follow the journal flush.

pub mod broker;
pub mod clock;
pub mod config;
pub mod demo;
pub mod engine;
pub mod ingest;
pub mod mqtt;
pub mod simulator;
pub mod store;
pub mod telemetry;

use anyhow::{bail, Context, Result};
use assimd_models::testbed::Testbed;
use clock::CycleClock;
use config::Config;
use engine::{CycleReport, Engine, FilterSlot};
use rumqttc::{AsyncClient, QoS};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

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

/// On every SIGHUP (`systemctl reload assimd`), re-read the config file and hand its `[qc]`
/// section (blacklist, clear list, thresholds) to the cycle engine, which applies it before its
/// next cycle. A file that does not load is logged and the running settings stay; the other
/// sections need a restart (they are logged as ignored when they changed).
async fn reload_on_sighup(path: std::path::PathBuf, tx: watch::Sender<crate::qc::QcSettings>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler: `systemctl reload` will not work");
        return;
    };
    while hup.recv().await.is_some() {
        match Config::load(&path) {
            Ok(cfg) => {
                tracing::info!(
                    "SIGHUP: re-read [qc] from {} (other sections need a restart)",
                    path.display()
                );
                let _ = tx.send(cfg.qc);
            }
            Err(e) => tracing::error!(
                "SIGHUP: {} does not load, keeping the running settings: {e:#}",
                path.display()
            ),
        }
    }
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

/// The filters of a config, built by [`crate::filters::build_filter`]: the LETKF always, the score
/// filter when a bundle is configured. Returns them with the bundle that was loaded.
pub fn build_filters(
    cfg: &Config,
    testbed: &Testbed,
) -> Result<(
    Vec<(&'static str, Box<dyn assimd_filter::Analysis>)>,
    Option<crate::filters::LoadedBundle>,
)> {
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

/// Run the daemon until `shutdown` resolves (or a service fails).
pub async fn run(
    cfg: Config,
    opts: RunOptions,
    shutdown: impl Future<Output = Stop>,
) -> Result<()> {
    let testbed = Testbed::new(cfg.testbed.name);
    let network = testbed
        .network(cfg.testbed.network)
        .map_err(anyhow::Error::msg)?;
    let cycle_ms = (testbed.dynamics.cycle_seconds() * 1000.0).round() as i64;
    let clock = CycleClock {
        start_ms: cfg.start_time()?.timestamp_millis(),
        cycle_ms,
        cutoff_ms: cfg.cutoff_ms(cycle_ms),
    };
    if opts.install_metrics {
        let listen = if cfg.metrics.listen.is_empty() {
            None
        } else {
            Some(cfg.metrics.listen.parse()?)
        };
        telemetry::install(listen)?;
    }
    let (built, bundle_info) = {
        let (cfg2, tb2) = (cfg.clone(), testbed.clone());
        tokio::task::spawn_blocking(move || build_filters(&cfg2, &tb2)).await??
    };
    if let Some(b) = &bundle_info {
        metrics::gauge!(telemetry::ORT_PROVIDER, "provider" => b.provider.clone()).set(1.0);
        tracing::info!(hash = %b.hash, provider = %b.provider, "score filter: model bundle loaded");
    }
    let names: Vec<&str> = built.iter().map(|(n, _)| *n).collect();
    telemetry::register_filters(&built.iter().map(|(n, _)| *n).collect::<Vec<_>>());
    metrics::gauge!(telemetry::CYCLE_LENGTH).set(cycle_ms as f64 / 1000.0);
    let store = Store::open(&cfg.store.path)?;
    store.check_or_init(
        &compat_key(&cfg, cycle_ms, &names),
        bundle_info.as_ref().map(|b| b.hash.as_str()),
        &opts.config_hint,
    )?;
    let committed = store.assimilated_up_to()?;
    let mut filters = Vec::new();
    // Climatological draws are costly for qg2l (model integrations): only for a fresh state.
    let draws = if committed == 0 {
        testbed.climatological_draws(cfg.cycle.members, cfg.cycle.seed)
    } else {
        Vec::new()
    };
    for (name, analysis) in built {
        let ens = if committed == 0 {
            assimd_filter::Ensemble::from_members(draws.clone())?
        } else {
            store.load_ensemble(name, committed, cfg.cycle.members)?
        };
        filters.push(FilterSlot {
            name,
            analysis,
            ens,
            last_good: None,
        });
    }
    let closed0 = committed.max(store.obs_clock_ms()?.map_or(0, |c| clock.closed_by(c)));
    tracing::info!(
        committed,
        closed = closed0,
        journaled = store.journaled_total()?,
        "state loaded from {}",
        cfg.store.path.display()
    );
    metrics::gauge!(telemetry::LAST_CYCLE).set(committed as f64);

    // MQTT.
    let mut mo = mqtt::options(&cfg.mqtt, &cfg.mqtt.client_id, false)?;
    mo.set_manual_acks(true);
    let (client, eventloop) = AsyncClient::new(mo, 16_384);
    let (pub_tx, pub_rx) = mpsc::unbounded_channel();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let (closed_tx, mut closed_rx) = watch::channel(closed0);
    let connected_tx = opts.subscribed.unwrap_or_else(|| watch::channel(false).0);
    let stop_ingest = CancellationToken::new();
    let stop_conn = CancellationToken::new();
    let conn = mqtt::Connection {
        client: client.clone(),
        eventloop,
        topics: mqtt::subscriptions(&cfg.mqtt.prefix, &cfg.testbed.name.to_string(), cfg.ingest.truth),
        backoff: (
            Duration::from_millis(cfg.mqtt.reconnect_min_ms),
            Duration::from_millis(cfg.mqtt.reconnect_max_ms),
        ),
        publishes: pub_tx,
        connected: connected_tx,
    };
    let conn_task = tokio::spawn(conn.run(stop_ingest.clone(), stop_conn.clone()));
    let ingest = ingest::Ingest {
        store: store.clone(),
        space: testbed.space.clone(),
        checks: cfg.ingest.checks(&testbed.space)?,
        reject_future: cfg.ingest.reject_future,
        prefix: cfg.mqtt.prefix.clone(),
        truth_topic: cfg
            .ingest
            .truth
            .then(|| format!("{}/truth/{}", cfg.mqtt.prefix, cfg.testbed.name)),
        dim: testbed.space.dim(),
        clock,
        closed: closed_tx,
        client: client.clone(),
        dead_letter: cfg.mqtt.dead_letter.then(|| out_tx.clone()),
        max_batch: cfg.ingest.max_batch,
    };
    let mut ingest_task = tokio::spawn(ingest.run(pub_rx));
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(o) = out_rx.recv().await {
                if client
                    .publish(o.topic, QoS::AtLeastOnce, o.retain, o.payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    };

    // The cycle engine.
    let withheld: HashSet<String> = match &cfg.ingest.withheld_stations {
        Some(v) => v.iter().cloned().collect(),
        None => network
            .stations
            .iter()
            .filter(|s| s.withheld)
            .map(|s| s.id.clone())
            .collect(),
    };
    let (mut qc, cleared) =
        crate::qc::Qc::new(cfg.qc.clone(), store.monitor_state()?.unwrap_or_default());
    let clim = testbed.climatology();
    qc.climatology = Some((clim.mean, clim.std));
    if !cleared.is_empty() {
        tracing::info!(?cleared, "qc.clear: automatic blacklisting lifted");
    }
    let (qc_tx, qc_rx) = watch::channel(cfg.qc.clone());
    let reload_task = opts
        .config_path
        .clone()
        .map(|path| tokio::spawn(reload_on_sighup(path, qc_tx)));
    let engine = Engine {
        store: store.clone(),
        testbed: testbed.clone(),
        clock,
        filters,
        withheld,
        seed: cfg.cycle.seed,
        keep: cfg.cycle.keep,
        keep_summaries: cfg.cycle.keep_summaries,
        maps: cfg.maps.enabled.then(|| {
            // ± three climatological standard deviations of the mapped field (the upper layer).
            let clim = testbed.climatology();
            crate::plot::maps::MapWriter {
                dir: cfg.maps.dir.clone(),
                every: cfg.maps.every,
                keep: cfg.maps.keep,
                field_limit: crate::plot::nice_ceil(3.0 * clim.std[0]),
            }
        }),
        max_gap: cfg.cycle.max_gap,
        committed,
        prefix: cfg.mqtt.prefix.clone(),
        out: out_tx,
        reports: opts.reports,
        qc,
        qc_reload: Some(qc_rx),
        stall_before_commit: std::env::var("ASSIMD_TEST_STALL_BEFORE_COMMIT")
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    if let Some((k, s)) = store.summaries()?.pop() {
        // At-least-once for summaries: a crash between commit and publication loses none.
        engine.publish(k, &s);
        engine.publish_stations(k);
    }
    let engine_stop = Arc::new(AtomicBool::new(false));
    let engine_stop_flag = engine_stop.clone();
    let mut engine_task = tokio::spawn(async move {
        let mut engine = engine;
        loop {
            let closed = *closed_rx.borrow_and_update();
            if closed > engine.committed {
                let flag = engine_stop_flag.clone();
                let (e, r) = tokio::task::spawn_blocking(move || {
                    let r = engine.catch_up(closed, &|| flag.load(Ordering::SeqCst));
                    (engine, r)
                })
                .await?;
                engine = e;
                r?;
            }
            if engine_stop_flag.load(Ordering::SeqCst) || closed_rx.changed().await.is_err() {
                // Ingestion ended: run what is closed, then stop.
                let closed = *closed_rx.borrow();
                if closed > engine.committed && !engine_stop_flag.load(Ordering::SeqCst) {
                    continue;
                }
                return anyhow::Ok(engine.committed);
            }
        }
    });

    // systemd.
    let status = |s: String| {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&s)]);
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    status(format!(
        "cycle {committed} committed; connecting to {}:{}",
        cfg.mqtt.host, cfg.mqtt.port
    ));
    tracing::info!(
        "ready: cycle {committed} committed, subscribing on {}:{}",
        cfg.mqtt.host,
        cfg.mqtt.port
    );
    let watchdog = sd_notify::watchdog_enabled().map(|d| {
        tokio::spawn(async move {
            let mut t = tokio::time::interval(d / 2);
            loop {
                t.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        })
    });
    let status_task = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            loop {
                t.tick().await;
                let s = format!(
                    "cycle {} committed; {} messages journaled",
                    store.assimilated_up_to().unwrap_or(0),
                    store.journaled_total().unwrap_or(0)
                );
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&s)]);
            }
        })
    };

    tokio::pin!(shutdown);
    let stop = tokio::select! {
        s = &mut shutdown => s,
        r = &mut engine_task => {
            stop_conn.cancel();
            return match r { Ok(Ok(_)) => bail!("the cycle engine stopped unexpectedly"), Ok(Err(e)) => Err(e.context("cycle engine")), Err(e) => Err(e.into()) };
        }
        r = &mut ingest_task => {
            stop_conn.cancel();
            return match r { Ok(Ok(())) => bail!("ingestion stopped unexpectedly"), Ok(Err(e)) => Err(e.context("journal writer")), Err(e) => Err(e.into()) };
        }
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    status_task.abort();
    if let Some(r) = reload_task {
        r.abort();
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    let grace = Duration::from_secs_f64(cfg.service.grace_seconds);
    let deadline = tokio::time::Instant::now()
        + if stop == Stop::Graceful {
            grace
        } else {
            Duration::from_millis(500)
        };
    tracing::info!("stopping ({stop:?})");
    if stop == Stop::Fast {
        engine_stop.store(true, Ordering::SeqCst);
    }
    stop_ingest.cancel();
    match tokio::time::timeout_at(deadline, &mut ingest_task).await {
        Ok(Ok(Err(e))) => tracing::error!("journal writer: {e:#}"),
        Err(_) => tracing::warn!("the journal writer did not finish in time; its batch is unacknowledged and will be redelivered"),
        _ => {}
    }
    // The engine finishes the running cycle (and any closed ones) within the grace period.
    engine_stop.store(true, Ordering::SeqCst);
    let committed = match tokio::time::timeout_at(deadline, &mut engine_task).await {
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
            let why = if stop == Stop::Fast {
                "SIGINT".to_string()
            } else {
                format!("grace period of {grace:?} over")
            };
            tracing::warn!("the running cycle was abandoned ({why}); it is redone after restart");
            None
        }
    };
    // Let the last publications out, then disconnect.
    let _ = tokio::time::timeout(Duration::from_secs(2), publisher).await;
    stop_conn.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), conn_task).await;
    store.flush()?;
    tracing::info!(
        "stopped; last committed cycle {}",
        committed.map_or("unknown (abandoned)".into(), |k| k.to_string())
    );
    Ok(())
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
