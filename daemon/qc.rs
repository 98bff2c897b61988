//! # Quality control of a cycle's observations (`[qc]`)
//!
//! The one screening that the daemon's cycle engine and `assimd experiment` both run, between the
//! forecast and the analyses, with [`assimd_filter::qc`]:
//!
//! 1. every filter's background is tested by the divergence guard against all of the cycle's
//!    observations (blacklisted stations aside) and the climatology; a flagged filter is recovered
//!    ([`Qc::recover`]) before anything else happens: rolled back to its last good analysis (the
//!    last whose forecast passed the guard) and forecast to this cycle, or, when there is none or
//!    that forecast fails too, restarted from climatological draws;
//! 2. the background check runs against the reference background (the first filter: the LETKF in
//!    the daemon, the filter itself in an experiment), giving each observation a verdict, with
//!    σ_d widened by the cycle's network-wide scale s = max(1, √r) of its modality (r the robust
//!    innovation ratio, [`assimd_filter::qc::innovation_ratio`]): a background worse than its
//!    spread says (spin-up, a regime change) must not lose the observations that correct it;
//! 3. observations of blacklisted stations (the operator's list, or the monitor's) and rejected
//!    ones are left out; down-weighted ones keep their value with an inflated σ_o; every filter
//!    gets this same accepted batch;
//! 4. the station monitor folds each station's normalised departures (z = d/(σ_d s)), verdicts
//!    and values into its running statistics, which may blacklist a station from the next cycle
//!    on (bias, noise, rejections, or the same values repeated: stuck).
//!
//! A left-out observation is not lost: [`Screened::rejected`] names its message, its index in the
//! message and its reason, and the daemon keeps that record next to the journal.

use anyhow::{bail, Result};
use assimd_filter::obs::{Modality, ObsBatch, Observation};
use assimd_filter::qc::{
    self, BackgroundCheck, Departure, DivergenceGuard, MonitorState, StationMonitor, StationReport,
    Thresholds, Verdict,
};
use assimd_filter::{Ensemble, StateSpace};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// `[qc]`: the same keys in the daemon config and in experiment files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QcSettings {
    /// Off (`--qc off`): no background check, no station monitor, no divergence guard, what
    /// assimd did before it had QC; for comparisons only. The operator's blacklist still applies.
    pub enabled: bool,
    /// Background-check thresholds of station reports.
    pub station: Thresholds,
    /// Background-check thresholds of satellite footprints.
    pub satellite: Thresholds,
    /// The station monitor and its automatic blacklist.
    pub monitor: StationMonitor,
    /// The divergence guard.
    pub divergence: DivergenceGuard,
    /// Stations never assimilated (journaled and monitored only): the operator's blacklist. The
    /// daemon re-reads it on SIGHUP (`systemctl reload assimd`).
    pub blacklist: Vec<String>,
    /// Stations whose automatic blacklisting and statistics are cleared when the daemon starts or
    /// reloads: how an operator takes back a station whose sensor was fixed.
    pub clear: Vec<String>,
    /// Cycles of accepted observations kept in memory so that a station blacklisted for a
    /// `shift` or a `bias` can be taken out of the cycles since its change point: the filters are
    /// re-run from the analysis before it (0 = never). A biased station's damage to the state
    /// then goes with it instead of lingering for tens of cycles.
    pub replay_cycles: u32,
}

impl Default for QcSettings {
    fn default() -> Self {
        QcSettings {
            enabled: true,
            station: Thresholds::default(),
            satellite: Thresholds::default(),
            monitor: StationMonitor::default(),
            divergence: DivergenceGuard::default(),
            blacklist: Vec::new(),
            clear: Vec::new(),
            replay_cycles: 24,
        }
    }
}

impl QcSettings {
    /// The background check of these settings.
    pub fn check(&self) -> BackgroundCheck {
        BackgroundCheck {
            station: self.station,
            satellite: self.satellite,
        }
    }

    /// Check every parameter; errors name the key and the fix.
    pub fn validate(&self) -> Result<()> {
        self.check().validate().map_err(|e| {
            anyhow::anyhow!(
                "qc.{}",
                e.to_string().trim_start_matches("invalid parameter: ")
            )
        })?;
        self.monitor.validate().map_err(|e| {
            anyhow::anyhow!(
                "qc.{}",
                e.to_string().trim_start_matches("invalid parameter: ")
            )
        })?;
        self.divergence.validate().map_err(|e| {
            anyhow::anyhow!(
                "qc.{}",
                e.to_string().trim_start_matches("invalid parameter: ")
            )
        })?;
        if let Some(s) = self
            .blacklist
            .iter()
            .chain(&self.clear)
            .find(|s| s.is_empty())
        {
            bail!("qc.blacklist and qc.clear hold station ids; {s:?} is empty");
        }
        Ok(())
    }
}

/// Where an observation of a cycle came from.
#[derive(Clone, Debug, PartialEq)]
pub struct ObsOrigin {
    /// Message id.
    pub message: String,
    /// Index of the observation in its message (a station's value, a granule's footprint).
    pub index: u32,
    /// The reporting station (None for satellite footprints).
    pub station: Option<String>,
}

/// Why an observation was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QcReason {
    /// |d| > k σ_d.
    BackgroundCheck,
    /// Its station is blacklisted (by the operator or the monitor).
    Blacklisted,
}

impl QcReason {
    /// Every reason, for pre-registering counters.
    pub const ALL: [QcReason; 2] = [QcReason::BackgroundCheck, QcReason::Blacklisted];

    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            QcReason::BackgroundCheck => "background_check",
            QcReason::Blacklisted => "blacklisted",
        }
    }
}

/// A left-out observation, as the daemon keeps it beside the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QcRejection {
    /// Message id.
    pub message: String,
    /// Index of the observation in its message.
    pub index: u32,
    /// Station or satellite.
    pub modality: Modality,
    /// Why.
    pub reason: QcReason,
    /// Its departure from the reference background, d = y − H x̄ᵇ.
    pub d: f64,
    /// Its normalised departure z = d / σ_d.
    pub z: f64,
}

/// Counts of one modality in one cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModalityCounts {
    /// Observations screened.
    pub screened: usize,
    /// Assimilated (down-weighted ones included).
    pub accepted: usize,
    /// Assimilated with an inflated error (Huber).
    pub downweighted: usize,
    /// Rejected by the background check.
    pub background_check: usize,
    /// Left out because their station is blacklisted.
    pub blacklisted: usize,
    /// The cycle's network-wide departure scale s ≥ 1 that widened σ_d (1 when the background's
    /// spread matches its errors); in experiment totals, the largest.
    pub scale: f64,
}

/// A cycle's QC counts, per modality: the `qc` field of the cycle summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QcCounts {
    /// Station reports.
    pub station: ModalityCounts,
    /// Satellite footprints.
    pub satellite: ModalityCounts,
    /// Stations blacklisted (operator and automatic) during this cycle.
    pub stations_blacklisted: usize,
}

impl QcCounts {
    /// The counts of a modality.
    pub fn of(&self, m: Modality) -> &ModalityCounts {
        match m {
            Modality::Station => &self.station,
            Modality::Satellite => &self.satellite,
        }
    }

    fn of_mut(&mut self, m: Modality) -> &mut ModalityCounts {
        match m {
            Modality::Station => &mut self.station,
            Modality::Satellite => &mut self.satellite,
        }
    }

    /// Add another cycle's counts (experiment totals).
    pub fn add(&mut self, o: &QcCounts) {
        for m in [Modality::Station, Modality::Satellite] {
            let (a, b) = (self.of_mut(m), o.of(m));
            a.screened += b.screened;
            a.accepted += b.accepted;
            a.downweighted += b.downweighted;
            a.background_check += b.background_check;
            a.blacklisted += b.blacklisted;
            a.scale = a.scale.max(b.scale);
        }
        self.stations_blacklisted = self.stations_blacklisted.max(o.stations_blacklisted);
    }
}

/// A cycle's screening.
pub struct Screened {
    /// What every filter assimilates.
    pub batch: ObsBatch,
    /// What was left out, and why.
    pub rejected: Vec<QcRejection>,
    /// Counts per modality.
    pub counts: QcCounts,
    /// Stations the monitor blacklisted this cycle (excluded from the next one).
    pub newly_blacklisted: Vec<String>,
    /// Stations the monitor took back this cycle.
    pub rehabilitated: Vec<String>,
    /// When a newly blacklisted station's shift began in a cycle still in memory: re-run the
    /// filters without it from there ([`Replay`]).
    pub replay: Option<Replay>,
}

/// Cycles to re-analyse without newly blacklisted stations: start from the analysis of cycle
/// `from`, then for each batch forecast one cycle and analyse it; the result is the analysis of
/// the cycle before the current one, whose forecast replaces the current background (the
/// current cycle's [`Screened::batch`] already leaves the stations out).
pub struct Replay {
    /// The analysis to restart from (the cycle before the earliest change point).
    pub from: u64,
    /// The accepted observations of cycles from + 1 .. current − 1 without the stations.
    pub batches: Vec<(u64, ObsBatch)>,
    /// The stations taken out.
    pub stations: Vec<String>,
}

/// One cycle's accepted observations and their stations, kept for a [`Replay`].
#[derive(Clone, Debug)]
struct AcceptedCycle {
    cycle: u64,
    obs: Vec<Observation>,
    stations: Vec<Option<String>>,
}

/// The QC of a running filter system: settings and the monitor's persistent state.
#[derive(Clone, Debug, Default)]
pub struct Qc {
    /// Settings (`[qc]`).
    pub settings: QcSettings,
    /// Every station's running statistics.
    pub state: MonitorState,
    /// Climatological mean and standard deviation per state field (the divergence guard's state
    /// test; `None`: that test is off).
    pub climatology: Option<(Vec<f64>, Vec<f64>)>,
    /// The last `replay_cycles` cycles' accepted observations (memory only: after a restart a
    /// replay reaches back to the restart at most).
    accepted: VecDeque<AcceptedCycle>,
}

impl Qc {
    /// QC with these settings and stored statistics; applies `settings.clear`. Returns the
    /// stations whose automatic blacklisting the clear lifted.
    pub fn new(settings: QcSettings, mut state: MonitorState) -> (Qc, Vec<String>) {
        let cleared = settings.monitor.clear(&mut state, &settings.clear);
        (
            Qc {
                settings,
                state,
                climatology: None,
                accepted: VecDeque::new(),
            },
            cleared,
        )
    }

    /// QC over stored statistics as they are, without applying `clear` (the daemon applies it when
    /// it starts): what `assimd stations` shows.
    pub fn as_stored(settings: QcSettings, state: MonitorState) -> Qc {
        Qc {
            settings,
            state,
            ..Default::default()
        }
    }

    /// New settings (SIGHUP): the operator's lists and thresholds; applies `clear`.
    pub fn reload(&mut self, settings: QcSettings) -> Vec<String> {
        let cleared = settings.monitor.clear(&mut self.state, &settings.clear);
        self.settings = settings;
        cleared
    }

    /// Whether a station's reports are left out.
    pub fn excluded(&self, station: Option<&str>) -> bool {
        station.is_some_and(|s| {
            self.settings.blacklist.iter().any(|b| b == s)
                || (self.settings.enabled && self.state.is_blacklisted(s))
        })
    }

    /// Stations blacklisted now (operator's and monitor's), sorted.
    pub fn blacklisted(&self) -> Vec<String> {
        let mut v: Vec<String> = self.settings.blacklist.clone();
        if self.settings.enabled {
            v.extend(self.state.blacklisted().into_iter().map(String::from));
        }
        v.sort();
        v.dedup();
        v
    }

    /// The divergence guard on one background: `Some` when flagged. `all` holds the
    /// cycle's observations in `origins`' order; blacklisted stations are left out of the test.
    pub fn diverged(
        &self,
        background: &Ensemble,
        all: &ObsBatch,
        origins: &[ObsOrigin],
    ) -> Option<qc::Divergence> {
        if !self.settings.enabled {
            return None;
        }
        let (deps, values): (Vec<Departure>, Vec<(usize, f64)>) = qc::departures(background, all)
            .into_iter()
            .zip(&all.obs)
            .zip(origins)
            .filter(|(_, o)| !self.excluded(o.station.as_deref()))
            .map(|((d, o), _)| (d, (o.var, o.value)))
            .unzip();
        let excursion = self
            .climatology
            .as_ref()
            .map_or(0.0, |(m, s)| qc::state_excursion(background, m, s));
        self.settings.divergence.check(&deps, &values, excursion)
    }

    /// The cycle's network-wide departure scale of a modality, s = max(1, √r), with r the robust
    /// innovation ratio median(z²)/median(χ²₁) over its observations (blacklisted stations left
    /// out; 1 with fewer than `divergence.min_obs` of them). The background check and the monitor
    /// use σ_d·s: when the whole background is worse than its spread says (spin-up from
    /// climatology, a regime change), every z is inflated alike, and a fixed k would reject the
    /// very observations that correct it, then blacklist their stations. A gross error or a biased
    /// station cannot move a median: it stays an outlier among its neighbours.
    fn network_scale(
        &self,
        raw: &[Departure],
        all: &ObsBatch,
        origins: &[ObsOrigin],
        m: Modality,
    ) -> f64 {
        let good: Vec<Departure> = raw
            .iter()
            .zip(&all.obs)
            .zip(origins)
            .filter(|((_, o), origin)| o.modality == m && !self.excluded(origin.station.as_deref()))
            .map(|((d, _), _)| *d)
            .collect();
        if good.len() < self.settings.divergence.min_obs.max(1) {
            return 1.0;
        }
        qc::innovation_ratio(&good).map_or(1.0, |r| r.sqrt().max(1.0))
    }

    /// Screen the cycle's observations `all` (with their `origins`) against the reference
    /// background; updates the station statistics.
    pub fn screen(
        &mut self,
        cycle: u64,
        space: &StateSpace,
        all: &ObsBatch,
        origins: &[ObsOrigin],
        reference: &Ensemble,
    ) -> Result<Screened> {
        let raw = qc::departures(reference, all);
        // σ_d widened by the cycle's network-wide scale of each modality (see `network_scale`).
        let scales = [Modality::Station, Modality::Satellite]
            .map(|m| self.network_scale(&raw, all, origins, m));
        let deps: Vec<Departure> = raw
            .iter()
            .zip(&all.obs)
            .map(|(d, o)| {
                let s = scales[usize::from(o.modality == Modality::Satellite)];
                Departure {
                    d: d.d,
                    sigma_b: d.sigma_b * s,
                    sigma_o: d.sigma_o * s,
                }
            })
            .collect();
        let check = self.settings.check();
        let verdicts: Vec<Verdict> = if self.settings.enabled {
            check.screen(all, &deps)
        } else {
            vec![Verdict::Accept; all.len()]
        };
        let mut counts = QcCounts::default();
        counts.station.scale = scales[0];
        counts.satellite.scale = scales[1];
        let (mut accepted, mut rejected) = (Vec::with_capacity(all.len()), Vec::new());
        let mut accepted_at = Vec::with_capacity(all.len()); // their indices in `all`
        let mut reports: BTreeMap<&str, Reports> = BTreeMap::new();
        let mut positions: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for (i, ((((o, dep), v), origin), raw)) in all
            .obs
            .iter()
            .zip(&deps)
            .zip(&verdicts)
            .zip(origins)
            .zip(&raw)
            .enumerate()
        {
            let c = counts.of_mut(o.modality);
            c.screened += 1;
            if let Some(s) = &origin.station {
                let r = reports.entry(s.as_str()).or_default();
                r.0.push((dep.z(), *v == Verdict::Reject));
                r.1.push(o.value);
                positions.entry(s.as_str()).or_insert((o.lat, o.lon));
            }
            let reason = if self.excluded(origin.station.as_deref()) {
                c.blacklisted += 1;
                Some(QcReason::Blacklisted)
            } else if *v == Verdict::Reject {
                c.background_check += 1;
                Some(QcReason::BackgroundCheck)
            } else {
                None
            };
            match reason {
                Some(reason) => rejected.push(QcRejection {
                    message: origin.message.clone(),
                    index: origin.index,
                    modality: o.modality,
                    reason,
                    d: dep.d,
                    z: raw.z(),
                }),
                None => {
                    c.accepted += 1;
                    let mut o: Observation = o.clone();
                    if let Verdict::DownWeight(f) = v {
                        c.downweighted += 1;
                        o.sigma *= f;
                    }
                    accepted.push(o);
                    accepted_at.push(i);
                }
            }
        }
        counts.stations_blacklisted = self.blacklisted().len();
        let (newly_blacklisted, rehabilitated) = if self.settings.enabled {
            // Blacklisted stations (a stuck sensor, a drift) are no reference for their neighbours.
            let references: Vec<bool> = reports.keys().map(|id| !self.excluded(Some(id))).collect();
            local_scale(
                &mut reports,
                &positions,
                &references,
                self.settings.monitor.neighbours,
                &space.geometry,
            );
            let reports: Vec<StationReport> = reports
                .into_iter()
                .map(|(s, (obs, values))| StationReport {
                    station: s.to_string(),
                    obs,
                    values,
                })
                .collect();
            self.settings
                .monitor
                .update(&mut self.state, cycle, &reports)
        } else {
            (Vec::new(), Vec::new())
        };
        let stations = accepted_at
            .iter()
            .map(|&i| origins[i].station.clone())
            .collect();
        let replay = self.remember(space, cycle, &accepted, stations, &newly_blacklisted)?;
        if replay.is_some() {
            // Replayed without them, the stations are out of this cycle too: their reports are
            // left out (and kept) like any blacklisted station's.
            let mut kept = Vec::with_capacity(accepted.len());
            for (o, i) in accepted.into_iter().zip(accepted_at) {
                if self.excluded(origins[i].station.as_deref()) {
                    let c = counts.of_mut(o.modality);
                    c.accepted -= 1;
                    c.downweighted -= usize::from(matches!(verdicts[i], Verdict::DownWeight(_)));
                    c.blacklisted += 1;
                    rejected.push(QcRejection {
                        message: origins[i].message.clone(),
                        index: origins[i].index,
                        modality: o.modality,
                        reason: QcReason::Blacklisted,
                        d: deps[i].d,
                        z: raw[i].z(),
                    });
                } else {
                    kept.push(o);
                }
            }
            accepted = kept;
        }
        let batch = ObsBatch::new(space, accepted)
            .map_err(|e| anyhow::anyhow!("building the accepted observations' operator: {e}"))?;
        Ok(Screened {
            batch,
            rejected,
            counts,
            newly_blacklisted,
            rehabilitated,
            replay,
        })
    }

    /// Keep cycle k's accepted observations; when stations were newly blacklisted with a change
    /// point still in memory, the replay that takes them out of the cycles since.
    fn remember(
        &mut self,
        space: &StateSpace,
        k: u64,
        accepted: &[Observation],
        stations: Vec<Option<String>>,
        newly_blacklisted: &[String],
    ) -> Result<Option<Replay>> {
        let depth = self.settings.replay_cycles as usize;
        if depth == 0 {
            self.accepted.clear();
            return Ok(None);
        }
        let onsets: Vec<(String, u64)> = newly_blacklisted
            .iter()
            .filter_map(|id| {
                let b = self.state.stations.get(id)?.blacklisted.as_ref()?;
                Some((id.clone(), b.onset?))
            })
            .collect();
        // The kept cycles are contiguous and end at k − 1 (any gap clears them, below), so a replay
        // reaches back to the oldest.
        if self.accepted.back().is_some_and(|a| a.cycle + 1 != k) {
            self.accepted.clear();
        }
        let oldest = self.accepted.front().map(|a| a.cycle);
        let replay = match (onsets.iter().map(|(_, o)| *o).min(), oldest) {
            (Some(onset), Some(oldest)) if onset >= oldest && onset <= k => {
                let taken: Vec<String> = onsets.into_iter().map(|(id, _)| id).collect();
                let without = |obs: &[Observation], st: &[Option<String>]| {
                    let kept: Vec<Observation> = obs
                        .iter()
                        .zip(st)
                        .filter(|(_, s)| !self.excluded(s.as_deref()))
                        .map(|(o, _)| o.clone())
                        .collect();
                    ObsBatch::new(space, kept).map_err(|e| {
                        anyhow::anyhow!("building a replayed cycle's observation operator: {e}")
                    })
                };
                let batches = self
                    .accepted
                    .iter()
                    .filter(|a| a.cycle >= onset)
                    .map(|a| Ok((a.cycle, without(&a.obs, &a.stations)?)))
                    .collect::<Result<Vec<_>>>()?;
                Some(Replay {
                    from: onset - 1,
                    batches,
                    stations: taken,
                })
            }
            _ => None,
        };
        self.accepted.push_back(AcceptedCycle {
            cycle: k,
            obs: accepted.to_vec(),
            stations,
        });
        while self.accepted.len() > depth {
            self.accepted.pop_front();
        }
        Ok(replay)
    }
}

/// How a flagged filter was recovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Rolled back to the analysis of this cycle (the last one whose forecast passed the guard)
    /// and forecast from there to the flagged cycle.
    Rollback(u64),
    /// Restarted from climatological draws (no good analysis at hand, or its forecast failed too).
    Climatology,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recovery::Rollback(j) => write!(
                f,
                "rolled back to the analysis of cycle {j} and forecast from there"
            ),
            Recovery::Climatology => write!(f, "restarted from climatological draws"),
        }
    }
}

impl Qc {
    /// The recovery of a background flagged at cycle `k`: the last good analysis (`last_good`:
    /// its cycle j < k and ensemble) forecast k − j cycles with `forecast`, if that background
    /// passes the guard; else `climatology()`.
    pub fn recover(
        &self,
        k: u64,
        last_good: Option<(u64, Ensemble)>,
        forecast: &dyn Fn(&mut Ensemble),
        all: &ObsBatch,
        origins: &[ObsOrigin],
        climatology: impl FnOnce() -> Result<Ensemble>,
    ) -> Result<(Ensemble, Recovery)> {
        if let Some((j, mut e)) = last_good.filter(|(j, _)| *j < k) {
            for _ in j..k {
                forecast(&mut e);
            }
            if self.diverged(&e, all, origins).is_none() {
                return Ok((e, Recovery::Rollback(j)));
            }
        }
        Ok((climatology()?, Recovery::Climatology))
    }
}

/// One station's line of the live status (`{prefix}/stations`, `assimd stations`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StationLine {
    /// Station id.
    pub station: String,
    /// `ok`, `watch`, `blacklisted` (by the monitor) or `operator_blacklisted`.
    pub status: assimd_filter::qc::StationStatus,
    /// Cycles with a report.
    pub reports: u64,
    /// Running mean of z = d/σ_d (the station's bias in units of σ_d).
    pub mean_z: f64,
    /// Running standard deviation of z.
    pub std_z: f64,
    /// Running share of its observations rejected by the background check.
    pub reject_rate: f64,
    /// The last cycle it reported in.
    pub last_cycle: u64,
    /// First excluded cycle, when blacklisted by the monitor.
    pub blacklisted_since: Option<u64>,
    /// Why (`bias`, `noise`, `rejections`), when blacklisted by the monitor.
    pub reason: Option<String>,
}

/// The live status of every monitored station.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StationsReport {
    /// The last committed cycle.
    pub cycle: u64,
    /// Stations whose reports are left out now (operator's and monitor's).
    pub blacklisted: Vec<String>,
    /// Every station the monitor has seen (and every operator-blacklisted one), worst first:
    /// blacklisted, then on watch, then by |mean z|.
    pub stations: Vec<StationLine>,
}

impl Qc {
    /// The status report as of cycle `cycle`.
    pub fn report(&self, cycle: u64) -> StationsReport {
        use assimd_filter::qc::StationStatus as S;
        let m = &self.settings.monitor;
        let mut ids: Vec<&str> = self.state.stations.keys().map(String::as_str).collect();
        ids.extend(self.settings.blacklist.iter().map(String::as_str));
        ids.sort();
        ids.dedup();
        let mut stations: Vec<StationLine> = ids
            .into_iter()
            .map(|id| {
                let st = self.state.stations.get(id).cloned().unwrap_or_default();
                StationLine {
                    station: id.to_string(),
                    status: m.status(&self.state, id, &self.settings.blacklist),
                    reports: st.reports,
                    mean_z: st.mean_z,
                    std_z: st.std_z(),
                    reject_rate: st.reject_rate,
                    last_cycle: st.last_cycle,
                    blacklisted_since: st.blacklisted.as_ref().map(|b| b.since_cycle),
                    reason: st.blacklisted.map(|b| b.reason),
                }
            })
            .collect();
        let rank = |s: &S| match s {
            S::OperatorBlacklisted | S::Blacklisted => 0,
            S::Watch => 1,
            S::Ok => 2,
        };
        stations.sort_by(|a, b| {
            rank(&a.status)
                .cmp(&rank(&b.status))
                .then(b.mean_z.abs().total_cmp(&a.mean_z.abs()))
                .then(a.station.cmp(&b.station))
        });
        StationsReport {
            cycle,
            blacklisted: self.blacklisted(),
            stations,
        }
    }
}

/// Split a cycle's messages into the assimilable observations with their origins and the
/// verification ones: (assimilable, origins, withheld).
pub fn gather<'a>(
    messages: impl IntoIterator<Item = (&'a str, Option<&'a str>, &'a [Observation])>,
    withheld: &dyn Fn(&str) -> bool,
) -> (Vec<Observation>, Vec<ObsOrigin>, Vec<Observation>) {
    let (mut obs, mut origins, mut verif) = (Vec::new(), Vec::new(), Vec::new());
    for (id, station, values) in messages {
        if station.is_some_and(withheld) {
            verif.extend_from_slice(values);
            continue;
        }
        for (i, o) in values.iter().enumerate() {
            obs.push(o.clone());
            origins.push(ObsOrigin {
                message: id.to_string(),
                index: i as u32,
                station: station.map(String::from),
            });
        }
    }
    (obs, origins, verif)
}

/// Per station: (z, rejected) of each of its observations this cycle, and the reported values.
type Reports = (Vec<(f64, bool)>, Vec<f64>);

/// The monitor's local departure scale (see `StationMonitor::neighbours`): each station's z divided
/// by s = √r when r > 4 (else 1), r = median(z²)/median(χ²₁) over the accepted departures of its `k` nearest
/// reporting stations that are `references` (not blacklisted; itself left out; at least 3
/// departures, else s = 1). A biased station cannot
/// move its neighbours' median, so its z stays as large; a local excursion of the background
/// inflates its neighbours' z as much as its own, and is not taken for a shift of every station
/// in it.
fn local_scale(
    reports: &mut BTreeMap<&str, Reports>,
    positions: &BTreeMap<&str, (f64, f64)>,
    references: &[bool],
    k: usize,
    geometry: &assimd_filter::Geometry,
) {
    // median(χ²₁) = (Φ⁻¹(3/4))².
    const MEDIAN_CHI2_1: f64 = 0.454_936_423_119_572_8;
    const LOCAL_EXCURSION: f64 = 4.0;
    if k == 0 || reports.len() < 2 {
        return;
    }
    let ids: Vec<&str> = reports.keys().copied().collect();
    // Plane coordinates once per station: the distances below need no trigonometry.
    let at: Vec<(f64, f64)> = ids
        .iter()
        .map(|id| {
            let (lat, lon) = positions[id];
            geometry.to_plane(lat, lon)
        })
        .collect();
    let z2: Vec<Vec<f64>> = ids
        .iter()
        .map(|id| {
            reports[id]
                .0
                .iter()
                .filter(|(_, rejected)| !rejected)
                .map(|(z, _)| z * z)
                .collect()
        })
        .collect();
    let nearest = nearest_references(&at, references, k, geometry);
    let scales: Vec<f64> = nearest
        .iter()
        .map(|near| {
            let mut pooled: Vec<f64> = near.iter().flat_map(|&j| z2[j].iter().copied()).collect();
            if pooled.len() < 3 {
                return 1.0;
            }
            pooled.sort_by(f64::total_cmp);
            let n = pooled.len();
            let median = if n % 2 == 1 {
                pooled[n / 2]
            } else {
                0.5 * (pooled[n / 2 - 1] + pooled[n / 2])
            };
            let r = median / MEDIAN_CHI2_1;
            // Four good neighbours' median often exceeds χ²₁'s (r > 1 about half the time, r > 4
            // about 5 %); only a clear excursion scales, else a good station's evidence of a real
            // shift would be diluted by its neighbours' noise.
            if r > LOCAL_EXCURSION {
                r.sqrt()
            } else {
                1.0
            }
        })
        .collect();
    for (id, s) in ids.iter().zip(scales) {
        if s > 1.0 {
            for (z, _) in reports.get_mut(id).unwrap().0.iter_mut() {
                *z /= s;
            }
        }
    }
}

/// The `k` nearest of the points `at` (plane coordinates) to each of them, itself left out and
/// only those marked in `references`, in order of distance, ties by index: what a scan of every
/// pair gives ([`nearest_by_scan`]), found through a grid of cells on the periodic plane.
///
/// The cells are about two points wide. Point i's search adds the cells at Chebyshev cell
/// distance r = 0, 1, 2, … around its own; a point in a cell not yet added is at least r·s away
/// (s the smaller cell side), so once the k-th smallest distance among the candidates is below
/// r·s no point outside can come before it, and the selection among the candidates is exact. When
/// the ring would wrap onto itself the point falls back to the scan. O(S·k) for S points at a
/// roughly even density, against the scan's O(S²).
fn nearest_references(
    at: &[(f64, f64)],
    references: &[bool],
    k: usize,
    geometry: &assimd_filter::Geometry,
) -> Vec<Vec<usize>> {
    let n = at.len();
    let n_ref = references.iter().filter(|r| **r).count();
    if k == 0 || n_ref < 64 {
        return nearest_by_scan(at, references, k, geometry);
    }
    let (px, py) = geometry.plane_periods_km();
    let (ncx, ncy) = match py {
        Some(_) => {
            let c = ((n_ref as f64 / 2.0).sqrt().floor() as usize).max(1);
            (c, c)
        }
        None => ((n_ref / 2).max(1), 1),
    };
    let (sx, sy) = (
        px / ncx as f64,
        py.map_or(f64::INFINITY, |p| p / ncy as f64),
    );
    let cell_of = |(x, y): (f64, f64)| {
        let cx = ((x.rem_euclid(px) / sx) as usize).min(ncx - 1);
        let cy = py.map_or(0, |p| ((y.rem_euclid(p) / sy) as usize).min(ncy - 1));
        (cx, cy)
    };
    let mut cells: Vec<Vec<usize>> = vec![Vec::new(); ncx * ncy];
    for j in (0..n).filter(|&j| references[j]) {
        let (cx, cy) = cell_of(at[j]);
        cells[cy * ncx + cx].push(j);
    }
    let s = sx.min(sy);
    (0..n)
        .map(|i| {
            let (cx, cy) = cell_of(at[i]);
            let mut near: Vec<(f64, usize)> = Vec::new();
            let mut r = 0usize;
            loop {
                if 2 * r + 1 > ncx || (ncy > 1 && 2 * r + 1 > ncy) {
                    return nearest_by_scan_one(i, at, references, k, geometry);
                }
                let (r_i, ncx_i, ncy_i) = (r as isize, ncx as isize, ncy as isize);
                let ys = if ncy == 1 { 0..=0 } else { -r_i..=r_i };
                for dy in ys {
                    for dx in -r_i..=r_i {
                        // Only the ring's cells: the inner ones were added before.
                        if dx.abs() != r_i && dy.abs() != r_i {
                            continue;
                        }
                        let x = (cx as isize + dx).rem_euclid(ncx_i) as usize;
                        let y = (cy as isize + dy).rem_euclid(ncy_i) as usize;
                        for &j in &cells[y * ncx + x] {
                            if j != i {
                                near.push((geometry.plane_distance_km(at[i], at[j]), j));
                            }
                        }
                    }
                }
                if near.len() >= k {
                    near.select_nth_unstable_by(k - 1, by_distance_then_index);
                    if near[k - 1].0 < r as f64 * s {
                        near.truncate(k);
                        near.sort_by(by_distance_then_index);
                        return near.into_iter().map(|(_, j)| j).collect();
                    }
                }
                r += 1;
            }
        })
        .collect()
}

/// The order of (distance, index) candidates: nearer first, ties by index.
fn by_distance_then_index(a: &(f64, usize), b: &(f64, usize)) -> std::cmp::Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// [`nearest_references`] by a scan of every pair.
fn nearest_by_scan(
    at: &[(f64, f64)],
    references: &[bool],
    k: usize,
    geometry: &assimd_filter::Geometry,
) -> Vec<Vec<usize>> {
    (0..at.len())
        .map(|i| nearest_by_scan_one(i, at, references, k, geometry))
        .collect()
}

fn nearest_by_scan_one(
    i: usize,
    at: &[(f64, f64)],
    references: &[bool],
    k: usize,
    geometry: &assimd_filter::Geometry,
) -> Vec<usize> {
    let mut near: Vec<(f64, usize)> = (0..at.len())
        .filter(|&j| j != i && references[j])
        .map(|j| (geometry.plane_distance_km(at[i], at[j]), j))
        .collect();
    // The k nearest (ties by index), in order: a partial selection, then a sort of k.
    if near.len() > k {
        near.select_nth_unstable_by(k, by_distance_then_index);
        near.truncate(k);
    }
    near.sort_by(by_distance_then_index);
    near.into_iter().map(|(_, j)| j).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use assimd_filter::obs::Footprint;
    use assimd_models::testbed::{Testbed, TestbedKind};

    /// Message `m{i}` of station `S{i:02}`, one observation each.
    fn station_origins(n: usize) -> Vec<ObsOrigin> {
        (0..n)
            .map(|i| ObsOrigin {
                message: format!("m{i}"),
                index: 0,
                station: Some(format!("S{i:02}")),
            })
            .collect()
    }

    fn station_obs(i: usize, value: f64) -> Observation {
        Observation {
            modality: Modality::Station,
            var: 0,
            lat: 45.0,
            lon: assimd_filter::geometry::wrap_lon(9.0 * i as f64),
            footprint: Footprint::Point,
            value,
            sigma: 1.0,
        }
    }

    /// An ensemble around 0 with spread 1 at every point; station S07 reports 40 (40 σ_d off),
    /// S03 is on the operator's blacklist: both filters would get exactly the other 38.
    #[test]
    fn gross_errors_and_blacklisted_stations_are_left_out_and_recorded() {
        let space = Testbed::new(TestbedKind::L96).space;
        let members: Vec<Vec<f64>> = (0..20)
            .map(|k| vec![if k % 2 == 0 { 1.0 } else { -1.0 }; 40])
            .collect();
        let ens = Ensemble::from_members(members).unwrap();
        let msgs: Vec<(String, String, Vec<Observation>)> = (0..40)
            .map(|i| {
                (
                    format!("S{i:02}/t"),
                    format!("S{i:02}"),
                    vec![station_obs(i, if i == 7 { 40.0 } else { 0.3 })],
                )
            })
            .collect();
        let (obs, origins, verif) = gather(
            msgs.iter()
                .map(|(id, s, o)| (id.as_str(), Some(s.as_str()), o.as_slice())),
            &|s| s == "S39",
        );
        assert_eq!((obs.len(), verif.len()), (39, 1));
        let settings = QcSettings {
            blacklist: vec!["S03".into()],
            ..QcSettings::default()
        };
        let (mut qc, _) = Qc::new(settings, MonitorState::default());
        let all = ObsBatch::new(&space, obs).unwrap();
        assert_eq!(qc.diverged(&ens, &all, &origins), None);
        let s = qc.screen(1, &space, &all, &origins, &ens).unwrap();
        assert_eq!(s.batch.len(), 37);
        assert_eq!(
            (
                s.counts.station.background_check,
                s.counts.station.blacklisted,
                s.counts.station.accepted
            ),
            (1, 1, 37)
        );
        let r: Vec<(&str, QcReason)> = s
            .rejected
            .iter()
            .map(|r| (r.message.as_str(), r.reason))
            .collect();
        assert_eq!(
            r,
            vec![
                ("S03/t", QcReason::Blacklisted),
                ("S07/t", QcReason::BackgroundCheck)
            ]
        );
        assert!((s.rejected[1].d - 40.0).abs() < 1e-12);
        // The blacklisted station is still monitored; QC off passes everything but the blacklist.
        assert_eq!(qc.state.stations["S03"].reports, 1);
        qc.reload(QcSettings {
            enabled: false,
            blacklist: vec!["S03".into()],
            ..QcSettings::default()
        });
        assert_eq!(
            qc.screen(2, &space, &all, &origins, &ens)
                .unwrap()
                .batch
                .len(),
            38
        );
    }

    /// 40 stations around an ensemble of spread 1 (σ_d = √(20/19 + 1)); S05 jumps by 6 (z ≈ 4.2,
    /// under k = 5, clipped to h/2 = 4 in the CUSUM) from cycle 61: S⁺ = 3, 6, 9 > h = 8 at cycle
    /// 63, change point 61. The replay restarts from cycle 60's analysis, through cycles 61 and 62
    /// without S05, and cycle 63's batch leaves S05 out too (recorded as blacklisted).
    #[test]
    fn a_shifted_station_is_replayed_out_from_its_change_point() {
        let space = Testbed::new(TestbedKind::L96).space;
        let ens = Ensemble::from_members(
            (0..20)
                .map(|k| vec![if k % 2 == 0 { 1.0 } else { -1.0 }; 40])
                .collect(),
        )
        .unwrap();
        let origins = station_origins(40);
        let cycle_obs = |k: u64| {
            let obs = (0..40)
                .map(|i| {
                    let jump = if i == 5 && k > 60 { 6.0 } else { 0.0 };
                    station_obs(i, 0.3 + 0.001 * k as f64 + jump)
                })
                .collect();
            ObsBatch::new(&space, obs).unwrap()
        };
        for replay_cycles in [24, 0] {
            let settings = QcSettings {
                replay_cycles,
                ..QcSettings::default()
            };
            let (mut qc, _) = Qc::new(settings, MonitorState::default());
            let mut got = None;
            for k in 1..=63u64 {
                let s = qc.screen(k, &space, &cycle_obs(k), &origins, &ens).unwrap();
                assert_eq!(s.newly_blacklisted.is_empty(), k != 63, "cycle {k}");
                if k == 63 {
                    got = Some(s);
                }
            }
            let s = got.unwrap();
            assert_eq!(
                qc.state.stations["S05"]
                    .blacklisted
                    .as_ref()
                    .unwrap()
                    .reason,
                "shift"
            );
            if replay_cycles == 0 {
                assert!(s.replay.is_none());
                assert_eq!(
                    s.batch.len(),
                    40,
                    "S05 is left out from the next cycle only"
                );
                continue;
            }
            let r = s.replay.as_ref().expect("a replay");
            assert_eq!((r.from, r.stations.clone()), (60, vec!["S05".to_string()]));
            let cycles: Vec<u64> = r.batches.iter().map(|(c, _)| *c).collect();
            assert_eq!(cycles, vec![61, 62]);
            for (c, b) in &r.batches {
                assert_eq!(b.len(), 39);
                let kept: Vec<f64> = b.obs.iter().map(|o| o.value).collect();
                let want: Vec<f64> = cycle_obs(*c)
                    .obs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 5)
                    .map(|(_, o)| o.value)
                    .collect();
                assert_eq!(kept, want, "cycle {c}");
            }
            assert_eq!(s.batch.len(), 39);
            assert_eq!(
                (s.counts.station.accepted, s.counts.station.blacklisted),
                (39, 1)
            );
            assert_eq!(
                s.rejected
                    .iter()
                    .map(|r| (r.message.as_str(), r.reason))
                    .collect::<Vec<_>>(),
                vec![("m5", QcReason::Blacklisted)]
            );
        }
    }

    #[test]
    fn a_wrecked_background_is_flagged_unless_qc_is_off() {
        let space = Testbed::new(TestbedKind::L96).space;
        let wrecked = Ensemble::from_members(
            (0..20)
                .map(|k| vec![-9999.0 + 0.01 * k as f64; 40])
                .collect(),
        )
        .unwrap();
        let obs: Vec<Observation> = (0..40).map(|i| station_obs(i, 1.0)).collect();
        let origins = station_origins(40);
        let all = ObsBatch::new(&space, obs).unwrap();
        let (qc, _) = Qc::new(QcSettings::default(), MonitorState::default());
        assert!(qc
            .diverged(&wrecked, &all, &origins)
            .is_some_and(|r| r.ratio > 1e6));
        let (off, _) = Qc::new(
            QcSettings {
                enabled: false,
                ..QcSettings::default()
            },
            MonitorState::default(),
        );
        assert_eq!(off.diverged(&wrecked, &all, &origins), None);
    }

    #[test]
    fn settings_errors_name_the_key() {
        let bad = QcSettings {
            station: Thresholds {
                k: -1.0,
                huber: None,
            },
            ..QcSettings::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("qc.station.k"),
            "{}",
            bad.validate().unwrap_err()
        );
        let bad = QcSettings {
            divergence: DivergenceGuard {
                max_ratio: 0.5,
                ..DivergenceGuard::default()
            },
            ..QcSettings::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("qc.divergence.max_ratio"));
        let bad = QcSettings {
            monitor: StationMonitor {
                weight: 0.0,
                ..StationMonitor::default()
            },
            ..QcSettings::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("qc.monitor.weight"));
    }
    /// The grid search for the nearest stations gives exactly what the scan of every pair gives,
    /// on a ring and a periodic box, with duplicate positions (ties by index), points on the
    /// period's edge, references missing and k from 1 to more than the references.
    #[test]
    fn nearest_references_through_the_grid_equal_the_scan() {
        let ring = Testbed::new(TestbedKind::L96).space.geometry;
        let boxed = assimd_filter::Geometry::PeriodicBox {
            nx: 64,
            ny: 64,
            length_km: 1000.0,
            lat0_deg: 45.0,
            lon0_deg: 9.0,
        };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for geometry in [&ring, &boxed] {
            let (px, py) = geometry.plane_periods_km();
            for &(n, k) in &[(64, 1), (100, 4), (300, 4), (1000, 8), (200, 250)] {
                let mut at: Vec<(f64, f64)> = (0..n)
                    .map(|_| {
                        let y = py.map_or(0.0, |p| (uniform() - 0.5) * p);
                        ((uniform() - 0.5) * px, y)
                    })
                    .collect();
                // Ties: the same position twice; points on the edges of the period.
                at[7] = at[3];
                at[11] = (-px / 2.0, py.map_or(0.0, |p| -p / 2.0));
                at[12] = (px / 2.0 - 1e-9, 0.0);
                let references: Vec<bool> = (0..n).map(|i| i % 9 != 4).collect();
                assert_eq!(
                    nearest_references(&at, &references, k, geometry),
                    nearest_by_scan(&at, &references, k, geometry),
                    "n {n}, k {k}, {geometry:?}"
                );
            }
        }
    }
    /// The monitor's local scale: a biased station among good neighbours keeps its z; stations in
    /// a local excursion (all of them far off together) are scaled down to about the neighbourhood's
    /// robust spread; with `neighbours = 0` nothing changes.
    #[test]
    fn local_scale_tells_a_biased_station_from_a_local_excursion() {
        let space = Testbed::new(TestbedKind::L96).space;
        let ids: Vec<String> = (0..40).map(|i| format!("S{i:02}")).collect();
        // Good stations: |z| 0.4-0.6, under χ²₁'s median √0.455 = 0.67, so their scale is 1.
        let good = |i: usize| -> f64 { [0.5, -0.6, 0.4, -0.5, 0.6, -0.4][i % 6] };
        let z_of = |i: usize| match i {
            5 => 3.0,                          // one biased station
            20..=26 => 4.0 * good(i).signum(), // a local excursion, signs alternating
            _ => good(i),
        };
        let build = || {
            let mut reports: BTreeMap<&str, Reports> = BTreeMap::new();
            let mut positions = BTreeMap::new();
            for (i, id) in ids.iter().enumerate() {
                reports.insert(id.as_str(), (vec![(z_of(i), false)], vec![0.0]));
                positions.insert(
                    id.as_str(),
                    (45.0, assimd_filter::geometry::wrap_lon(9.0 * i as f64)),
                );
            }
            (reports, positions)
        };
        let (mut reports, positions) = build();
        local_scale(&mut reports, &positions, &[true; 40], 4, &space.geometry);
        assert_eq!(reports["S05"].0[0].0, 3.0, "the biased station's z is kept");
        assert_eq!(
            reports["S12"].0[0].0,
            good(12),
            "a good station far from both is untouched"
        );
        for i in 21..=25 {
            let z = reports[ids[i].as_str()].0[0].0.abs();
            // Its 4 nearest neighbours are all at |z| = 4: scale 4/√0.455 = 5.9, z ≈ 0.68.
            assert!(
                z < 1.0,
                "{}: z {z} inside the excursion should be scaled down",
                ids[i]
            );
        }
        let (mut unchanged, positions) = build();
        local_scale(&mut unchanged, &positions, &[true; 40], 0, &space.geometry);
        assert!(ids
            .iter()
            .enumerate()
            .all(|(i, id)| unchanged[id.as_str()].0[0].0 == z_of(i)));
    }
}
