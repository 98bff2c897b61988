//! # Ingest: validate, de-duplicate, journal, acknowledge
//!
//! The journal writer takes the broker's publishes in batches (up to `ingest.max_batch`, whatever
//! has arrived), validates each with [`crate::wire::Checks`] (topic, schema, values), writes the accepted ones to the journal in
//! one sled transaction, flushes, and only then acknowledges the whole batch. A crash before the
//! flush leaves the messages unacknowledged, so the broker redelivers them; a crash after it and
//! before the acknowledgement makes the broker redeliver messages already journaled, which the id
//! check drops. Either way each message is journaled once.
//!
//! The writer also owns the cycle clock: window k = (t_k - c/2, t_k + c/2] closes once the newest
//! journaled observation is later than t_k + c/2 + cutoff (observation time, not wall time). A
//! message for a closed window is late: acknowledged, counted, dropped. After each batch the
//! writer tells the cycle engine how far windows are closed.

use super::clock::CycleClock;
use super::store::{JournalEntry, Journaled, Store};
use super::telemetry as tm;
use super::Outgoing;
use crate::wire::{Checks, RejectReason, Source};
use anyhow::Result;
use assimd_filter::StateSpace;
use rumqttc::{AsyncClient, Publish};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The journal writer service.
pub struct Ingest {
    /// The store.
    pub store: Store,
    /// The state space messages are validated against.
    pub space: StateSpace,
    /// Topic binding, size limits, missing-value codes and ranges.
    pub checks: Checks,
    /// Whether to refuse times in the future of the wall clock.
    pub reject_future: bool,
    /// Topic prefix.
    pub prefix: String,
    /// Topic of the truth (OSSE mode), if subscribed.
    pub truth_topic: Option<String>,
    /// State dimension (a truth message must have it).
    pub dim: usize,
    /// The cycle clock.
    pub clock: CycleClock,
    /// Windows closed so far (cycle number); the engine follows it.
    pub closed: watch::Sender<u64>,
    /// For acknowledgements.
    pub client: AsyncClient,
    /// Acknowledgements only on the connection a message came in on.
    pub gate: super::mqtt::AckGate,
    /// Dead letters go out here (None: not forwarded).
    pub dead_letter: Option<mpsc::UnboundedSender<Outgoing>>,
    /// Largest batch.
    pub max_batch: usize,
}

/// Rate limit of rejection logs: one line per reason per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What one message turned into.
enum Parsed {
    Obs {
        cycle: u64,
        id: String,
        entry: JournalEntry,
        modality: &'static str,
    },
    Truth {
        cycle: u64,
        state: Vec<f64>,
    },
    Late(&'static str),
    Rejected(RejectReason, String),
}

#[derive(serde::Deserialize)]
struct TruthMsg {
    cycle: u64,
    state: Vec<f64>,
}

impl Ingest {
    /// Journal until the publishes channel closes (ingestion stopped); returns after the last
    /// batch is acknowledged.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<(u64, Publish)>) -> Result<()> {
        let mut closed = *self.closed.borrow();
        let mut last_log: HashMap<RejectReason, Instant> = HashMap::new();
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            batch.clear();
            if rx.recv_many(&mut batch, self.max_batch).await == 0 {
                return Ok(());
            }
            let t0 = Instant::now();
            let now = chrono::Utc::now();
            let mut msgs = Vec::new();
            let mut truths = Vec::new();
            let mut modalities = Vec::new();
            for (_, p) in &batch {
                match self.parse(p, closed, now) {
                    Parsed::Obs {
                        cycle,
                        id,
                        entry,
                        modality,
                    } => {
                        metrics::counter!(tm::OBS_RECEIVED, "modality" => modality).increment(1);
                        modalities.push(modality);
                        msgs.push((cycle, id, entry));
                    }
                    Parsed::Truth { cycle, state } => {
                        metrics::counter!(tm::OBS_RECEIVED, "modality" => "truth").increment(1);
                        truths.push((cycle, state));
                    }
                    Parsed::Late(modality) => {
                        metrics::counter!(tm::OBS_RECEIVED, "modality" => modality).increment(1);
                        metrics::counter!(tm::OBS_LATE).increment(1);
                    }
                    Parsed::Rejected(reason, detail) => {
                        self.reject(p, reason, &detail, &mut last_log)
                    }
                }
            }
            let store = self.store.clone();
            let outcome =
                tokio::task::spawn_blocking(move || store.journal_batch(&msgs, &truths)).await??;
            self.store.flush_async().await?;
            for (o, _m) in outcome.iter().zip(&modalities) {
                match o {
                    Journaled::New => metrics::counter!(tm::OBS_JOURNALED).increment(1),
                    Journaled::Duplicate => metrics::counter!(tm::OBS_DUPLICATES).increment(1),
                }
            }
            // Durable: acknowledge the whole batch (rejected and late ones too: they are final), each
            // on the connection it came in on; after a reconnect or at shutdown the broker
            // redelivers the rest and the id check drops them.
            for (connection, p) in &batch {
                self.gate.ack(&self.client, *connection, p).await;
            }
            metrics::histogram!(tm::JOURNAL_SECONDS).record(t0.elapsed().as_secs_f64());
            if let Some(clock_ms) = self.store.obs_clock_ms()? {
                let c = self.clock.closed_by(clock_ms);
                if c > closed {
                    closed = c;
                    let _ = self.closed.send(closed);
                }
            }
        }
    }

    /// Count a rejected message, log it (once per [`LOG_EVERY`] per reason) and dead-letter it.
    fn reject(
        &self,
        p: &Publish,
        reason: RejectReason,
        detail: &str,
        last_log: &mut HashMap<RejectReason, Instant>,
    ) {
        metrics::counter!(tm::OBS_RECEIVED, "modality" => modality_of(&p.topic, &self.prefix))
            .increment(1);
        metrics::counter!(tm::OBS_REJECTED, "reason" => reason.as_str()).increment(1);
        if last_log
            .get(&reason)
            .is_none_or(|t| t.elapsed() >= LOG_EVERY)
        {
            last_log.insert(reason, Instant::now());
            tracing::warn!(topic = %p.topic, "rejected message ({}): {detail} (logged once per {}s per reason)", reason.as_str(), LOG_EVERY.as_secs());
        }
        if let Some(dl) = &self.dead_letter {
            let _ = dl.send(Outgoing {
                topic: format!("{}/deadletter/{}", self.prefix, reason.as_str()),
                payload: p.payload.to_vec(),
                retain: false,
            });
        }
    }

    fn parse(&self, p: &Publish, closed: u64, now: chrono::DateTime<chrono::Utc>) -> Parsed {
        if Some(&p.topic) == self.truth_topic.as_ref() {
            return match serde_json::from_slice::<TruthMsg>(&p.payload) {
                Ok(t) if t.state.len() == self.dim && t.state.iter().all(|v| v.is_finite()) => {
                    Parsed::Truth {
                        cycle: t.cycle,
                        state: t.state,
                    }
                }
                Ok(t) => Parsed::Rejected(
                    RejectReason::LengthMismatch,
                    format!(
                        "truth has {} finite values? expected {}",
                        t.state.len(),
                        self.dim
                    ),
                ),
                Err(e) => Parsed::Rejected(RejectReason::Schema, format!("truth message: {e}")),
            };
        }
        let suffix = p
            .topic
            .strip_prefix(&self.prefix)
            .and_then(|t| t.strip_prefix('/'))
            .unwrap_or(&p.topic);
        let m = match self.checks.decode(
            &p.payload,
            Some(suffix),
            &self.space,
            self.reject_future.then_some(now),
        ) {
            Ok(m) => m,
            Err(r) => return Parsed::Rejected(r.reason, r.detail),
        };
        let modality = match m.source {
            Source::Station(_) => "station",
            Source::Satellite(..) => "satellite",
        };
        let Some(cycle) = self.clock.cycle_of(m.time.timestamp_millis()) else {
            return Parsed::Late(modality);
        };
        if cycle <= closed {
            return Parsed::Late(modality);
        }
        let station = match m.source {
            Source::Station(s) => Some(s),
            Source::Satellite(..) => None,
        };
        Parsed::Obs {
            cycle,
            id: m.id,
            entry: JournalEntry {
                time_ms: m.time.timestamp_millis(),
                station,
                obs: m.obs,
            },
            modality,
        }
    }
}

fn modality_of(topic: &str, prefix: &str) -> &'static str {
    let rest = topic.strip_prefix(prefix).unwrap_or(topic);
    if rest.starts_with("/obs/station/") {
        "station"
    } else if rest.starts_with("/obs/satellite/") {
        "satellite"
    } else if rest.starts_with("/truth/") {
        "truth"
    } else {
        "unknown"
    }
}
