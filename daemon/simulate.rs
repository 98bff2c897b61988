//! # Observing-network simulator
//!
//! A perfect-model OSSE: a truth trajectory of the testbed's dynamics and, every cycle, the
//! observations its network would publish, with Gaussian errors of the network's σ, as the GeoJSON
//! messages of DESIGN §4. Everything is deterministic from the seed: the truth from
//! [`Testbed::initial_truth`], the errors of cycle k from a generator seeded by (seed, k), so a
//! cycle's messages do not depend on which cycles were generated before.

use crate::wire::{
    format_time, Feature, FeatureTag, MultiPointGeometry, MultiPointTag, PointGeometry, PointTag,
    SatelliteFeature, SatelliteProperties, StationFeature, StationProperties, StationValue,
};
use assimd_filter::obs::Observation;
use assimd_models::testbed::{Network, Testbed};
use chrono::{DateTime, TimeZone, Utc};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Valid time of cycle 0 of every simulation.
pub fn epoch() -> DateTime<Utc> {
    // 2026-01-01T00:00:00Z is a valid calendar date.
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid epoch")
}

/// One message and the topic suffix it is published under (after the prefix).
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Topic below the prefix, e.g. `obs/station/sim/QS001`.
    pub topic: String,
    /// The feature.
    pub feature: Feature,
    /// Whether the station is withheld from assimilation (verification only).
    pub withheld: bool,
}

/// The truth and observations of a simulated observing network.
pub struct Simulator {
    /// The testbed.
    pub testbed: Testbed,
    /// Its network.
    pub network: Network,
    seed: u64,
    cycle: u64,
    truth: Vec<f64>,
}

/// Network label used in station topics.
pub const SIM_NETWORK: &str = "sim";

impl Simulator {
    /// A simulator at cycle 0 with the seed's initial truth.
    pub fn new(testbed: Testbed, network: Network, seed: u64) -> Simulator {
        let truth = testbed.initial_truth(seed);
        Simulator {
            testbed,
            network,
            seed,
            cycle: 0,
            truth,
        }
    }

    /// The current cycle number.
    pub fn cycle(&self) -> u64 {
        self.cycle
    }

    /// The current truth.
    pub fn truth(&self) -> &[f64] {
        &self.truth
    }

    /// Valid time of cycle `k`.
    pub fn time_of(&self, k: u64) -> DateTime<Utc> {
        epoch()
            + chrono::Duration::milliseconds(
                (self.testbed.dynamics.cycle_seconds() * 1000.0 * k as f64).round() as i64,
            )
    }

    /// Advance the truth by one cycle.
    pub fn step(&mut self) {
        self.testbed.dynamics.forecast(&mut self.truth);
        self.cycle += 1;
    }

    /// The observations of the current cycle: (assimilated, withheld). Same draws as [`Self::messages`].
    pub fn observations(&self) -> (Vec<Observation>, Vec<Observation>) {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.cycle);
        self.network
            .observe(&self.testbed.space, &self.truth, self.cycle, &mut rng)
    }

    /// The messages of the current cycle: one per station, one granule for the satellite.
    pub fn messages(&self) -> Vec<Message> {
        let (assim, verif) = self.observations();
        let time = format_time(self.time_of(self.cycle));
        let space = &self.testbed.space;
        let mut out = Vec::new();
        let (mut ia, mut iv) = (assim.iter(), verif.iter());
        for s in &self.network.stations {
            let source = if s.withheld { &mut iv } else { &mut ia };
            let observations = s
                .vars
                .iter()
                .map(|&(var, _)| {
                    // observe() emits one observation per (station, variable) in this order.
                    let o = source.next().expect("one observation per station variable");
                    StationValue {
                        var: space.variables[var].name.clone(),
                        value: o.value,
                        sigma: o.sigma,
                    }
                })
                .collect();
            out.push(Message {
                topic: format!("obs/station/{SIM_NETWORK}/{}", s.id),
                feature: Feature::Station(StationFeature {
                    kind: FeatureTag::Feature,
                    id: format!("{}/{time}", s.id),
                    geometry: PointGeometry {
                        kind: PointTag::Point,
                        coordinates: vec![s.lon, s.lat],
                    },
                    properties: StationProperties {
                        station: s.id.clone(),
                        time: time.clone(),
                        observations,
                    },
                }),
                withheld: s.withheld,
            });
        }
        if let Some(sat) = &self.network.satellite {
            let fps: Vec<&Observation> = ia.collect();
            out.push(Message {
                topic: format!("obs/satellite/{}/{}", sat.platform, sat.instrument),
                feature: Feature::Satellite(SatelliteFeature {
                    kind: FeatureTag::Feature,
                    id: format!("{}/{time}/{:04}", sat.platform, self.cycle % 10_000),
                    geometry: MultiPointGeometry {
                        kind: MultiPointTag::MultiPoint,
                        coordinates: fps.iter().map(|o| vec![o.lon, o.lat]).collect(),
                    },
                    properties: SatelliteProperties {
                        platform: sat.platform.clone(),
                        instrument: sat.instrument.clone(),
                        time: time.clone(),
                        var: space.variables[sat.var].name.clone(),
                        footprint_km: sat.footprint_km,
                        sigma: sat.sigma,
                        values: fps.iter().map(|o| o.value).collect(),
                    },
                }),
                withheld: false,
            });
        }
        out
    }
}
