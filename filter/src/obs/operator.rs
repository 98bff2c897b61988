//! The observation operator trait and the sparse linear operator of stations and footprints.

use super::{Footprint, Observation};
use crate::geometry::StateSpace;
use crate::FilterError;

/// An observation operator H: state (length n) -> observation space (length m), with its tangent
/// linear and adjoint at a linearisation point. For linear operators `x` is ignored.
pub trait ObservationOperator: Send + Sync {
    /// Number of observations m.
    fn n_obs(&self) -> usize;
    /// State length n.
    fn state_dim(&self) -> usize;
    /// y = H(x).
    fn apply(&self, x: &[f64], y: &mut [f64]);
    /// dy = H'(x) dx.
    fn tangent(&self, x: &[f64], dx: &[f64], dy: &mut [f64]);
    /// dx = H'(x)^T dy (overwrites dx).
    fn adjoint(&self, x: &[f64], dy: &[f64], dx: &mut [f64]);
}

/// A linear operator stored row by row as (state index, weight) pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseOperator {
    n: usize,
    rows: Vec<Vec<(usize, f64)>>,
}

impl SparseOperator {
    /// From explicit rows. Indices must be below `n`.
    pub fn from_rows(n: usize, rows: Vec<Vec<(usize, f64)>>) -> Result<Self, FilterError> {
        if let Some(bad) = rows
            .iter()
            .flatten()
            .find(|(i, w)| *i >= n || !w.is_finite())
        {
            return Err(FilterError::InvalidOperator(format!(
                "row entry ({}, {}) outside a state of length {n} or not finite",
                bad.0, bad.1
            )));
        }
        Ok(SparseOperator { n, rows })
    }

    /// Station interpolation and footprint means for `obs` (see the module docs of `obs`).
    pub fn for_observations(space: &StateSpace, obs: &[Observation]) -> Result<Self, FilterError> {
        let g = &space.geometry;
        let np = g.n_points();
        let rows = obs
            .iter()
            .map(|o| {
                let var = space.variables.get(o.var).ok_or_else(|| {
                    FilterError::InvalidObservation(format!("variable index {} unknown", o.var))
                })?;
                let outside = || {
                    FilterError::InvalidObservation(format!(
                        "({}, {}) is outside the domain",
                        o.lat, o.lon
                    ))
                };
                let points: Vec<(usize, f64)> = match o.footprint {
                    Footprint::Point => g.stencil(o.lat, o.lon).ok_or_else(outside)?,
                    Footprint::Disc { diameter_km } => {
                        if !g.contains(o.lat, o.lon) {
                            return Err(outside());
                        }
                        let inside = g.points_within(o.lat, o.lon, diameter_km / 2.0);
                        if inside.is_empty() {
                            g.stencil(o.lat, o.lon).ok_or_else(outside)?
                        } else {
                            let w = 1.0 / inside.len() as f64;
                            inside.into_iter().map(|p| (p, w)).collect()
                        }
                    }
                };
                let mut row = Vec::with_capacity(points.len() * var.terms.len());
                for &(f, c) in &var.terms {
                    for &(p, w) in &points {
                        if w != 0.0 {
                            row.push((f * np + p, c * w));
                        }
                    }
                }
                Ok(row)
            })
            .collect::<Result<Vec<_>, FilterError>>()?;
        SparseOperator::from_rows(space.dim(), rows)
    }

    /// The rows, (state index, weight) per observation.
    pub fn rows(&self) -> &[Vec<(usize, f64)>] {
        &self.rows
    }
}

impl ObservationOperator for SparseOperator {
    fn n_obs(&self) -> usize {
        self.rows.len()
    }

    fn state_dim(&self) -> usize {
        self.n
    }

    fn apply(&self, x: &[f64], y: &mut [f64]) {
        for (yk, row) in y.iter_mut().zip(&self.rows) {
            *yk = row.iter().map(|&(i, w)| w * x[i]).sum();
        }
    }

    fn tangent(&self, _x: &[f64], dx: &[f64], dy: &mut [f64]) {
        self.apply(dx, dy);
    }

    fn adjoint(&self, _x: &[f64], dy: &[f64], dx: &mut [f64]) {
        dx.fill(0.0);
        for (dyk, row) in dy.iter().zip(&self.rows) {
            for &(i, w) in row {
                dx[i] += w * dyk;
            }
        }
    }
}

/// Checks every operator must pass, shared by the tests of the operators and of the testbeds.
pub mod checks {
    use super::ObservationOperator;
    use rand::Rng;

    /// Relative mismatch of the dot-product test <H' dx, dy> = <dx, H'^T dy> at a random point.
    pub fn adjoint_mismatch<R: Rng>(op: &dyn ObservationOperator, x: &[f64], rng: &mut R) -> f64 {
        let dx: Vec<f64> = (0..op.state_dim())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let dy: Vec<f64> = (0..op.n_obs())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut hdx = vec![0.0; op.n_obs()];
        op.tangent(x, &dx, &mut hdx);
        let mut htdy = vec![0.0; op.state_dim()];
        op.adjoint(x, &dy, &mut htdy);
        let lhs: f64 = hdx.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let rhs: f64 = dx.iter().zip(&htdy).map(|(a, b)| a * b).sum();
        (lhs - rhs).abs() / lhs.abs().max(rhs.abs()).max(f64::MIN_POSITIVE)
    }

    /// Relative error of the tangent linear against centred finite differences of `apply`
    /// along a random direction, with step `eps`.
    pub fn jacobian_mismatch<R: Rng>(
        op: &dyn ObservationOperator,
        x: &[f64],
        eps: f64,
        rng: &mut R,
    ) -> f64 {
        let dx: Vec<f64> = (0..op.state_dim())
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let plus: Vec<f64> = x.iter().zip(&dx).map(|(a, d)| a + eps * d).collect();
        let minus: Vec<f64> = x.iter().zip(&dx).map(|(a, d)| a - eps * d).collect();
        let (mut yp, mut ym, mut tl) = (
            vec![0.0; op.n_obs()],
            vec![0.0; op.n_obs()],
            vec![0.0; op.n_obs()],
        );
        op.apply(&plus, &mut yp);
        op.apply(&minus, &mut ym);
        op.tangent(x, &dx, &mut tl);
        let num: f64 = yp
            .iter()
            .zip(&ym)
            .zip(&tl)
            .map(|((p, m), t)| ((p - m) / (2.0 * eps) - t).powi(2))
            .sum();
        let den: f64 = tl.iter().map(|t| t * t).sum();
        (num / den.max(f64::MIN_POSITIVE)).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::{Geometry, StateSpace, Variable};
    use crate::obs::Modality;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ring() -> StateSpace {
        StateSpace {
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
        }
    }

    fn obs(var: usize, lat: f64, lon: f64, footprint: Footprint) -> Observation {
        Observation {
            modality: Modality::Station,
            var,
            lat,
            lon,
            footprint,
            value: 0.0,
            sigma: 1.0,
        }
    }

    #[test]
    fn station_on_a_grid_point_reads_that_point() {
        let s = ring();
        let op =
            SparseOperator::for_observations(&s, &[obs(0, 45.0, 18.0, Footprint::Point)]).unwrap();
        let x: Vec<f64> = (0..40).map(|i| i as f64).collect();
        let mut y = [0.0];
        op.apply(&x, &mut y);
        assert!((y[0] - 2.0).abs() < 1e-12);
    }

    #[test]
    fn four_point_block_mean_on_the_ring() {
        let s = ring();
        let arc = s.geometry.spacing_km();
        // Centred between points 1 and 2 (longitude 13.5), 4 spacings wide: points 0..=3.
        let op = SparseOperator::for_observations(
            &s,
            &[obs(
                0,
                45.0,
                13.5,
                Footprint::Disc {
                    diameter_km: 4.0 * arc,
                },
            )],
        )
        .unwrap();
        let x: Vec<f64> = (0..40).map(|i| (i * i) as f64).collect();
        let mut y = [0.0];
        op.apply(&x, &mut y);
        assert!((y[0] - (0.0 + 1.0 + 4.0 + 9.0) / 4.0).abs() < 1e-12);
    }

    #[test]
    fn outside_the_domain_is_an_error() {
        let s = ring();
        assert!(
            SparseOperator::for_observations(&s, &[obs(0, 50.0, 0.0, Footprint::Point)]).is_err()
        );
        assert!(
            SparseOperator::for_observations(&s, &[obs(3, 45.0, 0.0, Footprint::Point)]).is_err()
        );
    }

    #[test]
    fn sparse_operator_passes_adjoint_and_jacobian_checks() {
        let s = ring();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let o: Vec<_> = (0..30)
            .map(|k| obs(0, 45.0, -179.0 + 11.7 * k as f64, Footprint::Point))
            .collect();
        let op = SparseOperator::for_observations(&s, &o).unwrap();
        let x: Vec<f64> = (0..40).map(|i| (i as f64).sin()).collect();
        assert!(checks::adjoint_mismatch(&op, &x, &mut rng) < 1e-12);
        assert!(checks::jacobian_mismatch(&op, &x, 1e-3, &mut rng) < 1e-9);
    }
}
