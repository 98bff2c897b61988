//! # Metrics (DESIGN §9) and logging
//!
//! Every metric is named here, with prefix `assimd_`, and described for Prometheus. The exporter is
//! `metrics-exporter-prometheus` serving `GET /metrics` on `[metrics].listen`. Histograms have
//! explicit buckets so they export as histograms, not summaries. [`ALL`] is the authoritative list:
//! the end-to-end test checks that a scrape exports exactly these families, and that the Grafana
//! dashboard and the alert rules under `configs/` use no other name.

use anyhow::{Context, Result};
use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use std::net::SocketAddr;

/// Observation messages received, by modality (`station`, `satellite`, `truth`, `unknown`).
pub const OBS_RECEIVED: &str = "assimd_obs_received_total";
/// Messages rejected, by reason (the 13 labels of `wire::RejectReason`).
pub const OBS_REJECTED: &str = "assimd_obs_rejected_total";
/// Redelivered messages dropped by id.
pub const OBS_DUPLICATES: &str = "assimd_obs_duplicates_total";
/// Messages of an already closed window, dropped.
pub const OBS_LATE: &str = "assimd_obs_late_total";
/// Messages written to the journal.
pub const OBS_JOURNALED: &str = "assimd_obs_journaled_total";
/// Journaled messages consumed by committed cycles (assimilated or used for verification).
pub const OBS_ASSIMILATED: &str = "assimd_obs_assimilated_total";
/// Scalar observations used per cycle, by filter and modality.
pub const OBS_USED: &str = "assimd_obs_used";
/// Scalar observations of withheld (verification-only) stations in the last cycle.
pub const OBS_WITHHELD: &str = "assimd_obs_withheld";
/// Analysis RMSE of the ensemble mean, by filter and `against` (`withheld` or `truth`).
pub const ANALYSIS_RMSE: &str = "assimd_analysis_rmse";
/// Background (forecast) RMSE, same labels.
pub const BACKGROUND_RMSE: &str = "assimd_background_rmse";
/// Analysis ensemble spread (RMS standard deviation), by filter.
pub const SPREAD: &str = "assimd_analysis_spread";
/// Spread over analysis RMSE, by filter and `against`: `truth` (state spread over the RMSE against
/// the truth) or `withheld` (observation-space spread, observation error included, over the RMSE
/// against the withheld stations; see `stats::obs_space_spread`). About 1 for a reliable ensemble;
/// far below 1 means an overconfident ensemble, the signature of filter divergence.
pub const SPREAD_SKILL: &str = "assimd_spread_skill_ratio";
/// Analysis CRPS against truth, by filter.
pub const CRPS: &str = "assimd_analysis_crps";
/// Mean of O-B, by filter and modality.
pub const OMB_MEAN: &str = "assimd_omb_mean";
/// RMS of O-B.
pub const OMB_RMS: &str = "assimd_omb_rms";
/// Mean of O-A.
pub const OMA_MEAN: &str = "assimd_oma_mean";
/// RMS of O-A.
pub const OMA_RMS: &str = "assimd_oma_rms";
/// Whole-cycle wall time.
pub const CYCLE_SECONDS: &str = "assimd_cycle_duration_seconds";
/// Phase wall time, by phase (`forecast`, `analysis`, `verify`, `commit`, `publish`) and filter.
pub const PHASE_SECONDS: &str = "assimd_phase_duration_seconds";
/// Journal batch (insert + flush) wall time.
pub const JOURNAL_SECONDS: &str = "assimd_journal_batch_duration_seconds";
/// Last committed cycle number.
pub const LAST_CYCLE: &str = "assimd_last_cycle";
/// Windows closed (by observation time) but not yet analysed and committed: the engine's backlog.
pub const CYCLES_PENDING: &str = "assimd_cycles_pending";
/// Length of one cycle (the observation window) in model time, seconds: 21600 for l96, 43200 for
/// qg2l. Alert rules compare the time since the last commit with it.
pub const CYCLE_LENGTH: &str = "assimd_cycle_length_seconds";
/// Valid time of the last committed cycle, Unix seconds.
pub const LAST_CYCLE_TIME: &str = "assimd_last_cycle_valid_time_seconds";
/// Wall time when the last cycle was committed, Unix seconds.
pub const LAST_COMMIT_TIME: &str = "assimd_last_commit_timestamp_seconds";
/// 1 while connected to the broker.
pub const MQTT_CONNECTED: &str = "assimd_mqtt_connected";
/// 1 once the subscriptions are in place on the current connection.
pub const MQTT_SUBSCRIBED: &str = "assimd_mqtt_subscribed";
/// 1 for the broker endpoint in use (or being tried), 0 for the other `mqtt.hosts`, label `endpoint`.
pub const MQTT_ENDPOINT: &str = "assimd_mqtt_endpoint";
/// Connection losses and failed connection attempts.
pub const MQTT_ERRORS: &str = "assimd_mqtt_connection_errors_total";
/// Connections on which the broker no longer had the daemon's persistent session.
pub const MQTT_SESSIONS_LOST: &str = "assimd_mqtt_sessions_lost_total";
/// Topic filters the broker refused in a SUBACK (retried until granted).
pub const MQTT_SUBSCRIBE_FAILURES: &str = "assimd_mqtt_subscribe_failures_total";
/// Store size on disk, bytes.
pub const STORE_BYTES: &str = "assimd_store_size_bytes";
/// 1 for the ONNX Runtime execution provider in use, label `provider`.
pub const ORT_PROVIDER: &str = "assimd_ort_execution_provider";
/// Analyses that failed or diverged, by filter and reason: `error` (the analysis raised one; the
/// background was kept), `non_finite` (it produced NaN or infinities; the background was kept),
/// `divergence` (the divergence guard flagged the background; the filter restarted from
/// climatological draws).
pub const ANALYSIS_FAILURES: &str = "assimd_analysis_failures_total";
/// The `reason` labels of [`ANALYSIS_FAILURES`].
pub const FAILURE_REASONS: [&str; 3] = ["error", "non_finite", "divergence"];
/// Observations left out by quality control, by modality and reason (`background_check`,
/// `blacklisted`). They are journaled and kept with their reason (`qc` tree).
pub const QC_REJECTED: &str = "assimd_qc_rejected_total";
/// Observations assimilated with an inflated error by the Huber check, by modality.
pub const QC_DOWNWEIGHTED: &str = "assimd_qc_downweighted_total";
/// Stations whose reports are left out now (the operator's blacklist and the monitor's).
pub const STATIONS_BLACKLISTED: &str = "assimd_stations_blacklisted";
/// Automatic blacklistings by the station monitor.
pub const STATION_BLACKLISTINGS: &str = "assimd_station_blacklistings_total";
/// The divergence guard's statistic median(z²)/median(χ²₁) of each filter's background in the last
/// cycle: about 1 for a sound filter; the guard flags above `qc.divergence.max_ratio`.
pub const INNOVATION_RATIO: &str = "assimd_innovation_ratio";

/// Every metric family the daemon exports (base names: a histogram's series add `_bucket`, `_sum`
/// and `_count`). All of them are present once a cycle with both filters and a truth has run.
pub const ALL: &[&str] = &[
    OBS_RECEIVED,
    OBS_REJECTED,
    OBS_DUPLICATES,
    OBS_LATE,
    OBS_JOURNALED,
    OBS_ASSIMILATED,
    OBS_USED,
    OBS_WITHHELD,
    ANALYSIS_RMSE,
    BACKGROUND_RMSE,
    SPREAD,
    SPREAD_SKILL,
    CRPS,
    OMB_MEAN,
    OMB_RMS,
    OMA_MEAN,
    OMA_RMS,
    CYCLE_SECONDS,
    PHASE_SECONDS,
    JOURNAL_SECONDS,
    LAST_CYCLE,
    CYCLES_PENDING,
    CYCLE_LENGTH,
    LAST_CYCLE_TIME,
    LAST_COMMIT_TIME,
    MQTT_CONNECTED,
    MQTT_SUBSCRIBED,
    MQTT_ENDPOINT,
    MQTT_ERRORS,
    MQTT_SESSIONS_LOST,
    MQTT_SUBSCRIBE_FAILURES,
    STORE_BYTES,
    ORT_PROVIDER,
    ANALYSIS_FAILURES,
    QC_REJECTED,
    QC_DOWNWEIGHTED,
    STATIONS_BLACKLISTED,
    STATION_BLACKLISTINGS,
    INNOVATION_RATIO,
];

/// The metric family a series name belongs to: the name itself, or for a histogram's `_bucket`,
/// `_sum` and `_count` series the histogram's name. `None` when it is not one of [`ALL`].
pub fn family_of(series: &str) -> Option<&'static str> {
    ALL.iter().copied().find(|&f| {
        series == f
            || (HISTOGRAMS.contains(&f)
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| series.strip_prefix(f) == Some(*s)))
    })
}

/// The histograms among [`ALL`].
pub const HISTOGRAMS: &[&str] = &[CYCLE_SECONDS, PHASE_SECONDS, JOURNAL_SECONDS];

/// Install the Prometheus recorder and its HTTP listener (within a tokio runtime).
pub fn install(listen: Option<SocketAddr>) -> Result<()> {
    let mut b = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("duration_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ],
        )
        .context("histogram buckets")?;
    match listen {
        Some(addr) => {
            b = b.with_http_listener(addr);
            b.install().with_context(|| {
                format!("starting the metrics endpoint on {addr} (is the port taken?)")
            })?;
        }
        None => {
            // No endpoint: still record (the demo reads nothing back, but the code paths are the same).
            b.install_recorder()
                .context("installing the metrics recorder")?;
        }
    }
    describe();
    Ok(())
}

/// Every metric: its kind and help text (`# HELP`).
const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (OBS_RECEIVED, Kind::Counter, "Observation messages received, by modality"),
    (OBS_REJECTED, Kind::Counter, "Messages rejected, by reason"),
    (OBS_DUPLICATES, Kind::Counter, "Redelivered messages dropped by id"),
    (OBS_LATE, Kind::Counter, "Messages for an already closed window, dropped"),
    (OBS_JOURNALED, Kind::Counter, "Messages written to the observation journal"),
    (OBS_ASSIMILATED, Kind::Counter, "Journaled messages consumed by committed cycles"),
    (OBS_USED, Kind::Gauge, "Scalar observations used by the last cycle, by filter and modality"),
    (ANALYSIS_RMSE, Kind::Gauge, "Analysis RMSE of the ensemble mean, by filter and reference"),
    (BACKGROUND_RMSE, Kind::Gauge, "Background RMSE of the ensemble mean, by filter and reference"),
    (SPREAD, Kind::Gauge, "Analysis ensemble spread"),
    (SPREAD_SKILL, Kind::Gauge, "Analysis spread over analysis RMSE, against truth or withheld stations"),
    (OBS_WITHHELD, Kind::Gauge, "Scalar observations of withheld verification stations in the last cycle"),
    (CYCLES_PENDING, Kind::Gauge, "Closed observation windows not yet analysed and committed"),
    (CYCLE_LENGTH, Kind::Gauge, "Cycle length in model time"),
    (CRPS, Kind::Gauge, "Analysis CRPS against truth"),
    (OMB_MEAN, Kind::Gauge, "Mean observation minus background, by filter and modality"),
    (OMB_RMS, Kind::Gauge, "RMS observation minus background, by filter and modality"),
    (OMA_MEAN, Kind::Gauge, "Mean observation minus analysis, by filter and modality"),
    (OMA_RMS, Kind::Gauge, "RMS observation minus analysis, by filter and modality"),
    (CYCLE_SECONDS, Kind::Seconds, "Wall time of a whole cycle"),
    (PHASE_SECONDS, Kind::Seconds, "Wall time of a cycle phase, by phase and filter"),
    (JOURNAL_SECONDS, Kind::Seconds, "Wall time of a journal batch (insert and flush)"),
    (LAST_CYCLE, Kind::Gauge, "Last committed cycle number"),
    (LAST_CYCLE_TIME, Kind::Gauge, "Valid time of the last committed cycle"),
    (LAST_COMMIT_TIME, Kind::Gauge, "Wall time of the last commit"),
    (MQTT_CONNECTED, Kind::Gauge, "1 while connected to the broker"),
    (MQTT_SUBSCRIBED, Kind::Gauge, "1 once subscribed on the current broker connection"),
    (MQTT_ENDPOINT, Kind::Gauge, "1 for the broker endpoint (mqtt.hosts) in use or being tried, 0 for the others"),
    (MQTT_ERRORS, Kind::Counter, "Broker connection losses and failed attempts"),
    (MQTT_SESSIONS_LOST, Kind::Counter, "Connections on which the broker no longer had this client's persistent session: QoS 1 messages it held for the daemon may be lost"),
    (MQTT_SUBSCRIBE_FAILURES, Kind::Counter, "Topic filters the broker refused in a SUBACK; retried until granted, and assimd_mqtt_subscribed stays 0 meanwhile"),
    (STORE_BYTES, Kind::Gauge, "State store size on disk"),
    (ORT_PROVIDER, Kind::Gauge, "ONNX Runtime execution provider in use (value 1)"),
    (ANALYSIS_FAILURES, Kind::Counter, "Analyses that failed (background kept) or diverged (restarted from climatology), by filter and reason"),
    (QC_REJECTED, Kind::Counter, "Observations left out by quality control, by modality and reason"),
    (QC_DOWNWEIGHTED, Kind::Counter, "Observations assimilated with a Huber-inflated error, by modality"),
    (STATIONS_BLACKLISTED, Kind::Gauge, "Stations whose reports are left out now (operator and monitor)"),
    (STATION_BLACKLISTINGS, Kind::Counter, "Automatic blacklistings by the station monitor"),
    (INNOVATION_RATIO, Kind::Gauge, "median(z^2)/median(chi2_1) of each filter's background in the last cycle"),
];

/// A metric's kind.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    /// A histogram of seconds.
    Seconds,
}

fn describe() {
    for &(name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Seconds => describe_histogram!(name, Unit::Seconds, help),
        }
    }
    for m in ["station", "satellite"] {
        for r in crate::qc::QcReason::ALL {
            metrics::counter!(QC_REJECTED, "modality" => m, "reason" => r.as_str()).absolute(0);
        }
        metrics::counter!(QC_DOWNWEIGHTED, "modality" => m).absolute(0);
    }
    metrics::counter!(STATION_BLACKLISTINGS).absolute(0);
    metrics::gauge!(STATIONS_BLACKLISTED).set(0.0);
    // Pre-register the rejection counters so that every reason shows, at 0, from the start.
    for r in crate::wire::RejectReason::ALL {
        metrics::counter!(OBS_REJECTED, "reason" => r.as_str()).absolute(0);
    }
    // And the received counters of the observing modalities, so that "no observations" alerts see
    // a flat series rather than none.
    for m in ["station", "satellite"] {
        metrics::counter!(OBS_RECEIVED, "modality" => m).absolute(0);
    }
    for c in [
        OBS_DUPLICATES,
        OBS_LATE,
        OBS_JOURNALED,
        OBS_ASSIMILATED,
        MQTT_ERRORS,
        MQTT_SESSIONS_LOST,
        MQTT_SUBSCRIBE_FAILURES,
    ] {
        metrics::counter!(c).absolute(0);
    }
    metrics::gauge!(MQTT_CONNECTED).set(0.0);
    metrics::gauge!(MQTT_SUBSCRIBED).set(0.0);
    metrics::gauge!(CYCLES_PENDING).set(0.0);
}

/// Series that must exist from the start for the alert rules' `increase()` to see their first
/// increment: the failure counter of each filter.
pub fn register_filters(names: &[&'static str]) {
    for &f in names {
        for r in FAILURE_REASONS {
            metrics::counter!(ANALYSIS_FAILURES, "filter" => f, "reason" => r).absolute(0);
        }
    }
}

/// The daemon's log filter: info, with the broker libraries' chatter off (rumqttd logs every
/// client disconnect as an error).
pub const DEFAULT_LOG: &str = "info,rumqttd=off,rumqttc=warn,sled=warn";

/// Log to stderr (journald adds its own timestamps); `RUST_LOG` overrides the level.
/// `default` is the filter when `RUST_LOG` is unset, e.g. [`DEFAULT_LOG`].
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_unique_prefixed_and_histogram_series_map_to_them() {
        let set: std::collections::HashSet<_> = ALL.iter().collect();
        assert_eq!(set.len(), ALL.len(), "a metric is listed twice");
        assert!(ALL.iter().all(|n| n.starts_with("assimd_")));
        assert_eq!(
            family_of("assimd_phase_duration_seconds_bucket"),
            Some(PHASE_SECONDS)
        );
        assert_eq!(
            family_of("assimd_cycle_duration_seconds_count"),
            Some(CYCLE_SECONDS)
        );
        assert_eq!(family_of("assimd_cycle_length_seconds"), Some(CYCLE_LENGTH));
        assert_eq!(
            family_of("assimd_cycle_length_seconds_count"),
            None,
            "a gauge has no _count series"
        );
        assert_eq!(family_of("assimd_analysis_rmse_total"), None);
    }
}
