//! # Wire formats
//!
//! Observation messages are GeoJSON Features (DESIGN §4), the convention of WMO WIS2 notifications:
//! a station report is a `Point` feature with a list of `{var, value, sigma}`, a satellite granule a
//! `MultiPoint` feature with one value per footprint centre. [`parse`] turns raw bytes into a
//! [`Feature`]; [`validate`] checks it against the testbed's state space and turns it into
//! [`Observation`]s. Every failure names a [`RejectReason`], the label of the rejection counter.
//! GeoJSON allows foreign members, so unknown fields are ignored; known fields must have their types.
//!
//! [`Checks::decode`] is what ingest runs, in this order:
//! 1. the topic ([`parse_topic`]): `obs/station/{network}/{station}` or
//!    `obs/satellite/{platform}/{instrument}` below the prefix, exactly four levels, none empty,
//!    the network one of `ingest.networks` when that list is set;
//! 2. the payload's size and schema ([`parse`]) and its contents ([`validate`]);
//! 3. the binding of topic and payload ([`bind`]): a `Point` on a station topic naming that
//!    station, a `MultiPoint` on a satellite topic naming that platform and instrument. Brokers
//!    authorise publishers by topic, so without it any station could speak for any other;
//! 4. the values ([`ValueChecks`]): a documented missing-value code (−9999 and the like, written by
//!    dataloggers for "no reading") is `missing_value`; a value outside its variable's physical
//!    range is `out_of_range`. NaN and infinities were already `non_finite` in step 2.
//!
//! A message fails as a whole: one bad footprint rejects its granule, which is dead-lettered
//! unchanged for the network operator to see.

use assimd_filter::obs::{Footprint, Modality, Observation};
use assimd_filter::StateSpace;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why a message was rejected; `as_str` is the metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum RejectReason {
    /// Not JSON at all, or truncated.
    MalformedJson,
    /// JSON, but not the schema: missing fields, wrong types, wrong GeoJSON type.
    Schema,
    /// A number is NaN or infinite.
    NonFinite,
    /// An error σ is not strictly positive.
    BadSigma,
    /// A position lies outside the model domain (or is not a valid latitude/longitude).
    OutOfDomain,
    /// The message, or one of its lists, is larger than the configured limits.
    Oversized,
    /// The observation time is not an RFC 3339 UTC time.
    BadTime,
    /// The observation time lies too far in the future.
    FutureTime,
    /// The variable is not observable in this testbed.
    UnknownVariable,
    /// A granule's values and coordinates differ in number, or a list is empty.
    LengthMismatch,
    /// The topic does not have the documented levels, names another station, platform or
    /// instrument than the payload, carries the other geometry, or names a network not in
    /// `ingest.networks`.
    TopicMismatch,
    /// A value is one of the configured missing-value codes (`ingest.missing_values`).
    MissingValue,
    /// A value lies outside its variable's physical range (`ingest.ranges`).
    OutOfRange,
}

impl RejectReason {
    /// Every reason, for pre-registering counters.
    pub const ALL: [RejectReason; 13] = [
        RejectReason::MalformedJson,
        RejectReason::Schema,
        RejectReason::NonFinite,
        RejectReason::BadSigma,
        RejectReason::OutOfDomain,
        RejectReason::Oversized,
        RejectReason::BadTime,
        RejectReason::FutureTime,
        RejectReason::UnknownVariable,
        RejectReason::LengthMismatch,
        RejectReason::TopicMismatch,
        RejectReason::MissingValue,
        RejectReason::OutOfRange,
    ];

    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::Schema => "schema",
            RejectReason::NonFinite => "non_finite",
            RejectReason::BadSigma => "bad_sigma",
            RejectReason::OutOfDomain => "out_of_domain",
            RejectReason::Oversized => "oversized",
            RejectReason::BadTime => "bad_time",
            RejectReason::FutureTime => "future_time",
            RejectReason::UnknownVariable => "unknown_variable",
            RejectReason::LengthMismatch => "length_mismatch",
            RejectReason::TopicMismatch => "topic_mismatch",
            RejectReason::MissingValue => "missing_value",
            RejectReason::OutOfRange => "out_of_range",
        }
    }
}

/// A rejection: the reason (counted) and a human detail (logged, rate-limited).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct Reject {
    /// Counter label.
    pub reason: RejectReason,
    /// What exactly was wrong.
    pub detail: String,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Reject {
    Reject {
        reason,
        detail: detail.into(),
    }
}

/// Size limits of incoming messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted payload in bytes: a station report is ~300 B, a granule of 1,000
    /// footprints ~40 kB.
    pub max_bytes: usize,
    /// Most observations in one station report.
    pub max_station_values: usize,
    /// Most footprints in one granule.
    pub max_granule_values: usize,
    /// How far in the future (seconds, beyond the reference clock) an observation time may lie,
    /// for clock skew between datalogger and daemon.
    pub max_future_seconds: i64,
    /// Longest id, station, platform or instrument name.
    pub max_name_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 256 * 1024,
            max_station_values: 64,
            max_granule_values: 4096,
            max_future_seconds: 3600,
            max_name_len: 128,
        }
    }
}

/// A GeoJSON Feature: a station report or a satellite granule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Feature {
    /// `Point` geometry: a station report.
    Station(StationFeature),
    /// `MultiPoint` geometry: a satellite granule.
    Satellite(SatelliteFeature),
}

/// The literal GeoJSON type tag "Feature".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum FeatureTag {
    /// "Feature".
    Feature,
}

/// A station report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StationFeature {
    /// Always "Feature".
    #[serde(rename = "type")]
    pub kind: FeatureTag,
    /// Unique message id, e.g. `KXYZ/2026-11-22T12:00:00Z`; redelivery with the same id is dropped.
    pub id: String,
    /// The station's position.
    pub geometry: PointGeometry,
    /// The report.
    pub properties: StationProperties,
}

/// GeoJSON Point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointGeometry {
    /// Always "Point".
    #[serde(rename = "type")]
    pub kind: PointTag,
    /// lon, lat[, altitude m].
    pub coordinates: Vec<f64>,
}

/// The literal "Point".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PointTag {
    /// "Point".
    Point,
}

/// A station report's properties.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StationProperties {
    /// Station identifier.
    pub station: String,
    /// Observation time, RFC 3339 UTC.
    pub time: String,
    /// Reported values.
    pub observations: Vec<StationValue>,
}

/// One reported value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StationValue {
    /// Variable name.
    pub var: String,
    /// Value in the variable's unit.
    pub value: f64,
    /// Error standard deviation.
    pub sigma: f64,
}

/// A satellite granule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SatelliteFeature {
    /// Always "Feature".
    #[serde(rename = "type")]
    pub kind: FeatureTag,
    /// Unique message id, e.g. `sat1/2026-11-22T12:00:00Z/0001`.
    pub id: String,
    /// Footprint centres.
    pub geometry: MultiPointGeometry,
    /// The granule.
    pub properties: SatelliteProperties,
}

/// GeoJSON MultiPoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultiPointGeometry {
    /// Always "MultiPoint".
    #[serde(rename = "type")]
    pub kind: MultiPointTag,
    /// [[lon, lat], …].
    pub coordinates: Vec<Vec<f64>>,
}

/// The literal "MultiPoint".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum MultiPointTag {
    /// "MultiPoint".
    MultiPoint,
}

/// A granule's properties.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SatelliteProperties {
    /// Platform (satellite) name.
    pub platform: String,
    /// Instrument name.
    pub instrument: String,
    /// Observation time, RFC 3339 UTC.
    pub time: String,
    /// Observed variable.
    pub var: String,
    /// Footprint diameter in km.
    pub footprint_km: f64,
    /// Error σ of each footprint value.
    pub sigma: f64,
    /// values[i] is seen at coordinates[i].
    pub values: Vec<f64>,
}

/// Where a message came from: a station, or an instrument on a platform.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A station id.
    Station(String),
    /// (platform, instrument).
    Satellite(String, String),
}

/// A message that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidMessage {
    /// Message id (for de-duplication).
    pub id: String,
    /// Observation time.
    pub time: DateTime<Utc>,
    /// Who observed.
    pub source: Source,
    /// The observations, in message order.
    pub obs: Vec<Observation>,
}

/// Parse raw bytes into a feature. Checks only the size and the JSON schema.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Feature, Reject> {
    if bytes.len() > limits.max_bytes {
        return Err(reject(
            RejectReason::Oversized,
            format!("{} bytes > limit {}", bytes.len(), limits.max_bytes),
        ));
    }
    // Parse to a Value first so that syntax errors and schema errors are told apart.
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        // JSON has no NaN or Infinity, but Python's json module and many dataloggers write them:
        // call that what it is. Numbers beyond f64's range are refused by serde_json as well.
        let text = String::from_utf8_lossy(bytes);
        if e.to_string().contains("out of range")
            || text.contains("NaN")
            || text.contains("Infinity")
        {
            reject(RejectReason::NonFinite, e.to_string())
        } else {
            reject(RejectReason::MalformedJson, e.to_string())
        }
    })?;
    let geometry_type = value.pointer("/geometry/type").and_then(|t| t.as_str());
    let parsed = match geometry_type {
        Some("Point") => serde_json::from_value::<StationFeature>(value).map(Feature::Station),
        Some("MultiPoint") => {
            serde_json::from_value::<SatelliteFeature>(value).map(Feature::Satellite)
        }
        other => {
            return Err(reject(
                RejectReason::Schema,
                format!("geometry.type must be Point or MultiPoint, got {other:?}"),
            ))
        }
    };
    parsed.map_err(|e| reject(RejectReason::Schema, e.to_string()))
}

fn check_name(what: &str, s: &str, limits: &Limits) -> Result<(), Reject> {
    if s.is_empty() {
        return Err(reject(RejectReason::Schema, format!("{what} is empty")));
    }
    if s.len() > limits.max_name_len {
        return Err(reject(
            RejectReason::Oversized,
            format!("{what} is {} bytes > {}", s.len(), limits.max_name_len),
        ));
    }
    if s.chars().any(|c| c.is_control() || c == '+' || c == '#') {
        return Err(reject(
            RejectReason::Schema,
            format!("{what} contains control or MQTT wildcard characters"),
        ));
    }
    Ok(())
}

fn check_time(
    s: &str,
    now: Option<DateTime<Utc>>,
    limits: &Limits,
) -> Result<DateTime<Utc>, Reject> {
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| reject(RejectReason::BadTime, format!("time {s:?}: {e}")))?
        .with_timezone(&Utc);
    if let Some(now) = now {
        if (t - now).num_seconds() > limits.max_future_seconds {
            return Err(reject(
                RejectReason::FutureTime,
                format!(
                    "time {s} is more than {} s after {now}",
                    limits.max_future_seconds
                ),
            ));
        }
    }
    Ok(t)
}

fn check_position(space: &StateSpace, c: &[f64]) -> Result<(f64, f64), Reject> {
    if c.len() < 2 || c.len() > 3 {
        return Err(reject(
            RejectReason::Schema,
            format!("a position has 2 or 3 numbers, got {}", c.len()),
        ));
    }
    if c.iter().any(|v| !v.is_finite()) {
        return Err(reject(
            RejectReason::NonFinite,
            "a coordinate is not finite",
        ));
    }
    let (lon, lat) = (c[0], c[1]);
    if !space.geometry.contains(lat, lon) {
        return Err(reject(
            RejectReason::OutOfDomain,
            format!("(lon {lon}, lat {lat}) is outside the model domain"),
        ));
    }
    Ok((lat, lon))
}

fn check_value(value: f64, sigma: f64) -> Result<(), Reject> {
    if !value.is_finite() || !sigma.is_finite() {
        return Err(reject(
            RejectReason::NonFinite,
            "a value or sigma is not finite",
        ));
    }
    if sigma <= 0.0 {
        return Err(reject(
            RejectReason::BadSigma,
            format!("sigma must be > 0, got {sigma}"),
        ));
    }
    Ok(())
}

fn variable(space: &StateSpace, name: &str) -> Result<usize, Reject> {
    space.variable(name).ok_or_else(|| {
        let known: Vec<&str> = space.variables.iter().map(|v| v.name.as_str()).collect();
        reject(
            RejectReason::UnknownVariable,
            format!("variable {name:?} is not one of {known:?}"),
        )
    })
}

/// Validate a parsed feature against the state space (`now`: the reference clock for the
/// future-time check, `None` to skip it) and turn it into observations.
pub fn validate(
    f: &Feature,
    space: &StateSpace,
    now: Option<DateTime<Utc>>,
    limits: &Limits,
) -> Result<ValidMessage, Reject> {
    match f {
        Feature::Station(s) => {
            check_name("id", &s.id, limits)?;
            check_name("station", &s.properties.station, limits)?;
            let time = check_time(&s.properties.time, now, limits)?;
            let (lat, lon) = check_position(space, &s.geometry.coordinates)?;
            let values = &s.properties.observations;
            if values.is_empty() {
                return Err(reject(
                    RejectReason::LengthMismatch,
                    "a station report needs at least one observation",
                ));
            }
            if values.len() > limits.max_station_values {
                return Err(reject(
                    RejectReason::Oversized,
                    format!(
                        "{} observations > {}",
                        values.len(),
                        limits.max_station_values
                    ),
                ));
            }
            let obs = values
                .iter()
                .map(|v| {
                    check_value(v.value, v.sigma)?;
                    Ok(Observation {
                        modality: Modality::Station,
                        var: variable(space, &v.var)?,
                        lat,
                        lon,
                        footprint: Footprint::Point,
                        value: v.value,
                        sigma: v.sigma,
                    })
                })
                .collect::<Result<Vec<_>, Reject>>()?;
            Ok(ValidMessage {
                id: s.id.clone(),
                time,
                source: Source::Station(s.properties.station.clone()),
                obs,
            })
        }
        Feature::Satellite(g) => {
            let p = &g.properties;
            check_name("id", &g.id, limits)?;
            check_name("platform", &p.platform, limits)?;
            check_name("instrument", &p.instrument, limits)?;
            let time = check_time(&p.time, now, limits)?;
            let var = variable(space, &p.var)?;
            check_value(p.footprint_km, p.sigma)?;
            if p.footprint_km <= 0.0 {
                return Err(reject(
                    RejectReason::Schema,
                    format!("footprint_km must be > 0, got {}", p.footprint_km),
                ));
            }
            if p.values.len() > limits.max_granule_values {
                return Err(reject(
                    RejectReason::Oversized,
                    format!(
                        "{} footprints > {}",
                        p.values.len(),
                        limits.max_granule_values
                    ),
                ));
            }
            if p.values.is_empty() || p.values.len() != g.geometry.coordinates.len() {
                return Err(reject(
                    RejectReason::LengthMismatch,
                    format!(
                        "{} values for {} coordinates",
                        p.values.len(),
                        g.geometry.coordinates.len()
                    ),
                ));
            }
            let obs = p
                .values
                .iter()
                .zip(&g.geometry.coordinates)
                .map(|(&value, c)| {
                    check_value(value, p.sigma)?;
                    let (lat, lon) = check_position(space, c)?;
                    Ok(Observation {
                        modality: Modality::Satellite,
                        var,
                        lat,
                        lon,
                        footprint: Footprint::Disc {
                            diameter_km: p.footprint_km,
                        },
                        value,
                        sigma: p.sigma,
                    })
                })
                .collect::<Result<Vec<_>, Reject>>()?;
            Ok(ValidMessage {
                id: g.id.clone(),
                time,
                source: Source::Satellite(p.platform.clone(), p.instrument.clone()),
                obs,
            })
        }
    }
}

/// Parse and validate in one go.
pub fn decode(
    bytes: &[u8],
    space: &StateSpace,
    now: Option<DateTime<Utc>>,
    limits: &Limits,
) -> Result<ValidMessage, Reject> {
    validate(&parse(bytes, limits)?, space, now, limits)
}

/// Missing-value codes rejected by default: the fill values of common datalogger and archive
/// formats (WMO BUFR-derived CSV −9999, SYNOP/METAR tools −999 and 9999, NetCDF conventions
/// −99999 and 99999, one-decimal loggers ±999.9, and the 16-bit integer extremes −32768, 32767
/// and 65535).
pub const DEFAULT_MISSING_VALUES: [f64; 10] = [
    -9999.0, -999.0, 9999.0, -99999.0, 99999.0, -999.9, 999.9, -32768.0, 32767.0, 65535.0,
];

/// Physical range of each testbed variable, `[lo, hi]` in its unit, accepted by default. Wide
/// enough that no real state of the model leaves it, narrow enough that a unit mix-up or a wild
/// sensor does:
/// - `x` (Lorenz-96, F = 8): the attractor spans about [−12, 17] (mean 2.35, σ 3.64);
/// - `pressure` (hPa), `temperature` and `brightness_temperature` (K) of qg2l are anomalies with
///   climatological RMS 0.32 hPa and 0.24 K: ±5 is 15–20 of them.
pub const DEFAULT_RANGES: [(&str, f64, f64); 4] = [
    ("x", -25.0, 30.0),
    ("pressure", -5.0, 5.0),
    ("temperature", -5.0, 5.0),
    ("brightness_temperature", -5.0, 5.0),
];

/// The value checks of step 4: missing-value codes and the physical range of each variable of a
/// state space.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueChecks {
    /// Values rejected as `missing_value` (compared exactly: the codes are exact in decimal JSON).
    pub missing_values: Vec<f64>,
    /// `ranges[var]`: the accepted `[lo, hi]` of the state space's variable `var`, if checked.
    pub ranges: Vec<Option<(f64, f64)>>,
}

impl ValueChecks {
    /// The checks for a state space: `missing` codes (default [`DEFAULT_MISSING_VALUES`]) and
    /// ranges by variable name (`overrides` first, then [`DEFAULT_RANGES`]). Fails on an override
    /// naming no variable of the space, or an empty or non-finite range.
    pub fn new(
        space: &StateSpace,
        missing: Option<&[f64]>,
        overrides: &std::collections::BTreeMap<String, [f64; 2]>,
    ) -> Result<ValueChecks, String> {
        for (name, r) in overrides {
            if space.variable(name).is_none() {
                let known: Vec<&str> = space.variables.iter().map(|v| v.name.as_str()).collect();
                return Err(format!(
                    "ingest.ranges.{name}: not a variable of this testbed (one of {known:?})"
                ));
            }
            if !(r[0].is_finite() && r[1].is_finite() && r[0] < r[1]) {
                return Err(format!(
                    "ingest.ranges.{name}: needs [lo, hi] with finite lo < hi, got {r:?}"
                ));
            }
        }
        let missing = missing.unwrap_or(&DEFAULT_MISSING_VALUES).to_vec();
        if missing.iter().any(|v| !v.is_finite()) {
            return Err("ingest.missing_values: codes must be finite (NaN is always rejected as non_finite)".into());
        }
        let ranges = space
            .variables
            .iter()
            .map(|v| {
                overrides.get(&v.name).map(|r| (r[0], r[1])).or_else(|| {
                    DEFAULT_RANGES
                        .iter()
                        .find(|(n, ..)| *n == v.name)
                        .map(|&(_, lo, hi)| (lo, hi))
                })
            })
            .collect();
        Ok(ValueChecks {
            missing_values: missing,
            ranges,
        })
    }

    /// Check every value of a validated message.
    pub fn check(&self, m: &ValidMessage, space: &StateSpace) -> Result<(), Reject> {
        for o in &m.obs {
            if self.missing_values.contains(&o.value) {
                return Err(reject(
                    RejectReason::MissingValue,
                    format!(
                        "value {} of {} is a missing-value code",
                        o.value, space.variables[o.var].name
                    ),
                ));
            }
            if let Some((lo, hi)) = self.ranges.get(o.var).copied().flatten() {
                if !(lo..=hi).contains(&o.value) {
                    let v = &space.variables[o.var];
                    return Err(reject(
                        RejectReason::OutOfRange,
                        format!(
                            "{} = {} {} is outside [{lo}, {hi}]",
                            v.name, o.value, v.unit
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What a topic (below the prefix) says about its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topic {
    /// `obs/station/{network}/{station}`.
    Station {
        /// Network label (not in the payload; checked against `ingest.networks`).
        network: String,
        /// Station id, which the payload must name.
        station: String,
    },
    /// `obs/satellite/{platform}/{instrument}`.
    Satellite {
        /// Platform, which the payload must name.
        platform: String,
        /// Instrument, which the payload must name.
        instrument: String,
    },
}

/// Parse an observation topic below the prefix (`obs/station/net/S01`); `networks`, when set, is
/// the list of accepted network labels.
pub fn parse_topic(suffix: &str, networks: Option<&[String]>) -> Result<Topic, Reject> {
    let levels: Vec<&str> = suffix.split('/').collect();
    let bad = |why: &str| {
        reject(
            RejectReason::TopicMismatch,
            format!("topic {suffix:?}: {why}"),
        )
    };
    let topic =
        match levels.as_slice() {
            ["obs", "station", network, station] if !network.is_empty() && !station.is_empty() => {
                Topic::Station {
                    network: network.to_string(),
                    station: station.to_string(),
                }
            }
            ["obs", "satellite", platform, instrument]
                if !platform.is_empty() && !instrument.is_empty() =>
            {
                Topic::Satellite {
                    platform: platform.to_string(),
                    instrument: instrument.to_string(),
                }
            }
            ["obs", "station", ..] => {
                return Err(bad(
                    "a station topic is obs/station/{network}/{station}, four non-empty levels",
                ))
            }
            ["obs", "satellite", ..] => return Err(bad(
                "a satellite topic is obs/satellite/{platform}/{instrument}, four non-empty levels",
            )),
            _ => {
                return Err(bad(
                    "not an observation topic (obs/station/… or obs/satellite/…)",
                ))
            }
        };
    if let (Topic::Station { network, .. }, Some(list)) = (&topic, networks) {
        if !list.iter().any(|n| n == network) {
            return Err(bad(&format!(
                "network {network:?} is not one of ingest.networks {list:?}"
            )));
        }
    }
    Ok(topic)
}

/// Check that a validated message is what its topic says it is.
pub fn bind(topic: &Topic, m: &ValidMessage) -> Result<(), Reject> {
    let bad = |why: String| Err(reject(RejectReason::TopicMismatch, why));
    match (topic, &m.source) {
        (Topic::Station { station, .. }, Source::Station(s)) if s == station => Ok(()),
        (Topic::Station { station, .. }, Source::Station(s)) => bad(format!(
            "the topic names station {station:?}, the payload {s:?}"
        )),
        (
            Topic::Satellite {
                platform,
                instrument,
            },
            Source::Satellite(p, i),
        ) if p == platform && i == instrument => Ok(()),
        (
            Topic::Satellite {
                platform,
                instrument,
            },
            Source::Satellite(p, i),
        ) => bad(format!(
            "the topic names {platform}/{instrument}, the payload {p}/{i}"
        )),
        (Topic::Station { .. }, Source::Satellite(..)) => {
            bad("a MultiPoint granule on a station topic".into())
        }
        (Topic::Satellite { .. }, Source::Station(_)) => {
            bad("a Point station report on a satellite topic".into())
        }
    }
}

/// Everything ingest checks, in the order of the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct Checks {
    /// Size limits.
    pub limits: Limits,
    /// Accepted network labels of station topics (`None`: any).
    pub networks: Option<Vec<String>>,
    /// Missing-value codes and ranges.
    pub values: ValueChecks,
}

impl Checks {
    /// Default limits, any network, default value checks for the space.
    pub fn defaults(space: &StateSpace) -> Checks {
        Checks {
            limits: Limits::default(),
            networks: None,
            values: ValueChecks::new(space, None, &Default::default())
                .expect("the defaults are valid"),
        }
    }

    /// Decode a message published on `topic` (below the prefix; `None`: no topic to bind, as for
    /// messages read from a file).
    pub fn decode(
        &self,
        bytes: &[u8],
        topic: Option<&str>,
        space: &StateSpace,
        now: Option<DateTime<Utc>>,
    ) -> Result<ValidMessage, Reject> {
        let topic = topic
            .map(|t| parse_topic(t, self.networks.as_deref()))
            .transpose()?;
        let m = decode(bytes, space, now, &self.limits)?;
        self.finish(topic.as_ref(), m, space)
    }

    /// Steps 3 and 4 for an already parsed feature (the experiment runner's path).
    pub fn validate(
        &self,
        f: &Feature,
        topic: Option<&str>,
        space: &StateSpace,
        now: Option<DateTime<Utc>>,
    ) -> Result<ValidMessage, Reject> {
        let topic = topic
            .map(|t| parse_topic(t, self.networks.as_deref()))
            .transpose()?;
        let m = validate(f, space, now, &self.limits)?;
        self.finish(topic.as_ref(), m, space)
    }

    fn finish(
        &self,
        topic: Option<&Topic>,
        m: ValidMessage,
        space: &StateSpace,
    ) -> Result<ValidMessage, Reject> {
        if let Some(t) = topic {
            bind(t, &m)?;
        }
        self.values.check(&m, space)?;
        Ok(m)
    }
}

/// Format a time as the RFC 3339 UTC string used in messages (whole seconds, `Z`).
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::Simulator;
    use assimd_models::testbed::{NetworkKind, Testbed, TestbedKind};

    fn l96() -> StateSpace {
        Testbed::new(TestbedKind::L96).space
    }

    const STATION: &str = r#"{"type":"Feature","id":"S02/2026-01-01T06:00:00Z",
        "geometry":{"type":"Point","coordinates":[18.0,45.0,120.0]},
        "properties":{"station":"S02","time":"2026-01-01T06:00:00Z",
                      "observations":[{"var":"x","value":3.2,"sigma":1.0}]}}"#;

    const GRANULE: &str = r#"{"type":"Feature","id":"sat1/2026-01-01T06:00:00Z/0001",
        "geometry":{"type":"MultiPoint","coordinates":[[13.5,45.0],[49.5,45.0]]},
        "properties":{"platform":"sat1","instrument":"blk4","time":"2026-01-01T06:00:00Z","var":"x",
                      "footprint_km":2830,"sigma":1.0,"values":[1.5,-2.0]}}"#;

    fn reason(s: &str) -> RejectReason {
        decode(s.as_bytes(), &l96(), None, &Limits::default())
            .unwrap_err()
            .reason
    }

    #[test]
    fn valid_station_and_granule_decode() {
        let m = decode(STATION.as_bytes(), &l96(), None, &Limits::default()).unwrap();
        assert_eq!(m.source, Source::Station("S02".into()));
        assert_eq!(m.obs.len(), 1);
        assert_eq!(
            (m.obs[0].lat, m.obs[0].lon, m.obs[0].value, m.obs[0].sigma),
            (45.0, 18.0, 3.2, 1.0)
        );
        assert_eq!(format_time(m.time), "2026-01-01T06:00:00Z");
        let g = decode(GRANULE.as_bytes(), &l96(), None, &Limits::default()).unwrap();
        assert_eq!(g.source, Source::Satellite("sat1".into(), "blk4".into()));
        assert_eq!(
            g.obs.iter().map(|o| o.value).collect::<Vec<_>>(),
            vec![1.5, -2.0]
        );
        assert_eq!(
            g.obs[1].footprint,
            Footprint::Disc {
                diameter_km: 2830.0
            }
        );
    }

    #[test]
    fn simulator_messages_round_trip_through_json() {
        for (tb, net) in [
            (TestbedKind::L96, NetworkKind::StationsSatellite),
            (TestbedKind::Qg2l, NetworkKind::StationsSatellite),
        ] {
            let testbed = Testbed::new(tb);
            let network = testbed.network(net).unwrap();
            let mut sim = Simulator::new(testbed.clone(), network, 5);
            sim.step();
            let (assim, verif) = sim.observations();
            let mut decoded = (Vec::new(), Vec::new());
            for m in sim.messages() {
                let text = serde_json::to_string(&m.feature).unwrap();
                let back = parse(text.as_bytes(), &Limits::default()).unwrap();
                assert_eq!(back, m.feature, "{tb}: {text}");
                // Every simulated message passes every ingest check, its topic bound.
                let checks = Checks::defaults(&testbed.space);
                let v = checks
                    .validate(&back, Some(&m.topic), &testbed.space, Some(sim.time_of(1)))
                    .unwrap();
                if m.withheld {
                    decoded.1.extend(v.obs)
                } else {
                    decoded.0.extend(v.obs)
                }
            }
            assert_eq!(
                decoded,
                (assim, verif),
                "{tb}: decoded observations differ from the simulator's"
            );
        }
    }

    #[test]
    fn wrong_types_and_broken_json_are_rejected() {
        assert_eq!(
            reason(&STATION.replace("3.2", "\"3.2\"")),
            RejectReason::Schema
        );
        assert_eq!(
            reason(&STATION.replace("\"Feature\"", "\"FeatureCollection\"")),
            RejectReason::Schema
        );
        assert_eq!(
            reason(&STATION.replace("\"Point\"", "\"Polygon\"")),
            RejectReason::Schema
        );
        assert_eq!(
            reason(&STATION.replace("\"observations\"", "\"obs\"")),
            RejectReason::Schema
        );
        assert_eq!(
            reason(&STATION.replace("\"S02\",", "7,")),
            RejectReason::Schema
        );
        assert_eq!(
            reason(&STATION[..STATION.len() - 3]),
            RejectReason::MalformedJson
        );
        assert_eq!(reason("not json"), RejectReason::MalformedJson);
        assert_eq!(
            reason(&STATION.replace("[18.0,45.0,120.0]", "[18.0]")),
            RejectReason::Schema
        );
    }

    #[test]
    fn non_finite_numbers_are_rejected() {
        assert_eq!(
            reason(&STATION.replace("3.2", "NaN")),
            RejectReason::NonFinite
        );
        assert_eq!(
            reason(&STATION.replace("3.2", "1e999")),
            RejectReason::NonFinite
        );
        assert_eq!(
            reason(&GRANULE.replace("-2.0", "-Infinity")),
            RejectReason::NonFinite
        );
    }

    #[test]
    fn sigma_must_be_positive() {
        assert_eq!(
            reason(&STATION.replace("\"sigma\":1.0", "\"sigma\":0")),
            RejectReason::BadSigma
        );
        assert_eq!(
            reason(&GRANULE.replace("\"sigma\":1.0", "\"sigma\":-0.5")),
            RejectReason::BadSigma
        );
    }

    #[test]
    fn positions_outside_the_domain_are_rejected() {
        assert_eq!(
            reason(&STATION.replace("[18.0,45.0,120.0]", "[18.0,60.0]")),
            RejectReason::OutOfDomain
        );
        assert_eq!(
            reason(&STATION.replace("[18.0,45.0,120.0]", "[200.0,45.0]")),
            RejectReason::OutOfDomain
        );
        assert_eq!(
            reason(&GRANULE.replace("[49.5,45.0]", "[49.5,-45.0]")),
            RejectReason::OutOfDomain
        );
        // A position on the l96 ring is far outside the QG box.
        let qg = Testbed::new(TestbedKind::Qg2l).space;
        let s = STATION.replace("\"var\":\"x\"", "\"var\":\"pressure\"");
        assert_eq!(
            decode(s.as_bytes(), &qg, None, &Limits::default())
                .unwrap_err()
                .reason,
            RejectReason::OutOfDomain
        );
    }

    #[test]
    fn oversized_messages_are_rejected() {
        let small = Limits {
            max_bytes: 100,
            ..Limits::default()
        };
        assert_eq!(
            decode(STATION.as_bytes(), &l96(), None, &small)
                .unwrap_err()
                .reason,
            RejectReason::Oversized
        );
        let few = Limits {
            max_granule_values: 1,
            ..Limits::default()
        };
        assert_eq!(
            decode(GRANULE.as_bytes(), &l96(), None, &few)
                .unwrap_err()
                .reason,
            RejectReason::Oversized
        );
        let long = "S".repeat(200);
        assert_eq!(
            reason(&STATION.replace("\"station\":\"S02\"", &format!("\"station\":\"{long}\""))),
            RejectReason::Oversized
        );
    }

    #[test]
    fn times_must_parse_and_not_lie_in_the_future() {
        assert_eq!(
            reason(&STATION.replace(
                "\"time\":\"2026-01-01T06:00:00Z\"",
                "\"time\":\"yesterday\""
            )),
            RejectReason::BadTime
        );
        let now = DateTime::parse_from_rfc3339("2026-01-01T04:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = decode(STATION.as_bytes(), &l96(), Some(now), &Limits::default()).unwrap_err();
        assert_eq!(e.reason, RejectReason::FutureTime);
        let later = now + chrono::Duration::hours(1);
        assert!(decode(STATION.as_bytes(), &l96(), Some(later), &Limits::default()).is_ok());
    }

    #[test]
    fn unknown_variables_and_length_mismatches_are_rejected() {
        assert_eq!(
            reason(&STATION.replace("\"var\":\"x\"", "\"var\":\"humidity\"")),
            RejectReason::UnknownVariable
        );
        assert_eq!(
            reason(&GRANULE.replace("[1.5,-2.0]", "[1.5]")),
            RejectReason::LengthMismatch
        );
        assert_eq!(
            reason(&STATION.replace("[{\"var\":\"x\",\"value\":3.2,\"sigma\":1.0}]", "[]")),
            RejectReason::LengthMismatch
        );
    }

    fn checked(s: &str, topic: &str) -> Result<ValidMessage, RejectReason> {
        Checks::defaults(&l96())
            .decode(s.as_bytes(), Some(topic), &l96(), None)
            .map_err(|e| e.reason)
    }

    #[test]
    fn topics_must_have_their_levels_and_name_the_payloads_source() {
        assert!(checked(STATION, "obs/station/sim/S02").is_ok());
        assert!(checked(GRANULE, "obs/satellite/sat1/blk4").is_ok());
        for topic in [
            "obs/station",
            "obs/station/S02",
            "obs/station/sim/S02/extra",
            "obs/station//S02",
            "obs/station/sim/",
            "obs/other/sim/S02",
            "S02",
        ] {
            assert_eq!(
                checked(STATION, topic).unwrap_err(),
                RejectReason::TopicMismatch,
                "{topic}"
            );
        }
        // Another station's topic (a withheld one, too), the other geometry, another instrument.
        assert_eq!(
            checked(STATION, "obs/station/sim/S04").unwrap_err(),
            RejectReason::TopicMismatch
        );
        assert_eq!(
            checked(STATION, "obs/station/sim/V00").unwrap_err(),
            RejectReason::TopicMismatch
        );
        assert_eq!(
            checked(GRANULE, "obs/station/sim/S02").unwrap_err(),
            RejectReason::TopicMismatch
        );
        assert_eq!(
            checked(STATION, "obs/satellite/sat1/blk4").unwrap_err(),
            RejectReason::TopicMismatch
        );
        assert_eq!(
            checked(GRANULE, "obs/satellite/sat1/blk8").unwrap_err(),
            RejectReason::TopicMismatch
        );
        assert_eq!(
            checked(GRANULE, "obs/satellite/sat2/blk4").unwrap_err(),
            RejectReason::TopicMismatch
        );
        // The topic is checked before the payload: garbage on a bad topic is a topic mismatch.
        assert_eq!(
            checked("not json", "obs/station").unwrap_err(),
            RejectReason::TopicMismatch
        );
        assert_eq!(
            checked("not json", "obs/station/sim/S02").unwrap_err(),
            RejectReason::MalformedJson
        );
    }

    #[test]
    fn the_network_level_is_checked_when_a_list_is_set() {
        let mut c = Checks::defaults(&l96());
        c.networks = Some(vec!["sim".into(), "synop".into()]);
        assert!(c
            .decode(
                STATION.as_bytes(),
                Some("obs/station/synop/S02"),
                &l96(),
                None
            )
            .is_ok());
        let e = c
            .decode(
                STATION.as_bytes(),
                Some("obs/station/rogue/S02"),
                &l96(),
                None,
            )
            .unwrap_err();
        assert_eq!(e.reason, RejectReason::TopicMismatch);
        assert!(e.detail.contains("rogue"), "{}", e.detail);
        // Satellite topics have no network level.
        assert!(c
            .decode(
                GRANULE.as_bytes(),
                Some("obs/satellite/sat1/blk4"),
                &l96(),
                None
            )
            .is_ok());
    }

    #[test]
    fn missing_value_codes_are_rejected_but_nan_stays_non_finite() {
        for code in DEFAULT_MISSING_VALUES {
            let s = STATION.replace("3.2", &format!("{code:?}"));
            assert_eq!(
                checked(&s, "obs/station/sim/S02").unwrap_err(),
                RejectReason::MissingValue,
                "{code}"
            );
            let g = GRANULE.replace("-2.0", &format!("{code:?}"));
            assert_eq!(
                checked(&g, "obs/satellite/sat1/blk4").unwrap_err(),
                RejectReason::MissingValue,
                "{code}"
            );
        }
        assert_eq!(
            checked(&STATION.replace("3.2", "NaN"), "obs/station/sim/S02").unwrap_err(),
            RejectReason::NonFinite
        );
        // A configured list replaces the default one.
        let mut c = Checks::defaults(&l96());
        c.values = ValueChecks::new(&l96(), Some(&[3.2]), &Default::default()).unwrap();
        assert_eq!(
            c.decode(STATION.as_bytes(), None, &l96(), None)
                .unwrap_err()
                .reason,
            RejectReason::MissingValue
        );
        assert!(c
            .decode(
                STATION.replace("3.2", "-9999").as_bytes(),
                None,
                &l96(),
                None
            )
            .is_err_and(|e| e.reason == RejectReason::OutOfRange));
    }

    #[test]
    fn values_outside_the_physical_range_are_rejected() {
        assert_eq!(
            checked(&STATION.replace("3.2", "30.5"), "obs/station/sim/S02").unwrap_err(),
            RejectReason::OutOfRange
        );
        assert_eq!(
            checked(&STATION.replace("3.2", "-25.5"), "obs/station/sim/S02").unwrap_err(),
            RejectReason::OutOfRange
        );
        assert!(
            checked(&STATION.replace("3.2", "30.0"), "obs/station/sim/S02").is_ok(),
            "the bounds are inclusive"
        );
        assert_eq!(
            checked(&GRANULE.replace("-2.0", "55.0"), "obs/satellite/sat1/blk4").unwrap_err(),
            RejectReason::OutOfRange
        );
        let qg = Testbed::new(TestbedKind::Qg2l).space;
        let c = Checks::defaults(&qg);
        assert_eq!(c.values.ranges, vec![Some((-5.0, 5.0)); 3]);
        let mut wide = std::collections::BTreeMap::new();
        wide.insert("x".to_string(), [-100.0, 100.0]);
        let v = ValueChecks::new(&l96(), None, &wide).unwrap();
        assert_eq!(v.ranges, vec![Some((-100.0, 100.0))]);
        let mut unknown = std::collections::BTreeMap::new();
        unknown.insert("humidity".to_string(), [0.0, 1.0]);
        assert!(ValueChecks::new(&l96(), None, &unknown)
            .unwrap_err()
            .starts_with("ingest.ranges.humidity"));
        let mut empty = std::collections::BTreeMap::new();
        empty.insert("x".to_string(), [1.0, 1.0]);
        assert!(ValueChecks::new(&l96(), None, &empty).is_err());
        assert!(ValueChecks::new(&l96(), Some(&[f64::NAN]), &Default::default()).is_err());
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let mut labels: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), RejectReason::ALL.len());
    }
}
