//! # Geometry and state layout
//!
//! Where the state's grid points sit on the Earth, and how an observed quantity is made of the state's
//! fields at a grid point. Observation operators and localisation are built from this alone.
//!
//! Two grids cover the testbeds:
//! - [`Geometry::Ring`]: `n` points equally spaced in longitude on one latitude circle (Lorenz-96 on
//!   45°N, point i at longitude `lon_step·i` wrapped to [-180, 180)). Distance along the circle is the
//!   small-circle arc length, R cos φ · Δλ.
//! - [`Geometry::PeriodicBox`]: an `nx × ny` doubly periodic square of side `length_km`, on the tangent
//!   plane at (lat0, lon0) (two-layer QG). A latitude/longitude maps to the plane by the local
//!   equirectangular projection x = R cos φ0 (λ - λ0), y = R (φ - φ0), with grid point (i, j) at
//!   x = -L/2 + (i + ½) Δx, y = -L/2 + (j + ½) Δy (cell centres, as in pyqg). Distances are the periodic (minimum-image) plane distance,
//!   which is the great-circle distance to within 0.1% over such a box and respects the periodicity.

use serde::{Deserialize, Serialize};

/// Mean Earth radius in km (IUGG).
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Bilinear (or linear, on a ring) interpolation weights: up to four grid points and their weights.
pub type Stencil = Vec<(usize, f64)>;

/// The grid on which a state field lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Geometry {
    /// Points equally spaced in longitude on a latitude circle.
    Ring {
        /// Number of points.
        n: usize,
        /// Latitude of the circle in degrees.
        lat_deg: f64,
        /// How far (in degrees of latitude) an observation may sit off the circle and still count
        /// as on it.
        lat_tolerance_deg: f64,
    },
    /// A doubly periodic square box on the tangent plane at (lat0, lon0).
    PeriodicBox {
        /// Grid points along x (east).
        nx: usize,
        /// Grid points along y (north).
        ny: usize,
        /// Side of the square in km.
        length_km: f64,
        /// Latitude of the centre in degrees.
        lat0_deg: f64,
        /// Longitude of the centre in degrees.
        lon0_deg: f64,
    },
}

/// Longitude wrapped to [-180, 180).
pub fn wrap_lon(lon: f64) -> f64 {
    let w = (lon + 180.0).rem_euclid(360.0) - 180.0;
    if w >= 180.0 {
        w - 360.0
    } else {
        w
    }
}

impl Geometry {
    /// Number of grid points of one field.
    pub fn n_points(&self) -> usize {
        match self {
            Geometry::Ring { n, .. } => *n,
            Geometry::PeriodicBox { nx, ny, .. } => nx * ny,
        }
    }

    /// Latitude and longitude (degrees) of grid point `p`.
    pub fn point_latlon(&self, p: usize) -> (f64, f64) {
        match self {
            Geometry::Ring { n, lat_deg, .. } => (*lat_deg, wrap_lon(360.0 * p as f64 / *n as f64)),
            Geometry::PeriodicBox { nx, .. } => {
                let (x, y) = self.point_xy_km(p % nx, p / nx);
                self.xy_to_latlon(x, y)
            }
        }
    }

    /// Plane coordinates (km) of box point (i, j); only meaningful for `PeriodicBox`.
    fn point_xy_km(&self, i: usize, j: usize) -> (f64, f64) {
        match self {
            Geometry::PeriodicBox {
                nx, ny, length_km, ..
            } => (
                -length_km / 2.0 + (i as f64 + 0.5) * length_km / *nx as f64,
                -length_km / 2.0 + (j as f64 + 0.5) * length_km / *ny as f64,
            ),
            Geometry::Ring { .. } => (0.0, 0.0),
        }
    }

    /// Plane coordinates (km) of a position: the local projection of the module docs for a box; the
    /// arc length east of longitude 0 along the circle (y = 0) for a ring.
    pub fn to_plane(&self, lat: f64, lon: f64) -> (f64, f64) {
        self.latlon_to_xy(lat, lon)
    }

    /// The periods (km) of the plane coordinates along x and y: the side of a periodic box on both;
    /// the circumference along x for a ring, whose y is always 0 (None).
    pub fn plane_periods_km(&self) -> (f64, Option<f64>) {
        match self {
            Geometry::Ring { lat_deg, .. } => (
                2.0 * std::f64::consts::PI * EARTH_RADIUS_KM * lat_deg.to_radians().cos(),
                None,
            ),
            Geometry::PeriodicBox { length_km, .. } => (*length_km, Some(*length_km)),
        }
    }

    /// Distance in km between two positions given in plane coordinates (see [`Self::to_plane`]);
    /// equal to [`Self::distance_km`] of the positions, without the trigonometry.
    pub fn plane_distance_km(&self, a: (f64, f64), b: (f64, f64)) -> f64 {
        match self {
            Geometry::Ring { lat_deg, .. } => {
                let c = 2.0 * std::f64::consts::PI * EARTH_RADIUS_KM * lat_deg.to_radians().cos();
                let d = (a.0 - b.0).rem_euclid(c);
                d.min(c - d)
            }
            Geometry::PeriodicBox { length_km, .. } => {
                let min_image = |d: f64| {
                    let d = d.rem_euclid(*length_km);
                    d.min(length_km - d)
                };
                min_image(a.0 - b.0).hypot(min_image(a.1 - b.1))
            }
        }
    }

    fn latlon_to_xy(&self, lat: f64, lon: f64) -> (f64, f64) {
        match self {
            Geometry::PeriodicBox {
                lat0_deg, lon0_deg, ..
            } => {
                let dlon = wrap_lon(lon - lon0_deg);
                (
                    EARTH_RADIUS_KM * lat0_deg.to_radians().cos() * dlon.to_radians(),
                    EARTH_RADIUS_KM * (lat - lat0_deg).to_radians(),
                )
            }
            Geometry::Ring { lat_deg, .. } => (
                EARTH_RADIUS_KM * lat_deg.to_radians().cos() * wrap_lon(lon).to_radians(),
                0.0,
            ),
        }
    }

    fn xy_to_latlon(&self, x: f64, y: f64) -> (f64, f64) {
        match self {
            Geometry::PeriodicBox {
                lat0_deg, lon0_deg, ..
            } => (
                lat0_deg + (y / EARTH_RADIUS_KM).to_degrees(),
                wrap_lon(
                    lon0_deg + (x / (EARTH_RADIUS_KM * lat0_deg.to_radians().cos())).to_degrees(),
                ),
            ),
            Geometry::Ring { lat_deg, .. } => (
                *lat_deg,
                wrap_lon((x / (EARTH_RADIUS_KM * lat_deg.to_radians().cos())).to_degrees()),
            ),
        }
    }

    /// Whether (lat, lon) lies inside the domain: on the circle (within the tolerance) for a ring,
    /// inside the box (closed on the low side, open on the high side) for a periodic box.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        if !(lat.is_finite() && lon.is_finite()) || lat.abs() > 90.0 || lon.abs() > 180.0 {
            return false;
        }
        match self {
            Geometry::Ring {
                lat_deg,
                lat_tolerance_deg,
                ..
            } => (lat - lat_deg).abs() <= *lat_tolerance_deg,
            Geometry::PeriodicBox { length_km, .. } => {
                let (x, y) = self.latlon_to_xy(lat, lon);
                let h = length_km / 2.0;
                (-h..h).contains(&x) && (-h..h).contains(&y)
            }
        }
    }

    /// Interpolation stencil at (lat, lon): linear along a ring, bilinear in a periodic box (both
    /// wrapping around). `None` outside the domain.
    pub fn stencil(&self, lat: f64, lon: f64) -> Option<Stencil> {
        if !self.contains(lat, lon) {
            return None;
        }
        match self {
            Geometry::Ring { n, .. } => {
                let s = wrap_lon(lon).rem_euclid(360.0) * *n as f64 / 360.0;
                let i0 = s.floor();
                let w = s - i0;
                let i0 = (i0 as usize) % n;
                Some(vec![(i0, 1.0 - w), ((i0 + 1) % n, w)])
            }
            Geometry::PeriodicBox {
                nx, ny, length_km, ..
            } => {
                let (x, y) = self.latlon_to_xy(lat, lon);
                let sx = (x + length_km / 2.0) * *nx as f64 / length_km - 0.5;
                let sy = (y + length_km / 2.0) * *ny as f64 / length_km - 0.5;
                let (fx, fy) = (sx.floor(), sy.floor());
                let (wx, wy) = (sx - fx, sy - fy);
                let i0 = (fx as i64).rem_euclid(*nx as i64) as usize;
                let j0 = (fy as i64).rem_euclid(*ny as i64) as usize;
                let (i1, j1) = ((i0 + 1) % nx, (j0 + 1) % ny);
                Some(vec![
                    (j0 * nx + i0, (1.0 - wx) * (1.0 - wy)),
                    (j0 * nx + i1, wx * (1.0 - wy)),
                    (j1 * nx + i0, (1.0 - wx) * wy),
                    (j1 * nx + i1, wx * wy),
                ])
            }
        }
    }

    /// Distance in km between two positions: arc length along the circle for a ring, the periodic
    /// (minimum-image) plane distance in a box.
    pub fn distance_km(&self, a: (f64, f64), b: (f64, f64)) -> f64 {
        self.plane_distance_km(self.latlon_to_xy(a.0, a.1), self.latlon_to_xy(b.0, b.1))
    }

    /// Grid points whose distance to (lat, lon) is at most `radius_km`.
    /// In a box only the rows and columns within `radius_km` (plus one spacing for rounding)
    /// are tested, so the cost is that of the disc, not of the grid; the test itself is the same
    /// for every point (the round trip through latitude and longitude included), and the points
    /// come in increasing order.
    pub fn points_within(&self, lat: f64, lon: f64, radius_km: f64) -> Vec<usize> {
        let c = self.latlon_to_xy(lat, lon);
        let inside = |p: &usize| {
            let (plat, plon) = self.point_latlon(*p);
            self.plane_distance_km(c, self.latlon_to_xy(plat, plon)) <= radius_km
        };
        match self {
            Geometry::PeriodicBox {
                nx, ny, length_km, ..
            } if radius_km.is_finite() && radius_km >= 0.0 => {
                // Indices within ± (radius + one spacing) of the centre's, wrapped; all of them when
                // the disc spans the box.
                let near = |n: usize, centre_km: f64| -> Vec<usize> {
                    let d = length_km / n as f64;
                    let reach = (radius_km / d).ceil() as i64 + 1;
                    if 2 * reach + 1 >= n as i64 {
                        return (0..n).collect();
                    }
                    let k = ((centre_km + length_km / 2.0) / d - 0.5).round() as i64;
                    (k - reach..=k + reach)
                        .map(|v| v.rem_euclid(n as i64) as usize)
                        .collect()
                };
                let (is, js) = (near(*nx, c.0), near(*ny, c.1));
                let mut out: Vec<usize> = js
                    .iter()
                    .flat_map(|&j| is.iter().map(move |&i| j * nx + i))
                    .filter(inside)
                    .collect();
                out.sort_unstable();
                out
            }
            _ => (0..self.n_points()).filter(inside).collect(),
        }
    }

    /// Typical grid spacing in km.
    pub fn spacing_km(&self) -> f64 {
        match self {
            Geometry::Ring { n, lat_deg, .. } => {
                2.0 * std::f64::consts::PI * EARTH_RADIUS_KM * lat_deg.to_radians().cos()
                    / *n as f64
            }
            Geometry::PeriodicBox { nx, length_km, .. } => length_km / *nx as f64,
        }
    }
}

/// An observable quantity: a linear combination of the state's fields at one grid point,
/// `value(p) = Σ_f c_f x[f · n_points + p]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Variable {
    /// Name used in observation messages (`x`, `pressure`, `temperature`, `brightness_temperature`).
    pub name: String,
    /// Physical unit, for documentation and the dashboards.
    pub unit: String,
    /// (field index, coefficient) pairs.
    pub terms: Vec<(usize, f64)>,
}

/// The state vector of a testbed: `n_fields` fields on one geometry, field-major
/// (`x[f · n_points + p]`), and the quantities observations may report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateSpace {
    /// The grid of every field.
    pub geometry: Geometry,
    /// Names of the fields, in state order.
    pub fields: Vec<String>,
    /// Observable quantities.
    pub variables: Vec<Variable>,
}

impl StateSpace {
    /// Length of the state vector.
    pub fn dim(&self) -> usize {
        self.fields.len() * self.geometry.n_points()
    }

    /// Index of the variable called `name`.
    pub fn variable(&self, name: &str) -> Option<usize> {
        self.variables.iter().position(|v| v.name == name)
    }

    /// The variable `var` evaluated at every grid point.
    pub fn variable_field(&self, var: usize, x: &[f64]) -> Vec<f64> {
        let np = self.geometry.n_points();
        let mut out = vec![0.0; np];
        for &(f, c) in &self.variables[var].terms {
            for (o, xi) in out.iter_mut().zip(&x[f * np..(f + 1) * np]) {
                *o += c * xi;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qbox() -> Geometry {
        Geometry::PeriodicBox {
            nx: 64,
            ny: 64,
            length_km: 1000.0,
            lat0_deg: 45.0,
            lon0_deg: 10.0,
        }
    }

    #[test]
    fn points_within_a_box_are_those_of_a_full_scan() {
        for (n, length_km) in [(64, 1000.0), (128, 2000.0)] {
            let g = Geometry::PeriodicBox {
                nx: n,
                ny: n,
                length_km,
                lat0_deg: 45.0,
                lon0_deg: 10.0,
            };
            let scan = |lat: f64, lon: f64, r: f64| -> Vec<usize> {
                let c = g.latlon_to_xy(lat, lon);
                (0..g.n_points())
                    .filter(|&p| {
                        let (plat, plon) = g.point_latlon(p);
                        g.plane_distance_km(c, g.latlon_to_xy(plat, plon)) <= r
                    })
                    .collect()
            };
            // Centres inside, at the edges (the disc wraps) and on grid points; radii from below
            // one spacing to more than the box.
            let mut k = 0u64;
            for r in [5.0, 30.0, 62.5, 400.0, 2.0 * length_km] {
                for &(fy, fx) in &[(0.0, 0.0), (0.49, -0.49), (-0.499, 0.3), (0.123, 0.377)] {
                    let (lat, lon) = g.xy_to_latlon(fx * length_km, fy * length_km);
                    assert_eq!(
                        g.points_within(lat, lon, r),
                        scan(lat, lon, r),
                        "n {n} r {r} at ({fy}, {fx})"
                    );
                    k += 1;
                }
                let p = g.point_latlon(77);
                assert_eq!(g.points_within(p.0, p.1, r), scan(p.0, p.1, r));
            }
            assert_eq!(k, 20);
            assert!(g.points_within(45.0, 10.0, 30.0).len() > 1);
        }
    }

    #[test]
    fn box_points_round_trip_through_latlon() {
        let g = qbox();
        for p in [0, 1, 63, 64, 2080, 4095] {
            let (lat, lon) = g.point_latlon(p);
            assert!(g.contains(lat, lon), "point {p} at {lat},{lon}");
            let st = g.stencil(lat, lon).unwrap();
            let w: f64 = st.iter().filter(|(q, _)| *q == p).map(|(_, w)| w).sum();
            assert!((w - 1.0).abs() < 1e-9, "point {p}: own weight {w}");
        }
    }

    #[test]
    fn box_extent_is_the_stated_square() {
        let g = qbox();
        // 500 km north of the centre is just outside, 499 km just inside.
        let dlat = |km: f64| (km / EARTH_RADIUS_KM).to_degrees();
        assert!(g.contains(45.0 + dlat(499.0), 10.0));
        assert!(!g.contains(45.0 + dlat(501.0), 10.0));
        assert!(!g.contains(f64::NAN, 10.0));
        // Distance across the periodic edge is short.
        let a = (45.0 + dlat(495.0), 10.0);
        let b = (45.0 - dlat(495.0), 10.0);
        assert!((g.distance_km(a, b) - 10.0).abs() < 1e-6);
    }

    #[test]
    fn ring_points_sit_every_nine_degrees() {
        let g = Geometry::Ring {
            n: 40,
            lat_deg: 45.0,
            lat_tolerance_deg: 0.5,
        };
        assert_eq!(g.point_latlon(1), (45.0, 9.0));
        assert_eq!(g.point_latlon(20), (45.0, -180.0));
        assert_eq!(g.point_latlon(39), (45.0, -9.0));
        let st = g.stencil(45.0, 13.5).unwrap();
        assert_eq!(st, vec![(1, 0.5), (2, 0.5)]);
        let st = g.stencil(45.0, -4.5).unwrap();
        assert_eq!(st, vec![(39, 0.5), (0, 0.5)]);
        let arc = g.spacing_km();
        assert!((g.distance_km(g.point_latlon(39), g.point_latlon(1)) - 2.0 * arc).abs() < 1e-9);
        assert!(!g.contains(47.0, 0.0));
    }
}
