//! # The cycle summary
//!
//! One typed record per committed cycle, built by the engine and shared by everything that reads
//! it: the store keeps it (`cycles` tree, JSON), the publisher sends one [`FilterReport`] per
//! filter on `{prefix}/analysis/{filter}/summary`, the demo prints it, `assimd plot skill` and
//! `assimd state inspect` read it back. Scores that do not exist (no truth in live operation, no
//! withheld station) are `null`.

use crate::qc::ModalityCounts;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A committed cycle. Fields missing from a store written by an older version read as defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CycleSummary {
    /// The cycle number.
    pub cycle: u64,
    /// Its valid time (end of the window), RFC 3339.
    pub time: String,
    /// Messages journaled for the window.
    pub messages: u64,
    /// Observations assimilated per modality, and the withheld ones used for verification.
    pub obs: ObsCounts,
    /// Whether the truth was known (simulation).
    pub truth: bool,
    /// Quality control of the window.
    pub qc: QcSummary,
    /// Per filter (`letkf`, `score`).
    pub filters: BTreeMap<String, FilterSummary>,
}

/// Observation counts of a cycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObsCounts {
    /// Station values assimilated.
    pub station: usize,
    /// Satellite footprints assimilated.
    pub satellite: usize,
    /// Withheld station values (verification only).
    pub withheld: usize,
}

/// Quality control of a cycle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QcSummary {
    /// Station counts.
    pub station: ModalityCounts,
    /// Satellite counts.
    pub satellite: ModalityCounts,
    /// Stations blacklisted (operator and automatic) after the cycle.
    pub stations_blacklisted: Vec<String>,
    /// Blacklisted by the monitor in this cycle.
    pub newly_blacklisted: Vec<String>,
    /// Taken back by the monitor in this cycle.
    pub rehabilitated: Vec<String>,
    /// When a newly blacklisted station's shift began in memory: the cycle whose analysis the
    /// filters were re-run from without it (`qc.replay_cycles`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed_from: Option<u64>,
}

/// Assimilated counts per modality.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObsUsed {
    /// Station values.
    pub station: usize,
    /// Satellite footprints.
    pub satellite: usize,
}

/// Observation-minus-background and observation-minus-analysis statistics of one modality.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Innovations {
    /// Observations.
    pub count: usize,
    /// Mean of y − H(x̄ᵇ).
    pub omb_mean: f64,
    /// RMS of y − H(x̄ᵇ).
    pub omb_rms: f64,
    /// Mean of y − H(x̄ᵃ).
    pub oma_mean: f64,
    /// RMS of y − H(x̄ᵃ).
    pub oma_rms: f64,
}

/// One filter's cycle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilterSummary {
    /// Observations it assimilated.
    pub obs_used: ObsUsed,
    /// Analysis RMSE against the truth.
    pub rmse_a_truth: Option<f64>,
    /// Background RMSE against the truth.
    pub rmse_f_truth: Option<f64>,
    /// Analysis RMSE against the withheld stations.
    pub rmse_a_withheld: Option<f64>,
    /// Background RMSE against the withheld stations.
    pub rmse_f_withheld: Option<f64>,
    /// Analysis spread.
    pub spread_a: Option<f64>,
    /// Analysis CRPS against the truth.
    pub crps_a: Option<f64>,
    /// The spread the analysis predicts at the withheld stations, observation error included.
    pub spread_a_withheld: Option<f64>,
    /// Innovation statistics per modality (`station`, `satellite`).
    pub innovations: BTreeMap<String, Innovations>,
    /// Why the analysis failed (the background, rolled back or restarted state was kept).
    pub analysis_failed: Option<String>,
    /// `divergence`, `error` or `non_finite`.
    pub failure_reason: Option<String>,
    /// Wall-clock seconds of the filter's forecast, analysis and verification.
    pub seconds: f64,
}

/// What `{prefix}/analysis/{filter}/summary` carries: the cycle's common fields and the filter's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FilterReport {
    /// The cycle number.
    pub cycle: u64,
    /// Valid time.
    pub time: String,
    /// The filter.
    pub filter: String,
    /// Messages journaled for the window.
    pub messages: u64,
    /// Observation counts.
    pub obs: ObsCounts,
    /// Quality control.
    pub qc: QcSummary,
    /// Whether the truth was known.
    pub truth: bool,
    /// The filter's scores.
    #[serde(flatten)]
    pub scores: FilterSummary,
}

/// `Some(v)` for a finite score, `None` (JSON `null`) otherwise.
pub fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl CycleSummary {
    /// The report of one filter, `None` if it did not run.
    pub fn report(&self, filter: &str) -> Option<FilterReport> {
        Some(FilterReport {
            cycle: self.cycle,
            time: self.time.clone(),
            filter: filter.to_string(),
            messages: self.messages,
            obs: self.obs,
            qc: self.qc.clone(),
            truth: self.truth,
            scores: self.filters.get(filter)?.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_the_published_layout() {
        let mut filters = BTreeMap::new();
        filters.insert(
            "letkf".to_string(),
            FilterSummary {
                rmse_a_truth: Some(0.2),
                ..Default::default()
            },
        );
        let s = CycleSummary {
            cycle: 3,
            time: "2026-01-01T00:18:00Z".into(),
            messages: 7,
            obs: ObsCounts::default(),
            truth: true,
            qc: QcSummary::default(),
            filters,
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<CycleSummary>(&text).unwrap(), s);
        let r = serde_json::to_value(s.report("letkf").unwrap()).unwrap();
        // The filter's fields sit beside the cycle's, as subscribers read them.
        assert_eq!(r["rmse_a_truth"], 0.2);
        assert_eq!(r["filter"], "letkf");
        assert!(r["rmse_f_truth"].is_null());
        assert!(s.report("score").is_none());
    }
}
