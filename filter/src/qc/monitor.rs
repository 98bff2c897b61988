//! Station monitoring and the automatic blacklist (see the module docs of `qc`).

use crate::FilterError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Settings of the station monitor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StationMonitor {
    /// Off: no statistics, no automatic blacklist (the operator's list still applies).
    pub enabled: bool,
    /// Weight λ of the newest cycle in the running statistics, m ← m + λ (x − m): a memory of
    /// about 1/λ cycles. Until a station has 1/λ reports the statistics are plain means, so a new
    /// station is judged on what it sent.
    pub weight: f64,
    /// Bias threshold: |running mean of z| above it (in units of σ_d) counts against a station. A
    /// good station's running mean scatters by about sqrt(λ / (2 − λ)) = 0.23 at λ = 0.1.
    pub max_bias: f64,
    /// Noise threshold: a running standard deviation of z above it counts against a station (a
    /// stuck or erratic sensor whose values still pass the check). A good station's is about 1.
    pub max_std: f64,
    /// Rejection-rate threshold: a running share of rejected reports above it counts against a
    /// station (a stuck sensor, a unit mix-up).
    pub max_reject_rate: f64,
    /// Consecutive cycles W past a threshold before the station is blacklisted: one bad spell is
    /// not a broken sensor.
    pub cycles: u32,
    /// Reports a station must have sent before it can be blacklisted for bias, noise or
    /// rejections: longer than a spin-up from climatology, whose departures are not yet those of a
    /// converged filter (10 blacklisted a good l96 `full` station at cycle 14 of a spin-up, 20 a
    /// good `stations+satellite` one at cycle 28 in the daemon; docs/results.md). A stuck station is
    /// caught by the persistence check from its first reports.
    pub min_reports: u64,
    /// Persistence check: a station whose values repeat exactly (bit for bit) this many cycles in
    /// a row is stuck and blacklisted at once (0 = off). A real sensor's reading, with its noise,
    /// never repeats to the last digit; a frozen datalogger's does (WMO-No. 488, persistence
    /// check).
    pub max_repeats: u32,
    /// CUSUM reference value k (in units of σ_d of the station's per-cycle departure u, see
    /// [`StationStats::cusum_hi`]): half the smallest sudden shift worth catching fast. Page's CUSUM
    /// is the quickest detector of a step change of size 2k for a given false-alarm rate (Lorden
    /// 1971), where the running mean above needs many cycles and W more.
    pub cusum_k: f64,
    /// CUSUM decision interval h: a station whose one-sided sum exceeds it is blacklisted at once
    /// (`shift`); 0 turns the CUSUM off. Each cycle's u is clipped to ±h/2, so no single report
    /// is more than half the evidence.
    pub cusum_h: f64,
    /// Consecutive cycles inside half of every threshold (the noise threshold halfway to 1) after which an automatically blacklisted
    /// station is taken back (0 = never: only an operator's `clear` does).
    pub rehabilitate_cycles: u32,
    /// The caller divides each station's z by the robust departure scale of its `neighbours`
    /// nearest reporting stations, when clearly above 1 (0 = off): a local excursion of the background
    /// (neighbouring good stations' departures inflated together) is not taken for a shift of each
    /// of them, while a biased station leaves its neighbours' scale at 1. Found on l96 `sparse`,
    /// where one excursion made the CUSUM blacklist 5 of 20 good stations (docs/results.md).
    pub neighbours: usize,
}

impl Default for StationMonitor {
    fn default() -> Self {
        StationMonitor {
            enabled: true,
            weight: 0.1,
            max_bias: 1.5,
            max_std: 2.0,
            max_reject_rate: 0.5,
            cycles: 5,
            min_reports: 50,
            max_repeats: 3,
            cusum_k: 1.0,
            cusum_h: 8.0,
            rehabilitate_cycles: 40,
            neighbours: 4,
        }
    }
}

/// Why and since when a station is blacklisted automatically.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Blacklisting {
    /// First cycle whose reports were excluded.
    pub since_cycle: u64,
    /// `stuck`, `shift`, `bias`, `noise` or `rejections`.
    pub reason: String,
    /// For `shift` and `bias`: where the shift began, Page's estimate of the change point (the
    /// first cycle of the run in which the alarming CUSUM sum stayed above 0). The caller may
    /// re-analyse the cycles since then without the station.
    #[serde(default)]
    pub onset: Option<u64>,
}

/// One station's running statistics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StationStats {
    /// Cycles with a report.
    pub reports: u64,
    /// Cycles with at least one report that passed the background check (feed the bias).
    pub accepted_reports: u64,
    /// Running mean of the normalised departure z of accepted reports (bias in units of σ_d).
    pub mean_z: f64,
    /// Running mean of z² of accepted reports.
    pub mean_z2: f64,
    /// Running share of the station's observations that the background check rejected.
    pub reject_rate: f64,
    /// Page's upper CUSUM of the station's per-cycle departure u = Σᵢ zᵢ / √n over its n accepted
    /// observations (≈ N(0, 1) for a good station): S⁺ ← max(0, S⁺ + u − k), from its
    /// `min_reports`-th report on.
    pub cusum_hi: f64,
    /// The lower CUSUM, S⁻ ← max(0, S⁻ − u − k).
    pub cusum_lo: f64,
    /// The first cycle of the current run of S⁺ > 0 (0 when S⁺ = 0).
    pub cusum_hi_since: u64,
    /// The first cycle of the current run of S⁻ > 0.
    pub cusum_lo_since: u64,
    /// Consecutive cycles past a threshold.
    pub over: u32,
    /// Consecutive cycles inside half the thresholds (for rehabilitation).
    pub good: u32,
    /// The last cycle with a report.
    pub last_cycle: u64,
    /// Set while the station is blacklisted automatically.
    pub blacklisted: Option<Blacklisting>,
    /// The values of its last report (persistence check).
    pub last_values: Vec<f64>,
    /// Consecutive reports equal to the one before.
    pub repeats: u32,
}

impl StationStats {
    /// Running standard deviation of z.
    pub fn std_z(&self) -> f64 {
        (self.mean_z2 - self.mean_z * self.mean_z).max(0.0).sqrt()
    }
}

/// A station's reports of one cycle: its observations' normalised departures and whether the
/// background check rejected each (whatever the blacklist says).
#[derive(Clone, Debug, PartialEq)]
pub struct StationReport {
    /// Station id.
    pub station: String,
    /// (z, rejected) per observation.
    pub obs: Vec<(f64, bool)>,
    /// The reported values, in message order (persistence check).
    pub values: Vec<f64>,
}

/// What the monitor says of a station.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StationStatus {
    /// Inside the thresholds.
    Ok,
    /// Past a threshold for fewer than W cycles.
    Watch,
    /// Blacklisted by the monitor.
    Blacklisted,
    /// Blacklisted by the operator (config).
    OperatorBlacklisted,
}

/// Every station's statistics: the monitor's persistent state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorState {
    /// By station id.
    pub stations: BTreeMap<String, StationStats>,
}

impl StationMonitor {
    /// Check the parameters; errors name the fix.
    pub fn validate(&self) -> Result<(), FilterError> {
        let bad = |m: String| Err(FilterError::InvalidParameter(m));
        if !(self.weight > 0.0 && self.weight <= 1.0) {
            return bad(format!(
                "monitor.weight must lie in (0, 1] (0.05-0.2 typical), got {}",
                self.weight
            ));
        }
        if !(self.max_bias.is_finite() && self.max_bias > 0.0) {
            return bad(format!(
                "monitor.max_bias must be a finite number > 0 (in σ_d; 1-2 typical), got {}",
                self.max_bias
            ));
        }
        if !(self.max_std.is_finite() && self.max_std > 1.0) {
            return bad(format!("monitor.max_std must be a finite number > 1 (a good station's is about 1; 2 typical), got {}", self.max_std));
        }
        if !(self.max_reject_rate > 0.0 && self.max_reject_rate <= 1.0) {
            return bad(format!(
                "monitor.max_reject_rate must lie in (0, 1], got {}",
                self.max_reject_rate
            ));
        }
        if self.cycles == 0 {
            return bad("monitor.cycles must be >= 1".into());
        }
        if !(self.cusum_k.is_finite() && self.cusum_k >= 0.0) {
            return bad(format!(
                "monitor.cusum_k must be a finite number >= 0 (in σ_d; 0.5-1.5 typical), got {}",
                self.cusum_k
            ));
        }
        if !(self.cusum_h.is_finite() && self.cusum_h >= 0.0) {
            return bad(format!(
                "monitor.cusum_h must be a finite number >= 0 (0 = off; 5-10 typical), got {}",
                self.cusum_h
            ));
        }
        Ok(())
    }

    /// Fold one cycle's reports into the statistics; returns the stations newly blacklisted and
    /// those taken back, in id order.
    pub fn update(
        &self,
        state: &mut MonitorState,
        cycle: u64,
        reports: &[StationReport],
    ) -> (Vec<String>, Vec<String>) {
        let (mut new, mut back) = (Vec::new(), Vec::new());
        if !self.enabled {
            return (new, back);
        }
        for r in reports {
            if r.obs.is_empty() {
                continue;
            }
            let s = state.stations.entry(r.station.clone()).or_default();
            s.reports += 1;
            s.last_cycle = cycle;
            let same = !r.values.is_empty()
                && r.values.len() == s.last_values.len()
                && r.values
                    .iter()
                    .zip(&s.last_values)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            s.repeats = if same { s.repeats + 1 } else { 0 };
            s.last_values.clone_from(&r.values);
            let stuck = self.max_repeats > 0 && s.repeats >= self.max_repeats;
            let lambda = |n: u64| self.weight.max(1.0 / n as f64);
            let rejected = r.obs.iter().filter(|(_, rej)| *rej).count() as f64 / r.obs.len() as f64;
            s.reject_rate += lambda(s.reports) * (rejected - s.reject_rate);
            let accepted: Vec<f64> = r
                .obs
                .iter()
                .filter(|(_, rej)| !*rej)
                .map(|(z, _)| *z)
                .collect();
            if !accepted.is_empty() {
                s.accepted_reports += 1;
                let n = accepted.len() as f64;
                let (mz, mz2) = (
                    accepted.iter().sum::<f64>() / n,
                    accepted.iter().map(|z| z * z).sum::<f64>() / n,
                );
                let l = lambda(s.accepted_reports);
                s.mean_z += l * (mz - s.mean_z);
                s.mean_z2 += l * (mz2 - s.mean_z2);
                if self.cusum_h > 0.0 && s.reports >= self.min_reports {
                    let u = (mz * n.sqrt()).clamp(-0.5 * self.cusum_h, 0.5 * self.cusum_h);
                    let (hi, lo) = (s.cusum_hi, s.cusum_lo);
                    s.cusum_hi = (hi + u - self.cusum_k).max(0.0);
                    s.cusum_lo = (lo - u - self.cusum_k).max(0.0);
                    s.cusum_hi_since = run_start(hi, s.cusum_hi, s.cusum_hi_since, cycle);
                    s.cusum_lo_since = run_start(lo, s.cusum_lo, s.cusum_lo_since, cycle);
                }
            }
            let shifted = self.cusum_h > 0.0 && s.cusum_hi.max(s.cusum_lo) > self.cusum_h;
            // Past 2h the evidence is conclusive; the cap lets a repaired sensor's sums fall back
            // under h/2 within (1.5 h)/k cycles, so that it can be taken back.
            s.cusum_hi = s.cusum_hi.min(2.0 * self.cusum_h);
            s.cusum_lo = s.cusum_lo.min(2.0 * self.cusum_h);
            let biased = s.accepted_reports > 0 && s.mean_z.abs() > self.max_bias;
            let noisy = s.accepted_reports > 1 && s.std_z() > self.max_std;
            let rejecting = s.reject_rate > self.max_reject_rate;
            if (biased || noisy || rejecting) && s.reports >= self.min_reports {
                s.over += 1;
            } else {
                s.over = 0;
            }
            let inside = !stuck
                && s.repeats == 0
                && (self.cusum_h == 0.0 || s.cusum_hi.max(s.cusum_lo) < 0.5 * self.cusum_h)
                && s.mean_z.abs() < 0.5 * self.max_bias
                && s.std_z() < 0.5 * (1.0 + self.max_std)
                && s.reject_rate < 0.5 * self.max_reject_rate;
            s.good = if inside { s.good + 1 } else { 0 };
            match &s.blacklisted {
                None if stuck || shifted || s.over >= self.cycles => {
                    let reason = if stuck {
                        "stuck"
                    } else if shifted {
                        "shift"
                    } else if rejecting {
                        "rejections"
                    } else if biased {
                        "bias"
                    } else {
                        "noise"
                    };
                    let onset = if s.cusum_hi >= s.cusum_lo {
                        s.cusum_hi_since
                    } else {
                        s.cusum_lo_since
                    };
                    s.blacklisted = Some(Blacklisting {
                        since_cycle: cycle + 1,
                        reason: reason.into(),
                        onset: (matches!(reason, "shift" | "bias") && onset > 0).then_some(onset),
                    });
                    s.good = 0;
                    new.push(r.station.clone());
                }
                Some(_) if self.rehabilitate_cycles > 0 && s.good >= self.rehabilitate_cycles => {
                    s.blacklisted = None;
                    s.over = 0;
                    back.push(r.station.clone());
                }
                _ => {}
            }
        }
        (new, back)
    }

    /// The operator's `clear`: forget these stations' statistics and automatic blacklisting.
    /// Returns those that were blacklisted.
    pub fn clear(&self, state: &mut MonitorState, stations: &[String]) -> Vec<String> {
        stations
            .iter()
            .filter(|id| {
                state
                    .stations
                    .remove(*id)
                    .is_some_and(|s| s.blacklisted.is_some())
            })
            .cloned()
            .collect()
    }

    /// A station's status, given the operator's blacklist.
    pub fn status(
        &self,
        state: &MonitorState,
        station: &str,
        operator_blacklist: &[String],
    ) -> StationStatus {
        if operator_blacklist.iter().any(|s| s == station) {
            return StationStatus::OperatorBlacklisted;
        }
        match state.stations.get(station) {
            Some(s) if s.blacklisted.is_some() => StationStatus::Blacklisted,
            Some(s) if s.over > 0 => StationStatus::Watch,
            _ => StationStatus::Ok,
        }
    }
}

/// The first cycle of a CUSUM's current positive run: `cycle` when it has just left 0, 0 when it
/// is back at 0.
fn run_start(before: f64, after: f64, since: u64, cycle: u64) -> u64 {
    match (before > 0.0, after > 0.0) {
        (_, false) => 0,
        (false, true) => cycle,
        (true, true) => since,
    }
}

impl MonitorState {
    /// Whether the monitor has blacklisted this station.
    pub fn is_blacklisted(&self, station: &str) -> bool {
        self.stations
            .get(station)
            .is_some_and(|s| s.blacklisted.is_some())
    }

    /// Stations blacklisted by the monitor.
    pub fn blacklisted(&self) -> Vec<&str> {
        self.stations
            .iter()
            .filter(|(_, s)| s.blacklisted.is_some())
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report without values (no persistence check).
    fn report(station: &str, z: f64, rejected: bool) -> StationReport {
        StationReport {
            station: station.into(),
            obs: vec![(z, rejected)],
            values: Vec::new(),
        }
    }

    #[test]
    fn running_statistics_are_means_then_exponential() {
        let m = StationMonitor::default();
        let mut st = MonitorState::default();
        for (k, z) in [1.0, 2.0, 3.0].iter().enumerate() {
            m.update(&mut st, k as u64 + 1, &[report("A", *z, false)]);
        }
        let s = &st.stations["A"];
        assert!(
            (s.mean_z - 2.0).abs() < 1e-12,
            "plain mean while reports < 1/λ"
        );
        assert!((s.std_z() - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
        for k in 4..=10 {
            m.update(&mut st, k, &[report("A", 2.0, false)]);
        }
        // Ten reports: still the plain mean (λ = 1/10 at the tenth); the eleventh is weighted λ.
        assert!((st.stations["A"].mean_z - 2.0).abs() < 1e-12);
        m.update(&mut st, 11, &[report("A", 12.0, false)]);
        assert!((st.stations["A"].mean_z - 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_biased_station_is_blacklisted_after_w_cycles_a_noisy_one_is_not() {
        let m = StationMonitor {
            min_reports: 10,
            ..Default::default()
        };
        let mut st = MonitorState::default();
        let mut blacklisted_at = None;
        for k in 1..=30u64 {
            // A: +2 σ_d bias; B: alternating ±1 (unbiased, std 1); C: one gross error at cycle 3.
            let reports = [
                report("A", 2.0, false),
                report("B", if k % 2 == 0 { 1.0 } else { -1.0 }, false),
                report("C", 0.0, k == 3),
            ];
            let (new, _) = m.update(&mut st, k, &reports);
            if new.contains(&"A".to_string()) {
                blacklisted_at = Some(k);
            }
            assert!(
                !new.contains(&"B".to_string()) && !new.contains(&"C".to_string()),
                "cycle {k}: {new:?}"
            );
        }
        // Past the bias threshold from its first report, eligible from report 10, W = 5 cycles: 14.
        assert_eq!(blacklisted_at, Some(14));
        assert_eq!(
            st.stations["A"].blacklisted,
            Some(Blacklisting {
                since_cycle: 15,
                reason: "bias".into(),
                // The CUSUM of u = 2 has been positive since the station became eligible.
                onset: Some(10),
            })
        );
        assert_eq!(m.status(&st, "A", &[]), StationStatus::Blacklisted);
        assert_eq!(
            m.status(&st, "B", &["B".into()]),
            StationStatus::OperatorBlacklisted
        );
        assert_eq!(m.status(&st, "B", &[]), StationStatus::Ok);
        assert_eq!(
            m.clear(&mut st, &["A".into(), "Z".into()]),
            vec!["A".to_string()]
        );
        assert!(!st.is_blacklisted("A"));
    }

    #[test]
    fn a_sudden_shift_is_caught_by_the_cusum_after_h_over_delta_minus_k_cycles() {
        let m = StationMonitor {
            min_reports: 10,
            rehabilitate_cycles: 10,
            ..Default::default()
        };
        let (k, h) = (m.cusum_k, m.cusum_h);
        let mut st = MonitorState::default();
        let two = |z: f64| StationReport {
            station: "P".into(),
            obs: vec![(z, false), (z, false)],
            values: Vec::new(),
        };
        // 40 quiet cycles, then both observations shift by δ/√2 each: u = δ = 3 per cycle.
        let delta = 3.0;
        let mut flagged = None;
        for c in 1..=60u64 {
            let z = if c <= 40 { 0.0 } else { delta / 2f64.sqrt() };
            let (new, _) = m.update(&mut st, c, &[two(z)]);
            if !new.is_empty() {
                flagged.get_or_insert(c);
            }
        }
        // S⁺ grows by δ − k = 2 a cycle and must exceed h = 8 (strictly): the fifth shifted cycle.
        let cycles = (h / (delta - k)).floor() as u64 + 1;
        assert_eq!(flagged, Some(40 + cycles));
        let b = st.stations["P"].blacklisted.clone().unwrap();
        assert_eq!(
            (b.reason.as_str(), b.since_cycle),
            ("shift", 40 + cycles + 1)
        );
        assert_eq!(
            b.onset,
            Some(41),
            "the change point is the first shifted cycle"
        );
        // The running mean (λ = 0.1) is still far below max_bias then: only the CUSUM caught it.
        let mut ewma = MonitorState::default();
        let no_cusum = StationMonitor {
            cusum_h: 0.0,
            ..m.clone()
        };
        for c in 1..=(40 + cycles) {
            let z = if c <= 40 { 0.0 } else { delta / 2f64.sqrt() };
            assert!(no_cusum.update(&mut ewma, c, &[two(z)]).0.is_empty());
        }
        // The sums are capped at 2h: fixed at cycle 61, the station is back inside h/2 after
        // (2h − h/2)/k = 12 cycles and taken back rehabilitate_cycles later.
        let mut back_at = None;
        for c in 61..=120u64 {
            let (_, back) = m.update(&mut st, c, &[two(0.0)]);
            if !back.is_empty() {
                back_at.get_or_insert(c);
            }
        }
        assert!(st.stations["P"].cusum_hi < 0.5 * h);
        let rejoin = (1.5 * h / k).ceil() as u64 + 1; // first cycle with S⁺ < h/2 (strictly)
        assert_eq!(
            back_at,
            Some(60 + rejoin + u64::from(m.rehabilitate_cycles) - 1)
        );
    }

    #[test]
    fn one_gross_departure_is_at_most_half_the_cusum_evidence() {
        let m = StationMonitor {
            min_reports: 1,
            ..Default::default()
        };
        let mut st = MonitorState::default();
        m.update(&mut st, 1, &[report("G", 40.0, false)]);
        assert_eq!(st.stations["G"].cusum_hi, 0.5 * m.cusum_h - m.cusum_k);
        assert_eq!(st.stations["G"].blacklisted, None);
    }

    #[test]
    fn a_station_rejected_every_cycle_is_blacklisted_and_taken_back_once_fixed() {
        let m = StationMonitor {
            rehabilitate_cycles: 10,
            min_reports: 10,
            ..Default::default()
        };
        let mut st = MonitorState::default();
        let mut events = Vec::new();
        for k in 1..=80u64 {
            let rejected = k <= 20;
            let (new, back) = m.update(
                &mut st,
                k,
                &[report("S", if rejected { 30.0 } else { 0.1 }, rejected)],
            );
            events.extend(new.into_iter().map(|s| (k, s, "in")));
            events.extend(back.into_iter().map(|s| (k, s, "out")));
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!((events[0].0, events[0].2), (14, "in"));
        assert_eq!(st.stations["S"].blacklisted, None);
        assert_eq!(events[1].2, "out");
        // Rejections were never part of the bias: the mean is that of the accepted reports.
        assert!((st.stations["S"].mean_z - 0.1).abs() < 1e-12);
    }

    #[test]
    fn a_station_repeating_its_values_is_stuck_after_max_repeats() {
        let m = StationMonitor::default();
        let mut st = MonitorState::default();
        let rep = |_k: u64, v: f64| StationReport {
            station: "F".into(),
            obs: vec![(0.3, false), (-0.2, false)],
            values: vec![v, 1.5],
        };
        // Changing values for 5 cycles: fine; then frozen at 7.25 from cycle 6 on.
        let mut at = None;
        for k in 1..=12u64 {
            let v = if k <= 5 { k as f64 } else { 7.25 };
            let (new, _) = m.update(&mut st, k, &[rep(k, v)]);
            if !new.is_empty() {
                at.get_or_insert(k);
            }
        }
        // Cycle 6 is the first frozen report; cycles 7, 8, 9 repeat it: the third repeat is cycle 9.
        assert_eq!(at, Some(9));
        assert_eq!(
            st.stations["F"]
                .blacklisted
                .as_ref()
                .map(|b| b.reason.as_str()),
            Some("stuck")
        );
        // No value list, no persistence check.
        let mut st = MonitorState::default();
        for k in 1..=12u64 {
            assert!(m
                .update(&mut st, k, &[report("G", 0.1, false)])
                .0
                .is_empty());
        }
        // Off with max_repeats = 0.
        let off = StationMonitor {
            max_repeats: 0,
            ..Default::default()
        };
        let mut st = MonitorState::default();
        for k in 1..=12u64 {
            assert!(off.update(&mut st, k, &[rep(k, 7.25)]).0.is_empty());
        }
    }
}
