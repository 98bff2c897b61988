//! # Fault injection: the bad observations a real network sends
//!
//! For measuring quality control (`assimd experiment --gross-errors F`, `[simulate.faults]`), a
//! seeded [`FaultInjector`] corrupts the simulator's messages before they are validated, in the
//! ways an observing network at 3 a.m. does:
//! - **gross errors**: each scalar observation, with probability F, is either moved 50 σ_o off
//!   (random sign; a spike, a unit or sign slip) or, for station values, replaced by the
//!   datalogger's missing-value code −9999 (half each; a granule's footprints only get spikes, as
//!   satellite processing flags missing pixels itself);
//! - **a stuck station** (with gross errors on): one assimilated station, chosen by the seed,
//!   repeats the values it reported in the first cycle it was seen, from then on;
//! - **a biased station** ([`StationBias`]): a station whose values are `sigmas` σ_o too high from
//!   a given cycle on (a drifting sensor).
//!
//! Every injection is counted ([`Injected`]); nothing here ever aborts a run.

use crate::simulate::Message;
use crate::wire::Feature;
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The datalogger missing-value code injected.
pub const MISSING_CODE: f64 = -9999.0;
/// How far off a spike is, in σ_o.
pub const SPIKE_SIGMAS: f64 = 50.0;

/// A drifting station.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationBias {
    /// Station id.
    pub station: String,
    /// Bias in units of the station's σ_o.
    pub sigmas: f64,
    /// First biased cycle.
    pub from_cycle: u64,
}

impl std::str::FromStr for StationBias {
    type Err = String;
    /// `STATION:SIGMAS:FROM_CYCLE`, e.g. `S04:3:100`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let err = || format!("--bias takes STATION:SIGMAS:FROM_CYCLE such as S04:3:100, got {s:?}");
        let [station, sigmas, from] = parts.as_slice() else {
            return Err(err());
        };
        Ok(StationBias {
            station: station.to_string(),
            sigmas: sigmas.parse().map_err(|_| err())?,
            from_cycle: from.parse().map_err(|_| err())?,
        })
    }
}

/// What to inject (`[simulate.faults]`, and the experiment's `gross_errors`/`bias`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share F of scalar observations replaced by a gross error (0 = none); also turns on the
    /// stuck station.
    pub gross_errors: f64,
    /// A drifting station.
    pub bias: Option<StationBias>,
}

impl Faults {
    /// Check the parameters; errors name the fix.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.gross_errors) {
            bail!(
                "gross_errors is a share of the observations in [0, 1] (0.02 = 2 %), got {}",
                self.gross_errors
            );
        }
        if let Some(b) = &self.bias {
            if !b.sigmas.is_finite() {
                bail!("bias.sigmas must be finite, got {}", b.sigmas);
            }
        }
        Ok(())
    }

    /// Whether anything is injected.
    pub fn any(&self) -> bool {
        self.gross_errors > 0.0 || self.bias.is_some()
    }
}

/// Counts of what was injected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Injected {
    /// Values moved 50 σ_o off.
    pub spikes: u64,
    /// Station values replaced by −9999.
    pub missing_codes: u64,
    /// Reports of the stuck station (from its second on).
    pub stuck_reports: u64,
    /// Reports of the biased station.
    pub biased_reports: u64,
}

/// A seeded injector, cycle by cycle.
pub struct FaultInjector {
    faults: Faults,
    seed: u64,
    stuck: Option<(String, Option<Vec<f64>>)>,
    /// Everything injected so far.
    pub injected: Injected,
}

impl FaultInjector {
    /// An injector for the simulator's messages; `stations` are the network's assimilated station
    /// ids (one becomes the stuck station when gross errors are on).
    pub fn new(faults: Faults, seed: u64, stations: &[String]) -> FaultInjector {
        let stuck = (faults.gross_errors > 0.0 && !stations.is_empty()).then(|| {
            (
                stations[(seed.wrapping_mul(7919) % stations.len() as u64) as usize].clone(),
                None,
            )
        });
        FaultInjector {
            faults,
            seed,
            stuck,
            injected: Injected::default(),
        }
    }

    /// The stuck station's id, if any.
    pub fn stuck_station(&self) -> Option<&str> {
        self.stuck.as_ref().map(|(s, _)| s.as_str())
    }

    /// Corrupt cycle `cycle`'s messages in place.
    pub fn apply(&mut self, cycle: u64, messages: &mut [Message]) {
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ 0x6661_756c_7400_0000 ^ cycle.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let f = self.faults.gross_errors;
        for m in messages.iter_mut() {
            match &mut m.feature {
                Feature::Station(s) => {
                    let id = s.properties.station.clone();
                    let values = &mut s.properties.observations;
                    // A biased or stuck station has its one fault; the random ones go elsewhere.
                    let mut faulty = false;
                    if let Some(b) = self.faults.bias.as_ref().filter(|b| b.station == id) {
                        faulty = true;
                        if cycle >= b.from_cycle {
                            values
                                .iter_mut()
                                .for_each(|v| v.value += b.sigmas * v.sigma);
                            self.injected.biased_reports += 1;
                        }
                    }
                    if let Some((_, memory)) = self.stuck.as_mut().filter(|(s, _)| *s == id) {
                        faulty = true;
                        match memory {
                            None => *memory = Some(values.iter().map(|v| v.value).collect()),
                            Some(old) => {
                                values
                                    .iter_mut()
                                    .zip(old.iter())
                                    .for_each(|(v, o)| v.value = *o);
                                self.injected.stuck_reports += 1;
                            }
                        }
                    }
                    if m.withheld || faulty {
                        continue;
                    }
                    for v in values.iter_mut() {
                        if f > 0.0 && rng.random::<f64>() < f {
                            if rng.random::<bool>() {
                                v.value += if rng.random::<bool>() {
                                    SPIKE_SIGMAS
                                } else {
                                    -SPIKE_SIGMAS
                                } * v.sigma;
                                self.injected.spikes += 1;
                            } else {
                                v.value = MISSING_CODE;
                                self.injected.missing_codes += 1;
                            }
                        }
                    }
                }
                Feature::Satellite(g) => {
                    let sigma = g.properties.sigma;
                    for v in g.properties.values.iter_mut() {
                        if f > 0.0 && rng.random::<f64>() < f / 2.0 {
                            *v += if rng.random::<bool>() {
                                SPIKE_SIGMAS
                            } else {
                                -SPIKE_SIGMAS
                            } * sigma;
                            self.injected.spikes += 1;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::Simulator;
    use assimd_models::testbed::{NetworkKind, Testbed, TestbedKind};

    fn values(msgs: &[Message]) -> Vec<f64> {
        msgs.iter()
            .flat_map(|m| match &m.feature {
                Feature::Station(s) => s
                    .properties
                    .observations
                    .iter()
                    .map(|v| v.value)
                    .collect::<Vec<_>>(),
                Feature::Satellite(g) => g.properties.values.clone(),
            })
            .collect()
    }

    #[test]
    fn injections_are_seeded_counted_and_of_the_documented_kinds() {
        let tb = Testbed::new(TestbedKind::L96);
        let net = tb.network(NetworkKind::StationsSatellite).unwrap();
        let ids: Vec<String> = net
            .stations
            .iter()
            .filter(|s| !s.withheld)
            .map(|s| s.id.clone())
            .collect();
        let mut sim = Simulator::new(tb.clone(), net, 3);
        let faults = Faults {
            gross_errors: 0.1,
            bias: Some("S04:3:2".parse().unwrap()),
        };
        let (mut a, mut b) = (
            FaultInjector::new(faults.clone(), 9, &ids),
            FaultInjector::new(faults, 9, &ids),
        );
        let stuck = a.stuck_station().unwrap().to_string();
        let (mut changed, mut total) = (0usize, 0usize);
        for k in 1..=200 {
            sim.step();
            let clean = sim.messages();
            let (mut x, mut y) = (clean.clone(), clean.clone());
            a.apply(k, &mut x);
            b.apply(k, &mut y);
            assert_eq!(x, y, "same seed, same faults");
            for (mx, mc) in x.iter().zip(&clean) {
                let (vx, vc) = (
                    values(std::slice::from_ref(mx)),
                    values(std::slice::from_ref(mc)),
                );
                for (p, q) in vx.iter().zip(&vc) {
                    let d = p - q;
                    let id = match &mx.feature {
                        Feature::Station(s) => s.properties.station.clone(),
                        _ => String::new(),
                    };
                    let ok = d == 0.0
                        || (d.abs() - SPIKE_SIGMAS).abs() < 1e-9
                        || *p == MISSING_CODE
                        || (id == "S04" && k >= 2)
                        || (id == stuck && k >= 2);
                    assert!(ok, "cycle {k} {id}: {q} became {p}");
                    total += 1;
                    changed += usize::from(d != 0.0 && id != "S04" && id != stuck);
                }
            }
        }
        let i = a.injected;
        assert_eq!(i.biased_reports, 199);
        assert_eq!(i.stuck_reports, 199);
        assert_eq!((i.spikes + i.missing_codes) as usize, changed);
        // 16 stations at rate 0.1 (the stuck and the biased one have only their own fault) and 5
        // footprints at 0.05 among 29 values (4 withheld untouched): an expected share of 0.0638,
        // standard error 0.0032 over 5,800 values; the band is ±4 standard errors.
        let share = changed as f64 / total as f64;
        assert!((0.051..0.077).contains(&share), "{share}");
    }

    #[test]
    fn bias_flag_parses() {
        assert_eq!(
            "S04:3:100".parse::<StationBias>().unwrap(),
            StationBias {
                station: "S04".into(),
                sigmas: 3.0,
                from_cycle: 100
            }
        );
        assert!("S04:3".parse::<StationBias>().is_err());
        assert!(Faults {
            gross_errors: 1.5,
            bias: None
        }
        .validate()
        .is_err());
    }
}
