//! # Cycle engine
//!
//! Runs each closed window as one cycle (DESIGN §2): read the cycle's journal, forecast every
//! filter's ensemble with the testbed dynamics, analyse (LETKF always, the score filter when a
//! bundle is configured; both see the same observations), verify against the withheld stations and,
//! in OSSE mode, against the truth, commit the analyses atomically, then publish the summaries and
//! means, update the metrics and, with `[maps]` on, draw the cycle's picture (`plot::maps`). Filters are built the way `assimd experiment` builds them.

use super::clock::CycleClock;
use super::store::{CycleCommit, Store};
use super::telemetry as tm;
use super::Outgoing;
use crate::experiment;
use anyhow::{bail, Context, Result};
use assimd_filter::obs::{Modality, ObsBatch};
use assimd_filter::{stats, Analysis, Ensemble, StateSpace};
use assimd_models::testbed::Testbed;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::collections::HashSet;
use std::time::Instant;
use tokio::sync::mpsc;

/// One filter and its current analysis ensemble.
pub struct FilterSlot {
    /// Name in topics, metrics and the store (`letkf`, `score`).
    pub name: &'static str,
    /// The analysis step.
    pub analysis: Box<dyn Analysis>,
    /// The analysis ensemble of the last committed cycle.
    pub ens: Ensemble,
}

/// A committed cycle, for the demo's table.
#[derive(Clone, Debug)]
pub struct CycleReport {
    /// The cycle number.
    pub cycle: u64,
    /// Its summary (the JSON stored in the `cycles` tree).
    pub summary: serde_json::Value,
}

/// The cycle engine.
pub struct Engine {
    /// The store.
    pub store: Store,
    /// The testbed (dynamics and state space).
    pub testbed: Testbed,
    /// The cycle clock.
    pub clock: CycleClock,
    /// The filters.
    pub filters: Vec<FilterSlot>,
    /// Verification-only stations.
    pub withheld: HashSet<String>,
    /// Seed of the filters' random numbers (per cycle and filter).
    pub seed: u64,
    /// Cycles kept in the store.
    pub keep: u64,
    /// Cycle summaries kept in the store.
    pub keep_summaries: u64,
    /// Per-cycle pictures (`[maps]`), when enabled.
    pub maps: Option<crate::plot::maps::MapWriter>,
    /// Longest run of cycles to catch up in one go.
    pub max_gap: u64,
    /// The last committed cycle.
    pub committed: u64,
    /// Topic prefix.
    pub prefix: String,
    /// Publications.
    pub out: mpsc::UnboundedSender<Outgoing>,
    /// Per-cycle reports (the demo's table).
    pub reports: Option<mpsc::UnboundedSender<CycleReport>>,
    /// Fault injection for the crash tests (`ASSIMD_TEST_STALL_BEFORE_COMMIT=k`): stall forever
    /// after cycle k's analyses, before its commit, so that a test can SIGKILL the daemon there.
    pub stall_before_commit: Option<u64>,
}

fn finite_or_null(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}

fn withheld_rmse(verif: &ObsBatch, x: &[f64]) -> f64 {
    experiment::withheld_rmse(verif, x)
}

/// The mean field as published on `{prefix}/analysis/{filter}/mean`: a 32-byte header
/// (`b"ASSIMD01"`, u64 cycle, i64 valid time in ms since the Unix epoch, u32 value count, u32 0),
/// little endian, then the values as f32 LE in state order.
pub fn encode_mean(cycle: u64, time_ms: i64, mean: &[f64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + 4 * mean.len());
    b.extend_from_slice(b"ASSIMD01");
    b.extend_from_slice(&cycle.to_le_bytes());
    b.extend_from_slice(&time_ms.to_le_bytes());
    b.extend_from_slice(&(mean.len() as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    for v in mean {
        b.extend_from_slice(&(*v as f32).to_le_bytes());
    }
    b
}

impl Engine {
    /// Run every closed cycle after the last committed one, up to `closed`, unless `stop` says so
    /// between cycles. Blocking (call from a blocking thread).
    pub fn catch_up(&mut self, closed: u64, stop: &dyn Fn() -> bool) -> Result<()> {
        if closed > self.committed + self.max_gap {
            bail!(
                "observations are {} cycles ahead of the state (cycle {} committed, window {closed} closed), more than cycle.max_gap = {}: \
                 raise cycle.max_gap, or run `assimd reset` and set cycle.start near the observations",
                closed - self.committed,
                self.committed,
                self.max_gap
            );
        }
        metrics::gauge!(tm::CYCLES_PENDING).set(closed.saturating_sub(self.committed) as f64);
        while self.committed < closed && !stop() {
            self.cycle(self.committed + 1)?;
            metrics::gauge!(tm::CYCLES_PENDING).set(closed.saturating_sub(self.committed) as f64);
        }
        Ok(())
    }

    fn space(&self) -> &StateSpace {
        &self.testbed.space
    }

    /// One cycle.
    pub fn cycle(&mut self, k: u64) -> Result<()> {
        let t_cycle = Instant::now();
        let time_ms = self.clock.time_of(k);
        let entries = self.store.journal_cycle(k)?;
        let messages = entries.len() as u64;
        let (mut assim, mut verif) = (Vec::new(), Vec::new());
        for (_, e) in entries {
            if e.station
                .as_ref()
                .is_some_and(|s| self.withheld.contains(s))
            {
                verif.extend(e.obs);
            } else {
                assim.extend(e.obs);
            }
        }
        let space = self.space().clone();
        let batch = ObsBatch::new(&space, assim).context("building the observation operator")?;
        let verif = ObsBatch::new(&space, verif).context("building the verification operator")?;
        let truth = self.store.truth(k)?;
        let dynamics = self.testbed.dynamics.clone();
        let mut per_filter = serde_json::Map::new();
        for (i, slot) in self.filters.iter_mut().enumerate() {
            let name = slot.name;
            let t0 = Instant::now();
            experiment::forecast(&*dynamics, &mut slot.ens);
            metrics::histogram!(tm::PHASE_SECONDS, "phase" => "forecast", "filter" => name)
                .record(t0.elapsed().as_secs_f64());
            let mean_b = slot.ens.mean();
            let t1 = Instant::now();
            let mut failed = None;
            if !batch.is_empty() {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    self.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64) << 56,
                );
                let mut trial = slot.ens.clone();
                match slot.analysis.analyse(&mut trial, &batch, &mut rng) {
                    Ok(()) if trial.as_flat().iter().all(|v| v.is_finite()) => slot.ens = trial,
                    Ok(()) => failed = Some("the analysis ensemble is not finite".to_string()),
                    Err(e) => failed = Some(e.to_string()),
                }
            }
            if let Some(e) = &failed {
                metrics::counter!(tm::ANALYSIS_FAILURES, "filter" => name).increment(1);
                tracing::error!(
                    filter = name,
                    cycle = k,
                    "analysis failed, keeping the background: {e}"
                );
            }
            metrics::histogram!(tm::PHASE_SECONDS, "phase" => "analysis", "filter" => name)
                .record(t1.elapsed().as_secs_f64());
            let t2 = Instant::now();
            let mean_a = slot.ens.mean();
            let spread = stats::spread(&slot.ens);
            let (rmse_a_t, rmse_f_t, crps) = match &truth {
                Some(x) => (
                    stats::rmse(&mean_a, x),
                    stats::rmse(&mean_b, x),
                    stats::crps_ensemble(&slot.ens, x),
                ),
                None => (f64::NAN, f64::NAN, f64::NAN),
            };
            let (rmse_a_w, rmse_f_w) = (
                withheld_rmse(&verif, &mean_a),
                withheld_rmse(&verif, &mean_b),
            );
            // The spread the ensemble predicts at the withheld stations, observation error included.
            let spread_w = stats::obs_space_spread(&verif, &slot.ens);
            let mut innov = serde_json::Map::new();
            for m in [Modality::Station, Modality::Satellite] {
                let (b, a) = (
                    stats::innovations(&batch, &mean_b, m),
                    stats::innovations(&batch, &mean_a, m),
                );
                if b.count > 0 {
                    let l = m.as_str();
                    metrics::gauge!(tm::OMB_MEAN, "filter" => name, "modality" => l).set(b.mean);
                    metrics::gauge!(tm::OMB_RMS, "filter" => name, "modality" => l).set(b.rms);
                    metrics::gauge!(tm::OMA_MEAN, "filter" => name, "modality" => l).set(a.mean);
                    metrics::gauge!(tm::OMA_RMS, "filter" => name, "modality" => l).set(a.rms);
                    innov.insert(l.into(), json!({"count": b.count, "omb_mean": b.mean, "omb_rms": b.rms, "oma_mean": a.mean, "oma_rms": a.rms}));
                }
                metrics::gauge!(tm::OBS_USED, "filter" => name, "modality" => m.as_str())
                    .set(batch.count(m) as f64);
            }
            for (against, a, f) in [
                ("truth", rmse_a_t, rmse_f_t),
                ("withheld", rmse_a_w, rmse_f_w),
            ] {
                if a.is_finite() {
                    metrics::gauge!(tm::ANALYSIS_RMSE, "filter" => name, "against" => against)
                        .set(a);
                    metrics::gauge!(tm::BACKGROUND_RMSE, "filter" => name, "against" => against)
                        .set(f);
                }
            }
            metrics::gauge!(tm::SPREAD, "filter" => name).set(spread);
            if rmse_a_t.is_finite() {
                metrics::gauge!(tm::SPREAD_SKILL, "filter" => name, "against" => "truth")
                    .set(spread / rmse_a_t);
                metrics::gauge!(tm::CRPS, "filter" => name).set(crps);
            }
            if rmse_a_w.is_finite() && rmse_a_w > 0.0 {
                metrics::gauge!(tm::SPREAD_SKILL, "filter" => name, "against" => "withheld")
                    .set(spread_w / rmse_a_w);
            }
            metrics::histogram!(tm::PHASE_SECONDS, "phase" => "verify", "filter" => name)
                .record(t2.elapsed().as_secs_f64());
            per_filter.insert(
                name.into(),
                json!({
                    "obs_used": {"station": batch.count(Modality::Station), "satellite": batch.count(Modality::Satellite)},
                    "rmse_a_truth": finite_or_null(rmse_a_t), "rmse_f_truth": finite_or_null(rmse_f_t),
                    "rmse_a_withheld": finite_or_null(rmse_a_w), "rmse_f_withheld": finite_or_null(rmse_f_w),
                    "spread_a": finite_or_null(spread), "crps_a": finite_or_null(crps),
                    "spread_a_withheld": finite_or_null(spread_w),
                    "innovations": innov,
                    "analysis_failed": failed,
                    "seconds": t0.elapsed().as_secs_f64(),
                }),
            );
        }
        metrics::gauge!(tm::OBS_WITHHELD).set(verif.len() as f64);
        let time = crate::wire::format_time(
            chrono::DateTime::from_timestamp_millis(time_ms).unwrap_or_default(),
        );
        let summary = json!({
            "cycle": k, "time": time, "messages": messages,
            "obs": {"station": batch.count(Modality::Station), "satellite": batch.count(Modality::Satellite), "withheld": verif.len()},
            "truth": truth.is_some(),
            "filters": per_filter,
        });
        if self.stall_before_commit == Some(k) {
            tracing::warn!(
                "ASSIMD_TEST_STALL_BEFORE_COMMIT: stalling before the commit of cycle {k}"
            );
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        let t3 = Instant::now();
        let ensembles = self.filters.iter().map(|s| (s.name, &s.ens)).collect();
        self.store.commit_cycle(&CycleCommit {
            cycle: k,
            ensembles,
            summary: summary.clone(),
            messages,
            keep: self.keep,
            keep_summaries: self.keep_summaries,
        })?;
        self.committed = k;
        metrics::histogram!(tm::PHASE_SECONDS, "phase" => "commit", "filter" => "all")
            .record(t3.elapsed().as_secs_f64());
        if k > self.keep {
            self.store.prune_journal(k - self.keep)?;
        }
        metrics::counter!(tm::OBS_ASSIMILATED).increment(messages);
        metrics::gauge!(tm::LAST_CYCLE).set(k as f64);
        metrics::gauge!(tm::LAST_CYCLE_TIME).set(time_ms as f64 / 1000.0);
        metrics::gauge!(tm::LAST_COMMIT_TIME)
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        metrics::gauge!(tm::STORE_BYTES).set(self.store.size_on_disk() as f64);
        self.publish(k, &summary);
        if let Some(w) = self.maps.as_ref().filter(|w| w.due(k)) {
            // After the commit: a picture that cannot be written costs a warning, never the cycle.
            let t4 = Instant::now();
            let input = crate::plot::maps::MapInput {
                geometry: &space.geometry,
                variables: &space.variables,
                cycle: k,
                time: &time,
                truth: truth.as_deref(),
                filters: self.filters.iter().map(|s| (s.name, &s.ens)).collect(),
                assimilated: &batch.obs,
                withheld: &verif.obs,
                field: 0,
                field_title: "upper-layer streamfunction ψ1 (m²/s)",
                field_limit: w.field_limit,
            };
            match w.write(&input) {
                Ok(p) => tracing::debug!("cycle {k}: wrote {}", p.display()),
                Err(e) => tracing::warn!("cycle {k}: the map was not written: {e:#}"),
            }
            metrics::histogram!(tm::PHASE_SECONDS, "phase" => "maps", "filter" => "all")
                .record(t4.elapsed().as_secs_f64());
        }
        metrics::histogram!(tm::CYCLE_SECONDS).record(t_cycle.elapsed().as_secs_f64());
        if let Some(r) = &self.reports {
            let _ = r.send(CycleReport { cycle: k, summary });
        }
        Ok(())
    }

    /// Publish a committed cycle's summaries and means (also used to republish the last committed
    /// cycle after a restart: a crash between commit and publication loses no summary).
    pub fn publish(&self, k: u64, summary: &serde_json::Value) {
        let t = Instant::now();
        let time_ms = self.clock.time_of(k);
        for slot in &self.filters {
            let mut s = json!({"cycle": k, "time": summary["time"], "filter": slot.name, "messages": summary["messages"], "obs": summary["obs"], "truth": summary["truth"]});
            if let (Some(obj), Some(f)) =
                (s.as_object_mut(), summary["filters"][slot.name].as_object())
            {
                for (key, v) in f {
                    obj.insert(key.clone(), v.clone());
                }
            }
            let _ = self.out.send(Outgoing {
                topic: format!("{}/analysis/{}/summary", self.prefix, slot.name),
                payload: s.to_string().into_bytes(),
                retain: false,
            });
            let _ = self.out.send(Outgoing {
                topic: format!("{}/analysis/{}/mean", self.prefix, slot.name),
                payload: encode_mean(k, time_ms, &slot.ens.mean()),
                retain: true,
            });
        }
        metrics::histogram!(tm::PHASE_SECONDS, "phase" => "publish", "filter" => "all")
            .record(t.elapsed().as_secs_f64());
    }
}
