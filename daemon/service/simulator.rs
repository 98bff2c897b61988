//! # `assimd simulate`: the simulated observing network on a broker
//!
//! Publishes [`crate::simulate::Simulator`]'s messages (DESIGN §4 topics under the prefix) cycle by
//! cycle at an accelerated clock (`simulate.interval_ms` of wall time per cycle), QoS 1, and, for
//! verification, the truth of each cycle on `{prefix}/truth/{testbed}` as JSON
//! `{"testbed", "cycle", "time", "state": [...]}`. Returns once the broker has acknowledged every
//! message. Observation times start at 2026-01-01T00:00:00Z (the simulator's epoch, also the
//! default `cycle.start`).

use super::config::Config;
use super::mqtt;
use crate::simulate::{epoch, Simulator};
use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What was published.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimStats {
    /// Cycles published.
    pub cycles: u64,
    /// Messages published (observations and truths).
    pub messages: u64,
    /// Observation messages (stations and granules).
    pub observations: u64,
}

/// Publish the configured cycles; `on_cycle` is called after each cycle's messages are queued.
pub async fn simulate(cfg: &Config, mut on_cycle: impl FnMut(u64)) -> Result<SimStats> {
    let testbed = cfg.testbed.testbed()?;
    let network = cfg.testbed.network(&testbed)?;
    if cfg.start_time()? != epoch() {
        tracing::warn!("cycle.start {} differs from the simulator's epoch {}: the daemon's windows will not line up with the simulated cycles", cfg.cycle.start, epoch());
    }
    let s = &cfg.simulate;
    let prefix = &cfg.mqtt.prefix;
    let client_id = format!("{}-sim-{}", cfg.mqtt.client_id, std::process::id());
    // With several nodes, a persistent session (under this process's own id), so that a
    // publication in flight when a node is lost is sent again on the next node rather than
    // dropped; with one broker a clean session, which leaves nothing behind on it.
    let clean = cfg.mqtt.hosts.len() <= 1;
    let mut endpoints = mqtt::endpoint_options(&cfg.mqtt, &client_id, clean)?;
    for (_, o) in &mut endpoints {
        o.set_inflight(1000);
    }
    let (client, eventloop) = AsyncClient::new(endpoints[0].1.clone(), 1024);
    let acked = Arc::new(AtomicU64::new(0));
    let (err_tx, mut err_rx) = tokio::sync::watch::channel(None::<String>);
    let driver = tokio::spawn(drive(eventloop, endpoints, acked.clone(), err_tx));
    let assimilated: Vec<String> = network
        .stations
        .iter()
        .filter(|st| !st.withheld)
        .map(|st| st.id.clone())
        .collect();
    let mut faults = crate::faults::FaultInjector::new(s.faults.clone(), s.seed, &assimilated);
    if s.faults.gross_errors > 0.0 || s.faults.bias.is_some() {
        tracing::warn!(stuck = ?faults.stuck_station(), "simulate.faults: injecting bad observations ({:?})", s.faults);
    }
    let mut sim = Simulator::new(testbed.clone(), network, s.seed);
    while sim.cycle() + 1 < s.first_cycle {
        sim.step();
    }
    let mut stats = SimStats::default();
    let truth_topic = format!("{prefix}/truth/{}", cfg.testbed.name);
    let mut tick = tokio::time::interval(Duration::from_millis(s.interval_ms.max(1)));
    for _ in 0..s.cycles {
        if s.interval_ms > 0 {
            tick.tick().await;
        }
        sim.step();
        let k = sim.cycle();
        let mut messages = sim.messages();
        faults.apply(k, &mut messages);
        for m in messages {
            let payload = serde_json::to_vec(&m.feature)?;
            client
                .publish(
                    format!("{prefix}/{}", m.topic),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await?;
            stats.messages += 1;
            stats.observations += 1;
        }
        if s.truth {
            let t = serde_json::json!({"testbed": cfg.testbed.name.to_string(), "cycle": k, "time": crate::wire::format_time(sim.time_of(k)), "state": sim.truth()});
            client
                .publish(
                    truth_topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&t)?,
                )
                .await?;
            stats.messages += 1;
        }
        stats.cycles += 1;
        if let Some(e) = err_rx.borrow_and_update().clone() {
            bail!("broker {e}");
        }
        on_cycle(k);
    }
    wait_for_acks(&acked, stats.messages, &mut err_rx).await?;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    Ok(stats)
}

/// Drive the simulator's event loop, counting the broker's acknowledgements; after 20 failures
/// in a row report the error and stop.
async fn drive(
    mut eventloop: rumqttc::EventLoop,
    endpoints: Vec<(String, rumqttc::MqttOptions)>,
    acked2: Arc<AtomicU64>,
    err_tx: tokio::sync::watch::Sender<Option<String>>,
) {
    let (mut failures, mut current) = (0, 0);
    let mut unacknowledged = mqtt::Unacknowledged::default();
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                acked2.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if failures > 0 {
                    tracing::info!("publishing through {}", endpoints[current].0);
                }
                let again = unacknowledged.restore(&mut eventloop, ack.session_present);
                if again > 0 {
                    tracing::warn!("publishing again {again} messages the broker had not acknowledged (it answered without the session)");
                }
                failures = 0;
            }
            // Every message acknowledged and the DISCONNECT sent: the broker closes the
            // connection now, which is the end, not a failure to report and retry.
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                unacknowledged.keep(&eventloop);
                failures += 1;
                if failures >= 20 * endpoints.len() {
                    let _ = err_tx.send(Some(format!("{}: {e}", endpoints[current].0)));
                    return;
                }
                tracing::warn!("broker {}: {e}", endpoints[current].0);
                // The next node at once; wait only once every node has failed in a row.
                current = (current + 1) % endpoints.len();
                eventloop.mqtt_options = endpoints[current].1.clone();
                if failures % endpoints.len() == 0 {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
}

/// Wait for the broker's acknowledgement of every message (the failure guard is generous).
async fn wait_for_acks(
    acked: &AtomicU64,
    messages: u64,
    err_rx: &mut tokio::sync::watch::Receiver<Option<String>>,
) -> Result<()> {
    let wait = async {
        while acked.load(Ordering::SeqCst) < messages {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = err_rx.changed() => {
                    if let Some(e) = err_rx.borrow().clone() { bail!("broker {e}"); }
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .with_context(|| {
            format!(
                "the broker acknowledged {} of {messages} messages",
                acked.load(Ordering::SeqCst)
            )
        })?
}
