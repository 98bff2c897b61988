//! # Cycle engine
//!
//! Runs each closed window as one cycle (DESIGN §2):
//! 1. read the cycle's journal; withheld stations go to verification, the rest is the cycle's
//!    observations (with their message id and index, [`crate::qc::gather`]);
//! 2. forecast every filter's ensemble with the testbed dynamics; run the divergence guard on each
//!    background (`crate::qc`): a flagged filter is restarted from climatological draws and the
//!    cycle's `analysis_failed` says so, with `failure_reason = "divergence"`;
//! 3. screen the observations against the LETKF's background (background check, blacklist,
//!    station monitor): every filter analyses the same accepted batch, and what was left out is
//!    committed with its reason to the store's `qc` tree;
//! 4. analyse (LETKF always, the score filter when a bundle is configured); an analysis that
//!    errs or is not finite keeps the background (`failure_reason` `error` or `non_finite`);
//! 5. verify against the withheld stations and, in OSSE mode, against the truth; commit the
//!    analyses, the QC records and the monitor's statistics atomically; then publish the
//!    summaries, means and the stations' status, update the metrics and, with `[maps]` on, draw
//!    the cycle's picture (`plot::maps`).
//!
//! Filters are built the way `assimd experiment` builds them.

use super::clock::CycleClock;
use super::store::{CycleCommit, Store};
use super::telemetry as tm;
use super::Outgoing;
use crate::experiment;
use crate::qc;
use anyhow::{bail, Context, Result};
use assimd_filter::obs::{Modality, ObsBatch};
use assimd_filter::{stats, Analysis, Ensemble, StateSpace};
use assimd_models::testbed::Testbed;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::collections::HashSet;
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// One filter and its current analysis ensemble.
pub struct FilterSlot {
    /// Name in topics, metrics and the store (`letkf`, `score`).
    pub name: &'static str,
    /// The analysis step.
    pub analysis: Box<dyn Analysis>,
    /// The analysis ensemble of the last committed cycle.
    pub ens: Ensemble,
    /// The last committed cycle whose analysis forecast to a background that passed the
    /// divergence guard: where a flagged filter rolls back to.
    pub last_good: Option<u64>,
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
    /// Quality control: settings and the station monitor's statistics.
    pub qc: qc::Qc,
    /// New `[qc]` settings from the SIGHUP handler (`systemctl reload`).
    pub qc_reload: Option<watch::Receiver<crate::qc::QcSettings>>,
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
        self.reload_qc();
        let time_ms = self.clock.time_of(k);
        let entries = self.store.journal_cycle(k)?;
        let messages = entries.len() as u64;
        let withheld = &self.withheld;
        let (all, origins, verif) = qc::gather(
            entries
                .iter()
                .map(|(id, e)| (id.as_str(), e.station.as_deref(), e.obs.as_slice())),
            &|s| withheld.contains(s),
        );
        let space = self.space().clone();
        let all = ObsBatch::new(&space, all).context("building the observation operator")?;
        let verif = ObsBatch::new(&space, verif).context("building the verification operator")?;
        let truth = self.store.truth(k)?;
        let dynamics = self.testbed.dynamics.clone();
        // Forecast, then the divergence guard on each background (before it can screen anything).
        let mut backgrounds = Vec::with_capacity(self.filters.len());
        for slot in self.filters.iter_mut() {
            let t0 = Instant::now();
            experiment::forecast(&*dynamics, &mut slot.ens);
            metrics::histogram!(tm::PHASE_SECONDS, "phase" => "forecast", "filter" => slot.name)
                .record(t0.elapsed().as_secs_f64());
            let mut failed = None;
            let deps = assimd_filter::qc::departures(&slot.ens, &all);
            if let Some(r) = assimd_filter::qc::innovation_ratio(&deps) {
                metrics::gauge!(tm::INNOVATION_RATIO, "filter" => slot.name).set(r);
            }
            if let Some(flag) = self.qc.diverged(&slot.ens, &all, &origins) {
                // Roll back to the last analysis whose forecast passed, if the store still has it.
                let members = slot.ens.n_members();
                let last_good = match slot.last_good.take() {
                    Some(j) if self.store.has_ensemble(slot.name, j)? => {
                        Some((j, self.store.load_ensemble(slot.name, j, members)?))
                    }
                    _ => None,
                };
                let seed = self.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let testbed = &self.testbed;
                let (ens, how) = self.qc.recover(
                    k,
                    last_good,
                    &|e| experiment::forecast(&*dynamics, e),
                    &all,
                    &origins,
                    || {
                        Ok(Ensemble::from_members(
                            testbed.climatological_draws(members, seed),
                        )?)
                    },
                )?;
                slot.ens = ens;
                let g = &self.qc.settings.divergence;
                let why = format!(
                    "divergence: {flag} (limits: qc.divergence.max_state_sigmas {}, max_ratio {}, max_climate_ratio {}); {how}",
                    g.max_state_sigmas, g.max_ratio, g.max_climate_ratio
                );
                tracing::error!(filter = slot.name, cycle = k, "{why}");
                failed = Some(("divergence", why));
            } else if k > 1 {
                slot.last_good = Some(k - 1);
            }
            backgrounds.push((t0, slot.ens.mean(), failed));
        }
        // The background check against the LETKF's background: every filter gets the same batch.
        let t_qc = Instant::now();
        let reference = &self.filters[0].ens;
        let screened = self.qc.screen(k, &space, &all, &origins, reference)?;
        metrics::histogram!(tm::PHASE_SECONDS, "phase" => "qc", "filter" => "all")
            .record(t_qc.elapsed().as_secs_f64());
        self.count_qc(k, &screened);
        let batch = &screened.batch;
        let mut per_filter = serde_json::Map::new();
        for (i, (slot, (t0, mean_b, mut failed))) in
            self.filters.iter_mut().zip(backgrounds).enumerate()
        {
            let name = slot.name;
            let t1 = Instant::now();
            if !batch.is_empty() {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    self.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64) << 56,
                );
                let mut trial = slot.ens.clone();
                match slot.analysis.analyse(&mut trial, batch, &mut rng) {
                    Ok(()) if trial.as_flat().iter().all(|v| v.is_finite()) => slot.ens = trial,
                    Ok(()) => {
                        failed = Some((
                            "non_finite",
                            "the analysis ensemble is not finite; the background was kept"
                                .to_string(),
                        ))
                    }
                    Err(e) => failed = Some(("error", format!("{e}; the background was kept"))),
                }
            }
            if let Some((reason, e)) = &failed {
                metrics::counter!(tm::ANALYSIS_FAILURES, "filter" => name, "reason" => *reason)
                    .increment(1);
                if *reason != "divergence" {
                    tracing::error!(filter = name, cycle = k, "analysis failed: {e}");
                }
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
                    stats::innovations(batch, &mean_b, m),
                    stats::innovations(batch, &mean_a, m),
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
                    "analysis_failed": failed.as_ref().map(|(_, e)| e),
                    "failure_reason": failed.as_ref().map(|(r, _)| r),
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
            "qc": {
                "station": screened.counts.station, "satellite": screened.counts.satellite,
                "stations_blacklisted": self.qc.blacklisted(),
                "newly_blacklisted": screened.newly_blacklisted, "rehabilitated": screened.rehabilitated,
            },
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
            rejections: &screened.rejected,
            monitor: &self.qc.state,
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
        self.publish_stations(k);
        if let Some(w) = self.maps.as_ref().filter(|w| w.due(k)) {
            let rejected_obs: Vec<_> = all
                .obs
                .iter()
                .zip(&origins)
                .filter(|(_, o)| {
                    screened
                        .rejected
                        .iter()
                        .any(|r| r.message == o.message && r.index == o.index)
                })
                .map(|(x, _)| x.clone())
                .collect();
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
                rejected: &rejected_obs,
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

    /// Apply new `[qc]` settings sent by the SIGHUP handler, if any.
    fn reload_qc(&mut self) {
        let Some(rx) = self.qc_reload.as_mut() else {
            return;
        };
        if !rx.has_changed().unwrap_or(false) {
            return;
        }
        let settings = rx.borrow_and_update().clone();
        let cleared = self.qc.reload(settings);
        tracing::info!(blacklist = ?self.qc.settings.blacklist, cleared = ?cleared, "quality-control settings reloaded");
        metrics::gauge!(tm::STATIONS_BLACKLISTED).set(self.qc.blacklisted().len() as f64);
    }

    /// Count and log a cycle's screening.
    fn count_qc(&self, k: u64, s: &qc::Screened) {
        for (m, c) in [
            ("station", &s.counts.station),
            ("satellite", &s.counts.satellite),
        ] {
            metrics::counter!(tm::QC_REJECTED, "modality" => m, "reason" => qc::QcReason::BackgroundCheck.as_str()).increment(c.background_check as u64);
            metrics::counter!(tm::QC_REJECTED, "modality" => m, "reason" => qc::QcReason::Blacklisted.as_str()).increment(c.blacklisted as u64);
            metrics::counter!(tm::QC_DOWNWEIGHTED, "modality" => m)
                .increment(c.downweighted as u64);
        }
        metrics::counter!(tm::STATION_BLACKLISTINGS).increment(s.newly_blacklisted.len() as u64);
        metrics::gauge!(tm::STATIONS_BLACKLISTED).set(self.qc.blacklisted().len() as f64);
        for id in &s.newly_blacklisted {
            let why = self
                .qc
                .state
                .stations
                .get(id)
                .and_then(|st| st.blacklisted.as_ref())
                .map_or("", |b| b.reason.as_str());
            tracing::warn!(station = %id, cycle = k, reason = why, "station blacklisted by the monitor: its reports are journaled but not assimilated from cycle {} on (clear it with qc.clear and a reload)", k + 1);
        }
        for id in &s.rehabilitated {
            tracing::info!(station = %id, cycle = k, "station taken back by the monitor after a good spell");
        }
        let rejected = s.counts.station.background_check + s.counts.satellite.background_check;
        if rejected > 0 {
            tracing::debug!(cycle = k, rejected, "background check rejections");
        }
    }

    /// Publish the stations' live status, retained, on `{prefix}/stations`.
    pub fn publish_stations(&self, k: u64) {
        match serde_json::to_vec(&self.qc.report(k)) {
            Ok(payload) => {
                let _ = self.out.send(Outgoing {
                    topic: format!("{}/stations", self.prefix),
                    payload,
                    retain: true,
                });
            }
            Err(e) => tracing::warn!("the station status was not published: {e}"),
        }
    }

    /// Publish a committed cycle's summaries and means (also used to republish the last committed
    /// cycle after a restart: a crash between commit and publication loses no summary).
    pub fn publish(&self, k: u64, summary: &serde_json::Value) {
        let t = Instant::now();
        let time_ms = self.clock.time_of(k);
        for slot in &self.filters {
            let mut s = json!({"cycle": k, "time": summary["time"], "filter": slot.name, "messages": summary["messages"], "obs": summary["obs"], "qc": summary["qc"], "truth": summary["truth"]});
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
