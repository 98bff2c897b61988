//! # Testbeds and observing networks
//!
//! The two OSSE testbeds of DESIGN §3, each a forecast model ([`Dynamics`]), its state space (grid on
//! the Earth, fields, observable variables) and its observing networks.
//!
//! ## l96
//! Lorenz-96 (N = 40, F = 8), points on the 45°N circle at longitude 9·i. Variable `x` (the state).
//! Networks: `full` (40 stations on the grid points, σ = 1), `sparse` (every other point,
//! σ² = 1.5), `stations` (the 20 even points, σ = 1), `satellite` (5 footprints of 4-point block
//! means over half the ring, σ = 1; the observed half starts 10 points further east every cycle) and
//! `stations+satellite` (both). Every network also has 4 withheld verification stations between grid
//! points (longitudes 4.5 + 90·k).
//!
//! ## qg2l
//! Two-layer QG on a 1000 km periodic box centred at 45°N, 10°E (see [`crate::qg2l`]); state
//! (ψ1, ψ2) in m²/s. Observable variables, from the standard two-layer relations with
//! f0 = 1e-4 s⁻¹, reduced gravity g' = f0² / (F1 H1) and ρ0 = 1025 kg m⁻³:
//! - `pressure` (hPa): lower-layer pressure anomaly p = ρ0 f0 ψ2 / 100;
//! - `temperature` (K): T = Γ η with the interface displacement η = f0 (ψ1 - ψ2) / g' and a
//!   stratification Γ = 0.01 K/m, i.e. proportional to the layer thickness anomaly ψ1 - ψ2;
//! - `brightness_temperature` (K): the satellite's view of the same temperature anomaly, averaged over
//!   a footprint (60 km disc).
//!
//! Networks: `stations` (60 stations at fixed random sites, reporting pressure and temperature),
//! `satellite` (one polar-orbiting swath per cycle: a north–south band 250 km wide of 4 × 16
//! footprints 62.5 km apart, whose centre moves 375 km east each cycle), `stations+satellite`.
//! 8 further stations are withheld for verification in every network.
//!
//! Larger qg2l grids ([`Testbed::qg2l`], `[testbed] resolution` 128 or 256) tile this box 2 × 2 or
//! 4 × 4 times: the same 15.6 km spacing, physics and climatology on a 2000 or 4000 km box, with
//! (n/64)² times the stations (same density) and a swath n/64 times as wide and as long, whose centre
//! moves n/64 × 375 km a cycle. The cost of a cycle per grid point then stays what it is at 64²,
//! as in an operational domain that grows (docs/benchmarks.md, "Cost against grid size").

use crate::l96::Lorenz96;
use crate::qg2l::{Qg2l, Qg2lParams};
use assimd_filter::geometry::{wrap_lon, EARTH_RADIUS_KM};
use assimd_filter::obs::{Footprint, Modality, Observation};
use assimd_filter::{Dynamics, Geometry, StateSpace, Variable};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Which testbed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TestbedKind {
    /// Lorenz-96.
    L96,
    /// Two-layer quasi-geostrophic turbulence.
    Qg2l,
}

impl FromStr for TestbedKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "l96" => Ok(TestbedKind::L96),
            "qg2l" => Ok(TestbedKind::Qg2l),
            _ => Err(format!("unknown testbed '{s}': use l96 or qg2l")),
        }
    }
}

impl fmt::Display for TestbedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TestbedKind::L96 => "l96",
            TestbedKind::Qg2l => "qg2l",
        })
    }
}

/// Which observing network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetworkKind {
    /// Every l96 grid point, R = I.
    Full,
    /// Every other l96 grid point, R = 1.5 I.
    Sparse,
    /// In-situ stations only.
    Stations,
    /// The satellite only.
    Satellite,
    /// Stations and satellite.
    StationsSatellite,
}

impl FromStr for NetworkKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(NetworkKind::Full),
            "sparse" => Ok(NetworkKind::Sparse),
            "stations" => Ok(NetworkKind::Stations),
            "satellite" => Ok(NetworkKind::Satellite),
            "stations+satellite" => Ok(NetworkKind::StationsSatellite),
            _ => Err(format!("unknown network '{s}': use full, sparse, stations, satellite or stations+satellite")),
        }
    }
}

impl fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkKind::Full => "full",
            NetworkKind::Sparse => "sparse",
            NetworkKind::Stations => "stations",
            NetworkKind::Satellite => "satellite",
            NetworkKind::StationsSatellite => "stations+satellite",
        })
    }
}

/// A station site: where it is, what it reports and how accurately.
#[derive(Clone, Debug, PartialEq)]
pub struct Station {
    /// Station identifier, as in messages.
    pub id: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Reported variables (index into the state space) with their error σ.
    pub vars: Vec<(usize, f64)>,
    /// Used for verification only, never assimilated.
    pub withheld: bool,
}

/// A satellite instrument scanning a swath that moves each cycle.
#[derive(Clone, Debug, PartialEq)]
pub struct Satellite {
    /// Platform name, as in topics and messages.
    pub platform: String,
    /// Instrument name.
    pub instrument: String,
    /// Observed variable (index into the state space).
    pub var: usize,
    /// Footprint diameter in km.
    pub footprint_km: f64,
    /// Error σ of one footprint value.
    pub sigma: f64,
    swath: Swath,
}

#[derive(Clone, Debug, PartialEq)]
enum Swath {
    /// l96: `blocks` footprints of `block` points, the first starting at grid point
    /// `(shift · cycle) mod n`.
    Ring {
        n: usize,
        block: usize,
        blocks: usize,
        shift: usize,
    },
    /// qg2l: a north–south band of `across × along` footprints `spacing_km` apart whose centre moves
    /// `shift_km` east per cycle.
    Band {
        length_km: f64,
        lat0: f64,
        lon0: f64,
        across: usize,
        along: usize,
        spacing_km: f64,
        shift_km: f64,
    },
}

impl Satellite {
    /// Footprint centres (lat, lon) in cycle `cycle`.
    pub fn footprints(&self, cycle: u64) -> Vec<(f64, f64)> {
        match &self.swath {
            Swath::Ring {
                n,
                block,
                blocks,
                shift,
            } => (0..*blocks)
                .map(|b| {
                    let first = (shift * cycle as usize + b * block) % n;
                    let centre = first as f64 + (*block as f64 - 1.0) / 2.0;
                    (45.0, wrap_lon(centre * 360.0 / *n as f64))
                })
                .collect(),
            Swath::Band {
                length_km,
                lat0,
                lon0,
                across,
                along,
                spacing_km,
                shift_km,
            } => {
                let xc = -length_km / 2.0 + (shift_km * cycle as f64).rem_euclid(*length_km);
                let mut out = Vec::with_capacity(across * along);
                for a in 0..*along {
                    let y = -length_km / 2.0 + (a as f64 + 0.5) * spacing_km;
                    for c in 0..*across {
                        let x = xc + (c as f64 - (*across as f64 - 1.0) / 2.0) * spacing_km;
                        let x = (x + length_km / 2.0).rem_euclid(*length_km) - length_km / 2.0;
                        out.push((
                            lat0 + (y / EARTH_RADIUS_KM).to_degrees(),
                            wrap_lon(
                                lon0 + (x / (EARTH_RADIUS_KM * lat0.to_radians().cos()))
                                    .to_degrees(),
                            ),
                        ));
                    }
                }
                out
            }
        }
    }
}

/// An observing network: stations (some withheld) and optionally a satellite.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Which network.
    pub kind: NetworkKind,
    /// Station sites, assimilated and withheld.
    pub stations: Vec<Station>,
    /// The satellite, if the network has one.
    pub satellite: Option<Satellite>,
}

impl Network {
    /// The observations this network makes of state `x` at cycle `cycle`, with errors drawn from
    /// `rng`: assimilated ones first, then the withheld verification ones.
    pub fn observe<R: Rng>(
        &self,
        space: &StateSpace,
        x: &[f64],
        cycle: u64,
        rng: &mut R,
    ) -> (Vec<Observation>, Vec<Observation>) {
        let mut assim = Vec::new();
        let mut verif = Vec::new();
        for s in &self.stations {
            for &(var, sigma) in &s.vars {
                let o = observe_one(
                    space,
                    x,
                    Modality::Station,
                    var,
                    s.lat,
                    s.lon,
                    Footprint::Point,
                    sigma,
                    rng,
                );
                if s.withheld {
                    verif.push(o);
                } else {
                    assim.push(o);
                }
            }
        }
        if let Some(sat) = &self.satellite {
            for (lat, lon) in sat.footprints(cycle) {
                let fp = Footprint::Disc {
                    diameter_km: sat.footprint_km,
                };
                assim.push(observe_one(
                    space,
                    x,
                    Modality::Satellite,
                    sat.var,
                    lat,
                    lon,
                    fp,
                    sat.sigma,
                    rng,
                ));
            }
        }
        (assim, verif)
    }
}

#[allow(clippy::too_many_arguments)]
fn observe_one<R: Rng>(
    space: &StateSpace,
    x: &[f64],
    modality: Modality,
    var: usize,
    lat: f64,
    lon: f64,
    footprint: Footprint,
    sigma: f64,
    rng: &mut R,
) -> Observation {
    let mut o = Observation {
        modality,
        var,
        lat,
        lon,
        footprint,
        value: 0.0,
        sigma,
    };
    // The sites are generated inside the domain, so the operator row always exists.
    let op = assimd_filter::obs::SparseOperator::for_observations(space, std::slice::from_ref(&o))
        .expect("network sites lie inside the domain");
    let mut y = [0.0];
    assimd_filter::obs::ObservationOperator::apply(&op, x, &mut y);
    let eps: f64 = StandardNormal.sample(rng);
    o.value = y[0] + sigma * eps;
    o
}

/// QG observation scalings (see the module docs).
pub mod qg_units {
    /// Coriolis parameter at 45°N used for the scalings, 1/s.
    pub const F0: f64 = 1.0e-4;
    /// Reference density, kg/m³.
    pub const RHO0: f64 = 1025.0;
    /// Stratification, K per metre of interface displacement.
    pub const GAMMA: f64 = 0.01;
}

/// A testbed: dynamics, state space, and the recipe for its networks and truths.
#[derive(Clone)]
pub struct Testbed {
    /// Which testbed.
    pub kind: TestbedKind,
    /// The forecast model (also the truth's model: a perfect-model OSSE).
    pub dynamics: Arc<dyn Dynamics>,
    /// Grid, fields and observable variables.
    pub space: StateSpace,
}

/// Seed of the fixed qg2l station sites.
const QG_SITE_SEED: u64 = 0x5175_0001;

impl Testbed {
    /// The testbed with its reference parameters (DESIGN §3).
    pub fn new(kind: TestbedKind) -> Testbed {
        match kind {
            TestbedKind::L96 => Testbed {
                kind,
                dynamics: Arc::new(Lorenz96::default()),
                space: StateSpace {
                    geometry: Geometry::Ring {
                        n: 40,
                        lat_deg: 45.0,
                        lat_tolerance_deg: 0.5,
                    },
                    fields: vec!["x".into()],
                    variables: vec![Variable {
                        name: "x".into(),
                        unit: "1".into(),
                        terms: vec![(0, 1.0)],
                    }],
                },
            },
            TestbedKind::Qg2l => Testbed::qg2l(QG_RESOLUTION).expect("the default resolution"),
        }
    }

    /// The qg2l testbed on an `n × n` grid, n one of [`QG_RESOLUTIONS`]: the default 64² box of
    /// 1000 km tiled (n/64)² times, i.e. the same grid spacing (15.6 km), physics and hence
    /// climatology on a box n/64 times as long, and networks of the same density
    /// ([`Testbed::network`]). The cost of a cycle grows with the grid at a fixed cost per point,
    /// as in an operational domain that grows, not a finer grid on the same domain.
    pub fn qg2l(n: usize) -> Result<Testbed, String> {
        if !QG_RESOLUTIONS.contains(&n) {
            return Err(format!(
                "qg2l resolution {n} is not available: use one of {QG_RESOLUTIONS:?} (grid points per side)"
            ));
        }
        let scale = (n / QG_RESOLUTION) as f64;
        let p = Qg2lParams {
            nx: n,
            ny: n,
            lx: 1.0e6 * scale,
            ly: 1.0e6 * scale,
            ..Qg2lParams::default()
        };
        let f1 = 1.0 / (p.rd * p.rd * (1.0 + p.delta));
        let g_reduced = qg_units::F0 * qg_units::F0 / (f1 * p.h1);
        let cp = qg_units::RHO0 * qg_units::F0 / 100.0;
        let ct = qg_units::GAMMA * qg_units::F0 / g_reduced;
        Ok(Testbed {
            kind: TestbedKind::Qg2l,
            dynamics: Arc::new(Qg2l::new(p)),
            space: StateSpace {
                geometry: Geometry::PeriodicBox {
                    nx: n,
                    ny: n,
                    length_km: 1000.0 * scale,
                    lat0_deg: 45.0,
                    lon0_deg: 10.0,
                },
                fields: vec!["psi1".into(), "psi2".into()],
                variables: vec![
                    Variable {
                        name: "pressure".into(),
                        unit: "hPa".into(),
                        terms: vec![(1, cp)],
                    },
                    Variable {
                        name: "temperature".into(),
                        unit: "K".into(),
                        terms: vec![(0, ct), (1, -ct)],
                    },
                    Variable {
                        name: "brightness_temperature".into(),
                        unit: "K".into(),
                        terms: vec![(0, ct), (1, -ct)],
                    },
                ],
            },
        })
    }

    /// qg2l: grid points per side divided by the default 64 (1 for l96).
    pub fn qg2l_scale(&self) -> usize {
        match self.space.geometry {
            Geometry::PeriodicBox { nx, .. } => nx / QG_RESOLUTION,
            _ => 1,
        }
    }

    /// The observing network `kind` of this testbed. `sparse` and `full` exist for l96 only.
    pub fn network(&self, kind: NetworkKind) -> Result<Network, String> {
        match self.kind {
            TestbedKind::L96 => Ok(self.l96_network(kind)),
            TestbedKind::Qg2l => match kind {
                NetworkKind::Full | NetworkKind::Sparse => {
                    Err(format!("network '{kind}' exists for l96 only: use stations, satellite or stations+satellite"))
                }
                _ => Ok(self.qg2l_network(kind)),
            },
        }
    }

    fn l96_network(&self, kind: NetworkKind) -> Network {
        let station = |i: usize, lon: f64, sigma: f64, withheld: bool| Station {
            id: format!("{}{:02}", if withheld { "V" } else { "S" }, i),
            lat: 45.0,
            lon: wrap_lon(lon),
            vars: vec![(0, sigma)],
            withheld,
        };
        let mut stations: Vec<Station> = match kind {
            NetworkKind::Full => (0..40)
                .map(|i| station(i, 9.0 * i as f64, 1.0, false))
                .collect(),
            NetworkKind::Sparse => (0..40)
                .step_by(2)
                .map(|i| station(i, 9.0 * i as f64, 1.5f64.sqrt(), false))
                .collect(),
            NetworkKind::Stations | NetworkKind::StationsSatellite => (0..40)
                .step_by(2)
                .map(|i| station(i, 9.0 * i as f64, 1.0, false))
                .collect(),
            NetworkKind::Satellite => Vec::new(),
        };
        stations.extend((0..4).map(|k| station(k, 4.5 + 90.0 * k as f64, 1.0, true)));
        let satellite = matches!(
            kind,
            NetworkKind::Satellite | NetworkKind::StationsSatellite
        )
        .then(|| Satellite {
            platform: "sat1".into(),
            instrument: "blk4".into(),
            var: 0,
            footprint_km: 4.0 * self.space.geometry.spacing_km(),
            sigma: 1.0,
            swath: Swath::Ring {
                n: 40,
                block: 4,
                blocks: 5,
                shift: 10,
            },
        });
        Network {
            kind,
            stations,
            satellite,
        }
    }

    fn qg2l_network(&self, kind: NetworkKind) -> Network {
        let (sig_p, sig_t, sig_bt) = QG_SIGMAS;
        let mut rng = ChaCha8Rng::seed_from_u64(QG_SITE_SEED);
        // Larger grids tile the 1000 km box: s² times the sites, a swath s times as wide and long.
        let s = self.qg2l_scale();
        let (lat0, lon0, half) = (45.0f64, 10.0f64, 500.0 * s as f64);
        let mut site = |k: usize, withheld: bool| {
            // Uniform in the box, kept 1 km from its edges.
            let x: f64 = rng.random_range(-half + 1.0..half - 1.0);
            let y: f64 = rng.random_range(-half + 1.0..half - 1.0);
            Station {
                id: format!("{}{:03}", if withheld { "QV" } else { "QS" }, k),
                lat: lat0 + (y / EARTH_RADIUS_KM).to_degrees(),
                lon: lon0 + (x / (EARTH_RADIUS_KM * lat0.to_radians().cos())).to_degrees(),
                vars: vec![(0, sig_p), (1, sig_t)],
                withheld,
            }
        };
        // Generate every site in a fixed order so that each network shares the same stations.
        let assimilated: Vec<Station> = (0..60 * s * s).map(|k| site(k, false)).collect();
        let withheld: Vec<Station> = (0..8 * s * s).map(|k| site(k, true)).collect();
        let mut stations = if matches!(kind, NetworkKind::Stations | NetworkKind::StationsSatellite)
        {
            assimilated
        } else {
            Vec::new()
        };
        stations.extend(withheld);
        let satellite = matches!(
            kind,
            NetworkKind::Satellite | NetworkKind::StationsSatellite
        )
        .then(|| Satellite {
            platform: "sat1".into(),
            instrument: "ir1".into(),
            var: 2,
            footprint_km: 60.0,
            sigma: sig_bt,
            swath: Swath::Band {
                length_km: 1000.0 * s as f64,
                lat0,
                lon0,
                across: 4 * s,
                along: 16 * s,
                spacing_km: 62.5,
                shift_km: 375.0 * s as f64,
            },
        });
        Network {
            kind,
            stations,
            satellite,
        }
    }

    /// A truth state on the attractor, different for every seed: l96 from F + U(-1, 1) noise spun up
    /// 2,000 steps (100 time units); qg2l from the committed spun-up state plus seeded white noise of
    /// 0.3 times its RMS, run [`QG_DECORRELATION_DAYS`] so that trajectories of different seeds have
    /// decorrelated (the large scales of this oceanic regime grow errors slowly: a small smooth
    /// perturbation e-folds in ~27 days).
    pub fn initial_truth(&self, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7275_7468);
        match self.kind {
            TestbedKind::L96 => {
                let mut x: Vec<f64> = (0..40).map(|_| 8.0 + rng.random_range(-1.0..1.0)).collect();
                self.dynamics.advance(&mut x, 2000);
                x
            }
            TestbedKind::Qg2l => {
                let mut x = crate::qg2l::tile(
                    &crate::qg2l::spun_up_state(),
                    QG_RESOLUTION,
                    self.qg2l_scale(),
                );
                let scale = 0.3 * assimd_filter::stats::rms(&x);
                for v in x.iter_mut() {
                    let e: f64 = StandardNormal.sample(&mut rng);
                    *v += scale * e;
                }
                let steps = (QG_DECORRELATION_DAYS * 86400.0 / self.dynamics.step_seconds()).round()
                    as usize;
                self.dynamics.advance(&mut x, steps);
                x
            }
        }
    }
}

/// qg2l observation error σ (pressure hPa, temperature K, brightness temperature K): about a sixth
/// of each quantity's climatological RMS (0.33 hPa, 0.24 K over 200 cycles; `qg2l-tools obs-stats`
/// in models/tools/qg2l_tools.rs prints them), the accuracy of good in-situ sensors relative to the
/// synoptic signal, a little worse for the satellite.
pub const QG_SIGMAS: (f64, f64, f64) = (0.05, 0.04, 0.05);

/// Climatological statistics of a testbed, per field (every field is statistically homogeneous in
/// space, so one mean and one standard deviation per field describe its climatology).
#[derive(Clone, Debug, PartialEq)]
pub struct Climatology {
    /// Mean per field.
    pub mean: Vec<f64>,
    /// Standard deviation per field.
    pub std: Vec<f64>,
}

impl Climatology {
    /// The mean as a full state vector.
    pub fn mean_state(&self, n_points: usize) -> Vec<f64> {
        self.mean
            .iter()
            .flat_map(|&m| std::iter::repeat_n(m, n_points))
            .collect()
    }

    /// The standard deviation as a full state vector.
    pub fn std_state(&self, n_points: usize) -> Vec<f64> {
        self.std
            .iter()
            .flat_map(|&s| std::iter::repeat_n(s, n_points))
            .collect()
    }
}

impl Testbed {
    /// Estimate the climatology from `cycles` cycles of one trajectory started from
    /// `initial_truth(seed)`, sampled every cycle and pooled over grid points.
    pub fn estimate_climatology(&self, seed: u64, cycles: usize) -> Climatology {
        let mut x = self.initial_truth(seed);
        let np = self.space.geometry.n_points();
        let nf = self.space.fields.len();
        let (mut s, mut s2) = (vec![0.0; nf], vec![0.0; nf]);
        for _ in 0..cycles {
            self.dynamics.forecast(&mut x);
            for f in 0..nf {
                for v in &x[f * np..(f + 1) * np] {
                    s[f] += v;
                    s2[f] += v * v;
                }
            }
        }
        let n = (cycles * np) as f64;
        let mean: Vec<f64> = s.iter().map(|v| v / n).collect();
        let std = s2
            .iter()
            .zip(&mean)
            .map(|(v, m)| (v / n - m * m).max(0.0).sqrt())
            .collect();
        Climatology { mean, std }
    }

    /// The testbed's climatology, estimated once by [`Self::estimate_climatology`] with
    /// [`CLIMATOLOGY_SEED`] (l96: 100,000 cycles; qg2l: 1,460 cycles = 2 years) and recorded here;
    /// a test re-estimates it.
    pub fn climatology(&self) -> Climatology {
        match self.kind {
            TestbedKind::L96 => Climatology {
                mean: vec![L96_CLIM.0],
                std: vec![L96_CLIM.1],
            },
            TestbedKind::Qg2l => Climatology {
                mean: vec![QG_CLIM.0, QG_CLIM.2],
                std: vec![QG_CLIM.1, QG_CLIM.3],
            },
        }
    }

    /// `n` states drawn from the climatology (independent of the truth of any experiment): one
    /// trajectory from `initial_truth(seed')`, sampled every `gap` cycles (l96: 50 cycles = 12.5
    /// days; qg2l: 120 cycles = 60 days, about twice the e-folding time of its large scales).
    pub fn climatological_draws(&self, n: usize, seed: u64) -> Vec<Vec<f64>> {
        let gap = match self.kind {
            TestbedKind::L96 => 50,
            TestbedKind::Qg2l => 120,
        };
        let mut x = self.initial_truth(seed ^ 0x6472_6177_0000_0000);
        (0..n)
            .map(|_| {
                self.dynamics
                    .advance(&mut x, gap * self.dynamics.steps_per_cycle());
                x.clone()
            })
            .collect()
    }
}

/// The qg2l grid's default points per side.
pub const QG_RESOLUTION: usize = 64;
/// qg2l grids available ([`Testbed::qg2l`]).
pub const QG_RESOLUTIONS: [usize; 3] = [64, 128, 256];

/// Days a perturbed qg2l state runs before it serves as a truth (about 1.2 s of computing).
pub const QG_DECORRELATION_DAYS: f64 = 360.0;

/// Seed of the climatology runs; never used as an experiment seed by the shipped configs.
pub const CLIMATOLOGY_SEED: u64 = 0xC11A_0000;

/// l96 climatology (mean, std) of `x`.
pub const L96_CLIM: (f64, f64) = (2.349, 3.643);
/// qg2l climatology (mean ψ1, std ψ1, mean ψ2, std ψ2) in m²/s.
pub const QG_CLIM: (f64, f64, f64, f64) = (0.0, 1532.2, 0.0, 322.1);

#[cfg(test)]
mod tests {
    use super::*;
    use assimd_filter::obs::{checks, Modality, ObsBatch};

    const ALL: [NetworkKind; 5] = [
        NetworkKind::Full,
        NetworkKind::Sparse,
        NetworkKind::Stations,
        NetworkKind::Satellite,
        NetworkKind::StationsSatellite,
    ];

    #[test]
    fn names_parse_and_print() {
        for n in ALL {
            assert_eq!(n.to_string().parse::<NetworkKind>().unwrap(), n);
        }
        assert_eq!("qg2l".parse::<TestbedKind>().unwrap(), TestbedKind::Qg2l);
        assert!("l63"
            .parse::<TestbedKind>()
            .unwrap_err()
            .contains("l96 or qg2l"));
        assert!(Testbed::new(TestbedKind::Qg2l)
            .network(NetworkKind::Sparse)
            .is_err());
    }

    #[test]
    fn l96_networks_have_the_designed_sizes() {
        let tb = Testbed::new(TestbedKind::L96);
        let x: Vec<f64> = (0..40).map(|i| i as f64).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let count = |k| {
            let (a, v) =
                tb.network(k)
                    .unwrap()
                    .observe(&tb.space, &x, 3, &mut ChaCha8Rng::seed_from_u64(0));
            (a.len(), v.len())
        };
        assert_eq!(count(NetworkKind::Full), (40, 4));
        assert_eq!(count(NetworkKind::Sparse), (20, 4));
        assert_eq!(count(NetworkKind::StationsSatellite), (25, 4));
        let sparse = tb.network(NetworkKind::Sparse).unwrap();
        assert!((sparse.stations[0].vars[0].1.powi(2) - 1.5).abs() < 1e-12);
        // The satellite's 5 blocks cover 20 consecutive points, 10 points further east each cycle.
        let sat = tb
            .network(NetworkKind::Satellite)
            .unwrap()
            .satellite
            .unwrap();
        assert_eq!(sat.footprints(0)[0], (45.0, 13.5));
        assert_eq!(sat.footprints(1)[0], (45.0, 103.5));
        let batch = ObsBatch::new(&tb.space, {
            let mut o = tb
                .network(NetworkKind::Satellite)
                .unwrap()
                .observe(&tb.space, &x, 0, &mut rng)
                .0;
            o.iter_mut().for_each(|o| o.value = 0.0);
            o
        })
        .unwrap();
        let mut y = vec![0.0; 5];
        assimd_filter::obs::ObservationOperator::apply(&batch.op, &x, &mut y);
        assert_eq!(y, vec![1.5, 5.5, 9.5, 13.5, 17.5]);
    }

    #[test]
    fn larger_qg2l_grids_keep_the_network_density() {
        let base = Testbed::new(TestbedKind::Qg2l);
        assert_eq!(Testbed::qg2l(64).unwrap().space, base.space);
        assert!(Testbed::qg2l(100).err().unwrap().contains("[64, 128, 256]"));
        for n in [128, 256] {
            let tb = Testbed::qg2l(n).unwrap();
            let s = n / 64;
            assert_eq!(tb.qg2l_scale(), s);
            assert_eq!(tb.space.geometry.n_points(), n * n);
            assert_eq!(
                tb.space.geometry.spacing_km(),
                base.space.geometry.spacing_km()
            );
            let net = tb.network(NetworkKind::StationsSatellite).unwrap();
            // Per 1000 km × 1000 km: 60 stations, 8 withheld, a swath of 64 footprints.
            assert_eq!(
                net.stations.iter().filter(|st| !st.withheld).count(),
                60 * s * s
            );
            assert_eq!(
                net.stations.iter().filter(|st| st.withheld).count(),
                8 * s * s
            );
            let ids: std::collections::BTreeSet<&str> =
                net.stations.iter().map(|st| st.id.as_str()).collect();
            assert_eq!(ids.len(), net.stations.len(), "station ids are unique");
            assert!(net
                .stations
                .iter()
                .all(|st| tb.space.geometry.contains(st.lat, st.lon)));
            // Each quarter of the box holds about a quarter of the stations (binomial, 3σ).
            let east = net
                .stations
                .iter()
                .filter(|st| !st.withheld && st.lon > 10.0)
                .count() as f64;
            let total = (60 * s * s) as f64;
            assert!(
                (east - total / 2.0).abs() < 3.0 * (total / 4.0).sqrt(),
                "{east} of {total} east of the centre"
            );
            let sat = net.satellite.as_ref().unwrap();
            for k in 0..8 {
                let fp = sat.footprints(k);
                assert_eq!(fp.len(), 64 * s * s);
                assert!(fp
                    .iter()
                    .all(|&(lat, lon)| tb.space.geometry.contains(lat, lon)));
            }
        }
    }

    #[test]
    fn qg2l_footprints_stay_inside_the_box_and_stations_are_fixed() {
        let tb = Testbed::new(TestbedKind::Qg2l);
        let net = tb.network(NetworkKind::StationsSatellite).unwrap();
        assert_eq!(net.stations.iter().filter(|s| !s.withheld).count(), 60);
        assert_eq!(net.stations.iter().filter(|s| s.withheld).count(), 8);
        assert_eq!(
            tb.network(NetworkKind::Stations).unwrap().stations[..60],
            net.stations[..60]
        );
        let sat = net.satellite.as_ref().unwrap();
        for k in 0..20 {
            let fp = sat.footprints(k);
            assert_eq!(fp.len(), 64);
            assert!(
                fp.iter()
                    .all(|&(lat, lon)| tb.space.geometry.contains(lat, lon)),
                "cycle {k}"
            );
        }
        assert_ne!(sat.footprints(0), sat.footprints(1));
    }

    #[test]
    fn every_network_operator_passes_the_adjoint_and_jacobian_tests() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for kind in [TestbedKind::L96, TestbedKind::Qg2l] {
            let tb = Testbed::new(kind);
            let x: Vec<f64> = (0..tb.space.dim())
                .map(|i| (0.37 * i as f64).sin() * 1e3)
                .collect();
            for net in ALL {
                let Ok(network) = tb.network(net) else {
                    continue;
                };
                for cycle in [0, 7] {
                    let (assim, verif) = network.observe(&tb.space, &x, cycle, &mut rng);
                    for obs in [assim, verif] {
                        let modalities: Vec<Modality> = obs.iter().map(|o| o.modality).collect();
                        let batch = ObsBatch::new(&tb.space, obs).unwrap();
                        let adj = checks::adjoint_mismatch(&batch.op, &x, &mut rng);
                        let jac = checks::jacobian_mismatch(&batch.op, &x, 1e-2, &mut rng);
                        assert!(
                            adj < 1e-12,
                            "{kind} {net} {modalities:?}: adjoint mismatch {adj}"
                        );
                        assert!(jac < 1e-8, "{kind} {net}: Jacobian mismatch {jac}");
                    }
                }
            }
        }
    }

    #[test]
    fn footprint_mean_of_a_constant_field_is_that_constant() {
        let tb = Testbed::new(TestbedKind::Qg2l);
        let net = tb.network(NetworkKind::Satellite).unwrap();
        // ψ1 - ψ2 = 1 m²/s everywhere: every footprint sees exactly the temperature coefficient.
        let x: Vec<f64> = (0..8192)
            .map(|i| if i < 4096 { 1.0 } else { 0.0 })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let obs = net.observe(&tb.space, &x, 2, &mut rng).0;
        let batch = ObsBatch::new(&tb.space, obs).unwrap();
        let mut y = vec![0.0; batch.len()];
        assimd_filter::obs::ObservationOperator::apply(&batch.op, &x, &mut y);
        let c = tb.space.variables[2].terms[0].1;
        assert!(y.iter().all(|v| (v - c).abs() < 1e-12 * c));
        // The 60 km disc on the 15.6 km grid holds about π·30²/15.6² ≈ 11.6 points.
        let sizes: Vec<usize> = batch.op.rows().iter().map(|r| r.len() / 2).collect();
        assert!(sizes.iter().all(|&n| (9..=16).contains(&n)), "{sizes:?}");
    }
}

#[cfg(test)]
mod climatology_tests {
    use super::*;

    /// Two-sided 99.9 % quantiles of Student's t with 7 and 5 degrees of freedom (any t table).
    const T_999_DOF7: f64 = 5.408;
    const T_999_DOF5: f64 = 6.869;

    #[test]
    fn recorded_climatology_matches_independent_estimates() {
        // The recorded values are one estimate (seed CLIMATOLOGY_SEED, `cycles` cycles). Re-running
        // that seed would only reproduce them, so the check uses k runs from other seeds, each
        // `cycles / k` long. The k estimates are independent (separate trajectories), so their
        // sample std s gives the standard error of one such run; a run k times longer (the recorded
        // one) has SE ≈ s/√k (valid while a short run is many decorrelation times: l96 625 time
        // units vs ~1; qg2l 121 days vs ~30), and so has the average of the k. Their difference has
        // SE s √(2/k), and |recorded - average| < t s √(2/k) with t the 99.9 % Student-t quantile
        // for k - 1 degrees of freedom.
        for (kind, cycles, k, t) in [
            (TestbedKind::L96, 100_000, 8, T_999_DOF7),
            (TestbedKind::Qg2l, 1_458, 6, T_999_DOF5),
        ] {
            let tb = Testbed::new(kind);
            let rec = tb.climatology();
            let runs: Vec<Climatology> = (1..=k as u64)
                .map(|i| tb.estimate_climatology(CLIMATOLOGY_SEED + i, cycles / k))
                .collect();
            let avg_sd = |xs: &[f64]| {
                let m = xs.iter().sum::<f64>() / xs.len() as f64;
                let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64;
                (m, var.sqrt())
            };
            for f in 0..rec.std.len() {
                let mut stats = vec![(
                    "std",
                    rec.std[f],
                    runs.iter().map(|c| c.std[f]).collect::<Vec<_>>(),
                )];
                if kind == TestbedKind::L96 {
                    stats.push((
                        "mean",
                        rec.mean[f],
                        runs.iter().map(|c| c.mean[f]).collect(),
                    ));
                }
                for (what, recorded, xs) in stats {
                    let (m, s) = avg_sd(&xs);
                    let band = t * s * (2.0 / k as f64).sqrt();
                    eprintln!("{kind} field {f} {what}: recorded {recorded}, runs {m:.4} ± {s:.4}, band {band:.4}");
                    assert!(
                        (recorded - m).abs() < band,
                        "{kind} field {f}: {what} recorded {recorded}, independent estimates {xs:?}"
                    );
                }
                if kind == TestbedKind::Qg2l {
                    // Exact: ψ is defined up to a constant and the model keeps its domain mean at 0
                    // (the inversion sets the k = 0 Fourier mode of ψ to zero), so every state, and any average of
                    // states, has mean 0 up to round-off.
                    assert_eq!(rec.mean[f], 0.0);
                    for c in &runs {
                        assert!(
                            c.mean[f].abs() < 1e-9 * rec.std[f],
                            "{kind} field {f}: mean {}",
                            c.mean[f]
                        );
                    }
                }
            }
        }
    }
}
