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
//! Filters are built by [`crate::filters::build_filter`], as `assimd experiment` builds them.

use super::clock::CycleClock;
use super::store::{CycleCommit, Store};
use super::summary::{
    finite, CycleSummary, FilterSummary, Innovations, ObsCounts, ObsUsed, QcSummary,
};
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
use std::collections::{BTreeMap, HashSet};
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
    /// Its summary (as stored in the `cycles` tree).
    pub summary: CycleSummary,
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
}

/// A cycle's window: its journaled observations and what verifies it.
struct Window {
    cycle: u64,
    time_ms: i64,
    time: String,
    messages: u64,
    all: ObsBatch,
    origins: Vec<qc::ObsOrigin>,
    verif: ObsBatch,
    truth: Option<Vec<f64>>,
}

/// A filter's background after the forecast and the divergence guard.
struct Background {
    /// When the filter's cycle started (its forecast).
    t0: Instant,
    /// The background mean.
    mean: Vec<f64>,
    /// The guard's flag, when it rolled the filter back or restarted it.
    failed: Option<(&'static str, String)>,
}

/// Scores of an analysis ensemble against the truth, the withheld stations and the batch.
fn verify(ens: &Ensemble, mean_b: &[f64], batch: &ObsBatch, w: &Window) -> FilterSummary {
    let mean_a = ens.mean();
    let (rmse_a_t, rmse_f_t, crps) = match &w.truth {
        Some(x) => (
            stats::rmse(&mean_a, x),
            stats::rmse(mean_b, x),
            stats::crps_ensemble(ens, x),
        ),
        None => (f64::NAN, f64::NAN, f64::NAN),
    };
    let mut innovations = BTreeMap::new();
    for m in [Modality::Station, Modality::Satellite] {
        let (b, a) = (
            stats::innovations(batch, mean_b, m),
            stats::innovations(batch, &mean_a, m),
        );
        if b.count > 0 {
            innovations.insert(
                m.as_str().to_string(),
                Innovations {
                    count: b.count,
                    omb_mean: b.mean,
                    omb_rms: b.rms,
                    oma_mean: a.mean,
                    oma_rms: a.rms,
                },
            );
        }
    }
    FilterSummary {
        obs_used: ObsUsed {
            station: batch.count(Modality::Station),
            satellite: batch.count(Modality::Satellite),
        },
        rmse_a_truth: finite(rmse_a_t),
        rmse_f_truth: finite(rmse_f_t),
        rmse_a_withheld: finite(experiment::withheld_rmse(&w.verif, &mean_a)),
        rmse_f_withheld: finite(experiment::withheld_rmse(&w.verif, mean_b)),
        spread_a: finite(stats::spread(ens)),
        crps_a: finite(crps),
        // The spread the ensemble predicts at the withheld stations, observation error included.
        spread_a_withheld: finite(stats::obs_space_spread(&w.verif, ens)),
        innovations,
        ..FilterSummary::default()
    }
}

/// A filter's scores as gauges.
fn record_scores(name: &'static str, f: &FilterSummary, batch: &ObsBatch) {
    for m in [Modality::Station, Modality::Satellite] {
        let l = m.as_str();
        if let Some(i) = f.innovations.get(l) {
            metrics::gauge!(tm::OMB_MEAN, "filter" => name, "modality" => l).set(i.omb_mean);
            metrics::gauge!(tm::OMB_RMS, "filter" => name, "modality" => l).set(i.omb_rms);
            metrics::gauge!(tm::OMA_MEAN, "filter" => name, "modality" => l).set(i.oma_mean);
            metrics::gauge!(tm::OMA_RMS, "filter" => name, "modality" => l).set(i.oma_rms);
        }
        metrics::gauge!(tm::OBS_USED, "filter" => name, "modality" => l).set(batch.count(m) as f64);
    }
    for (against, a, b) in [
        ("truth", f.rmse_a_truth, f.rmse_f_truth),
        ("withheld", f.rmse_a_withheld, f.rmse_f_withheld),
    ] {
        if let (Some(a), Some(b)) = (a, b) {
            metrics::gauge!(tm::ANALYSIS_RMSE, "filter" => name, "against" => against).set(a);
            metrics::gauge!(tm::BACKGROUND_RMSE, "filter" => name, "against" => against).set(b);
        }
    }
    let spread = f.spread_a.unwrap_or(f64::NAN);
    metrics::gauge!(tm::SPREAD, "filter" => name).set(spread);
    if let (Some(r), Some(c)) = (f.rmse_a_truth, f.crps_a) {
        metrics::gauge!(tm::SPREAD_SKILL, "filter" => name, "against" => "truth").set(spread / r);
        metrics::gauge!(tm::CRPS, "filter" => name).set(c);
    }
    if let (Some(r), Some(s)) = (f.rmse_a_withheld, f.spread_a_withheld) {
        if r > 0.0 {
            metrics::gauge!(tm::SPREAD_SKILL, "filter" => name, "against" => "withheld").set(s / r);
        }
    }
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

    /// One cycle: gather the window, forecast and guard, screen, analyse, commit, publish.
    pub fn cycle(&mut self, k: u64) -> Result<()> {
        let t_cycle = Instant::now();
        self.reload_qc();
        let w = self.window(k)?;
        let mut backgrounds = self.forecast_and_guard(k, &w)?;
        // The background check against the LETKF's background: every filter gets the same batch.
        let t_qc = Instant::now();
        let space = self.space().clone();
        let mut screened = self
            .qc
            .screen(k, &space, &w.all, &w.origins, &self.filters[0].ens)?;
        metrics::histogram!(tm::PHASE_SECONDS, "phase" => "qc", "filter" => "all")
            .record(t_qc.elapsed().as_secs_f64());
        let replayed_from = match screened.replay.take() {
            Some(r) => self.replay(k, &r, &mut backgrounds)?,
            None => None,
        };
        self.count_qc(k, &screened);
        let mut filters = BTreeMap::new();
        for (i, bg) in backgrounds.into_iter().enumerate() {
            let f = self.analyse(i, k, bg, &screened.batch, &w);
            filters.insert(self.filters[i].name.to_string(), f);
        }
        let summary = CycleSummary {
            cycle: k,
            time: w.time.clone(),
            messages: w.messages,
            obs: ObsCounts {
                station: screened.batch.count(Modality::Station),
                satellite: screened.batch.count(Modality::Satellite),
                withheld: w.verif.len(),
            },
            truth: w.truth.is_some(),
            qc: QcSummary {
                station: screened.counts.station,
                satellite: screened.counts.satellite,
                stations_blacklisted: self.qc.blacklisted(),
                newly_blacklisted: screened.newly_blacklisted.clone(),
                rehabilitated: screened.rehabilitated.clone(),
                replayed_from,
            },
            filters,
        };
        metrics::gauge!(tm::OBS_WITHHELD).set(w.verif.len() as f64);
        #[cfg(feature = "test-hooks")]
        self.stall_before_commit(k);
        self.commit(&w, &summary, &screened)?;
        self.publish(k, &summary);
        self.publish_stations(k);
        if let Some(m) = self.maps.as_ref().filter(|m| m.due(k)) {
            self.draw_map(m, &w, &screened);
        }
        metrics::histogram!(tm::CYCLE_SECONDS).record(t_cycle.elapsed().as_secs_f64());
        if let Some(r) = &self.reports {
            let _ = r.send(CycleReport { cycle: k, summary });
        }
        Ok(())
    }

    /// The window of cycle k: its journal split into observations and verification, its truth.
    fn window(&self, k: u64) -> Result<Window> {
        let time_ms = self.clock.time_of(k);
        let entries = self.store.journal_cycle(k)?;
        let withheld = &self.withheld;
        let (all, origins, verif) = qc::gather(
            entries
                .iter()
                .map(|(id, e)| (id.as_str(), e.station.as_deref(), e.obs.as_slice())),
            &|s| withheld.contains(s),
        );
        let space = self.space();
        Ok(Window {
            cycle: k,
            time_ms,
            time: crate::wire::format_time(
                chrono::DateTime::from_timestamp_millis(time_ms).unwrap_or_default(),
            ),
            messages: entries.len() as u64,
            all: ObsBatch::new(space, all).context("building the observation operator")?,
            origins,
            verif: ObsBatch::new(space, verif).context("building the verification operator")?,
            truth: self.store.truth(k)?,
        })
    }

    /// Forecast every filter's ensemble, then run the divergence guard on each background (before
    /// it can screen anything): a flagged filter is rolled back or restarted.
    fn forecast_and_guard(&mut self, k: u64, w: &Window) -> Result<Vec<Background>> {
        let dynamics = self.testbed.dynamics.clone();
        let mut backgrounds = Vec::with_capacity(self.filters.len());
        for i in 0..self.filters.len() {
            let t0 = Instant::now();
            let slot = &mut self.filters[i];
            experiment::forecast(&*dynamics, &mut slot.ens);
            metrics::histogram!(tm::PHASE_SECONDS, "phase" => "forecast", "filter" => slot.name)
                .record(t0.elapsed().as_secs_f64());
            let deps = assimd_filter::qc::departures(&slot.ens, &w.all);
            if let Some(r) = assimd_filter::qc::innovation_ratio(&deps) {
                metrics::gauge!(tm::INNOVATION_RATIO, "filter" => slot.name).set(r);
            }
            let failed = match self.qc.diverged(&self.filters[i].ens, &w.all, &w.origins) {
                Some(flag) => Some(self.recover(i, k, w, flag)?),
                None => {
                    if k > 1 {
                        self.filters[i].last_good = Some(k - 1);
                    }
                    None
                }
            };
            let mean = self.filters[i].ens.mean();
            backgrounds.push(Background { t0, mean, failed });
        }
        Ok(backgrounds)
    }

    /// Re-run every filter from its stored analysis of cycle `r.from` through the replay's cycles
    /// without the newly blacklisted stations, and forecast the result to cycle k: each filter's
    /// new background. A filter the divergence guard just recovered, or whose analysis of
    /// `r.from` the store no longer has, keeps its background. Returns `r.from` when any filter
    /// was re-run.
    fn replay(
        &mut self,
        k: u64,
        r: &qc::Replay,
        backgrounds: &mut [Background],
    ) -> Result<Option<u64>> {
        let dynamics = self.testbed.dynamics.clone();
        let mut any = false;
        for (i, bg) in backgrounds.iter_mut().enumerate() {
            let slot = &mut self.filters[i];
            if bg.failed.is_some() || !self.store.has_ensemble(slot.name, r.from)? {
                continue;
            }
            let from = self
                .store
                .load_ensemble(slot.name, r.from, slot.ens.n_members())?;
            let seed =
                self.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x7265_706c ^ (i as u64) << 56;
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            match experiment::replay(from, &r.batches, &*dynamics, &*slot.analysis, &mut rng) {
                Ok(mut ens) => {
                    experiment::forecast(&*dynamics, &mut ens);
                    slot.ens = ens;
                    bg.mean = slot.ens.mean();
                    any = true;
                }
                Err(e) => tracing::error!(
                    filter = slot.name,
                    cycle = k,
                    "replay failed, the background is kept: {e:#}"
                ),
            }
        }
        if any {
            tracing::warn!(
                cycle = k,
                stations = ?r.stations,
                "re-analysed cycles {}..={} without newly blacklisted stations (from their change point)",
                r.from + 1,
                k - 1
            );
        }
        Ok(any.then_some(r.from))
    }

    /// Roll filter i back to the last analysis whose forecast passed the guard, if the store still
    /// has it, or restart it from climatological draws; returns the failure to report.
    fn recover(
        &mut self,
        i: usize,
        k: u64,
        w: &Window,
        flag: assimd_filter::qc::Divergence,
    ) -> Result<(&'static str, String)> {
        let dynamics = self.testbed.dynamics.clone();
        let slot = &mut self.filters[i];
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
            &w.all,
            &w.origins,
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
        Ok(("divergence", why))
    }

    /// Analyse filter i's background with the accepted batch (an analysis that errs or is not
    /// finite keeps the background), then verify it.
    fn analyse(
        &mut self,
        i: usize,
        k: u64,
        bg: Background,
        batch: &ObsBatch,
        w: &Window,
    ) -> FilterSummary {
        let seed = self.seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64) << 56;
        let slot = &mut self.filters[i];
        let name = slot.name;
        let t1 = Instant::now();
        let mut failed = bg.failed;
        if !batch.is_empty() {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut trial = slot.ens.clone();
            match slot.analysis.analyse(&mut trial, batch, &mut rng) {
                Ok(()) if trial.as_flat().iter().all(|v| v.is_finite()) => slot.ens = trial,
                Ok(()) => {
                    failed = Some((
                        "non_finite",
                        "the analysis ensemble is not finite; the background was kept".to_string(),
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
        let mut f = verify(&slot.ens, &bg.mean, batch, w);
        (f.analysis_failed, f.failure_reason) = match failed {
            Some((r, e)) => (Some(e), Some(r.to_string())),
            None => (None, None),
        };
        record_scores(name, &f, batch);
        metrics::histogram!(tm::PHASE_SECONDS, "phase" => "verify", "filter" => name)
            .record(t2.elapsed().as_secs_f64());
        f.seconds = bg.t0.elapsed().as_secs_f64();
        f
    }

    /// Commit the cycle (analyses, summary, QC records, monitor state) and prune what is old.
    fn commit(
        &mut self,
        w: &Window,
        summary: &CycleSummary,
        screened: &qc::Screened,
    ) -> Result<()> {
        let k = w.cycle;
        let t3 = Instant::now();
        let ensembles = self.filters.iter().map(|s| (s.name, &s.ens)).collect();
        self.store.commit_cycle(&CycleCommit {
            cycle: k,
            ensembles,
            summary,
            messages: w.messages,
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
        metrics::counter!(tm::OBS_ASSIMILATED).increment(w.messages);
        metrics::gauge!(tm::LAST_CYCLE).set(k as f64);
        metrics::gauge!(tm::LAST_CYCLE_TIME).set(w.time_ms as f64 / 1000.0);
        metrics::gauge!(tm::LAST_COMMIT_TIME)
            .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        metrics::gauge!(tm::STORE_BYTES).set(self.store.size_on_disk() as f64);
        Ok(())
    }

    /// The cycle's picture, after the commit: one that cannot be written costs a warning, never
    /// the cycle.
    fn draw_map(&self, m: &crate::plot::maps::MapWriter, w: &Window, screened: &qc::Screened) {
        let t4 = Instant::now();
        let rejected_obs: Vec<_> = w
            .all
            .obs
            .iter()
            .zip(&w.origins)
            .filter(|(_, o)| {
                screened
                    .rejected
                    .iter()
                    .any(|r| r.message == o.message && r.index == o.index)
            })
            .map(|(x, _)| x.clone())
            .collect();
        let space = self.space();
        let input = crate::plot::maps::MapInput {
            geometry: &space.geometry,
            variables: &space.variables,
            cycle: w.cycle,
            time: &w.time,
            truth: w.truth.as_deref(),
            filters: self.filters.iter().map(|s| (s.name, &s.ens)).collect(),
            assimilated: &screened.batch.obs,
            withheld: &w.verif.obs,
            rejected: &rejected_obs,
            field: 0,
            field_title: "upper-layer streamfunction ψ1 (m²/s)",
            field_limit: m.field_limit,
        };
        match m.write(&input) {
            Ok(p) => tracing::debug!("cycle {}: wrote {}", w.cycle, p.display()),
            Err(e) => tracing::warn!("cycle {}: the map was not written: {e:#}", w.cycle),
        }
        metrics::histogram!(tm::PHASE_SECONDS, "phase" => "maps", "filter" => "all")
            .record(t4.elapsed().as_secs_f64());
    }

    /// The crash tests' fault hook (`ASSIMD_TEST_STALL_BEFORE_COMMIT=k`, built only with the
    /// `test-hooks` feature): stall forever after cycle k's analyses, before its commit, so that a
    /// test can SIGKILL the daemon there.
    #[cfg(feature = "test-hooks")]
    fn stall_before_commit(&self, k: u64) {
        let at = std::env::var("ASSIMD_TEST_STALL_BEFORE_COMMIT").ok();
        if at.and_then(|v| v.parse::<u64>().ok()) == Some(k) {
            tracing::warn!(
                "ASSIMD_TEST_STALL_BEFORE_COMMIT: stalling before the commit of cycle {k}"
            );
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
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
    pub fn publish(&self, k: u64, summary: &CycleSummary) {
        let t = Instant::now();
        let time_ms = self.clock.time_of(k);
        for slot in &self.filters {
            if let Some(r) = summary.report(slot.name) {
                match serde_json::to_vec(&r) {
                    Ok(payload) => {
                        let _ = self.out.send(Outgoing {
                            topic: format!("{}/analysis/{}/summary", self.prefix, slot.name),
                            payload,
                            retain: false,
                        });
                    }
                    Err(e) => tracing::warn!("the {} summary was not published: {e}", slot.name),
                }
            }
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
