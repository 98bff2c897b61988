//! Local ensemble transform Kalman filter with Gaspari–Cohn R-localisation.

use super::{apply_weights, gaspari_cohn, transform, Inflation, ObservedEnsemble};
use crate::analysis::Analysis;
use crate::ensemble::Ensemble;
use crate::geometry::StateSpace;
use crate::obs::ObsBatch;
use crate::FilterError;
use nalgebra::{DMatrix, DVector};
use rand::RngCore;
use rayon::prelude::*;

/// The LETKF of the module docs.
#[derive(Clone, Debug)]
pub struct Letkf {
    /// Inflation and RTPS.
    pub inflation: Inflation,
    /// Gaspari–Cohn half-width c in km: observations at distance d get R⁻¹ · GC(d / c), none
    /// beyond 2c. `f64::INFINITY` makes every point use every observation (the global ETKF).
    pub half_width_km: f64,
    space: StateSpace,
    points_xy: Vec<(f64, f64)>,
}

impl Letkf {
    /// An LETKF on `space`.
    pub fn new(space: &StateSpace, half_width_km: f64, inflation: Inflation) -> Result<Self, FilterError> {
        if half_width_km.is_nan() || half_width_km <= 0.0 {
            return Err(FilterError::InvalidParameter(format!(
                "localisation half-width must be > 0 km (infinite = global), got {half_width_km}"
            )));
        }
        let g = &space.geometry;
        let points_xy = (0..g.n_points())
            .map(|p| {
                let (lat, lon) = g.point_latlon(p);
                g.to_plane(lat, lon)
            })
            .collect();
        Ok(Letkf { inflation, half_width_km, space: space.clone(), points_xy })
    }

    /// The local analysis at horizontal point `p`: all fields' values for all members, field-major.
    fn local(&self, p: usize, ens: &Ensemble, oe: &ObservedEnsemble, obs_xy: &[(f64, f64)], sigma: &[f64]) -> Vec<f64> {
        let g = &self.space.geometry;
        let np = g.n_points();
        let n = ens.n_members();
        let idx: Vec<usize> = (0..self.space.fields.len()).map(|f| f * np + p).collect();
        let mut local = Vec::new();
        let mut rinv = Vec::new();
        for (j, xy) in obs_xy.iter().enumerate() {
            let taper = if self.half_width_km.is_infinite() {
                1.0
            } else {
                gaspari_cohn(g.plane_distance_km(self.points_xy[p], *xy) / self.half_width_km)
            };
            if taper > 0.0 {
                local.push(j);
                rinv.push(taper / (sigma[j] * sigma[j]));
            }
        }
        let w = if local.is_empty() {
            DMatrix::identity(n, n) * self.inflation.rho.sqrt()
        } else {
            let y = oe.y_anom.select_rows(local.iter());
            let d = DVector::from_iterator(local.len(), local.iter().map(|&j| oe.innovation[j]));
            transform(&y, &d, &rinv, self.inflation.rho)
        };
        let mut out = vec![0.0; idx.len() * n];
        apply_weights(ens, &idx, &w, &mut out);
        out
    }
}

impl Analysis for Letkf {
    fn name(&self) -> &'static str {
        "letkf"
    }

    fn analyse(&self, ens: &mut Ensemble, batch: &ObsBatch, _rng: &mut dyn RngCore) -> Result<(), FilterError> {
        if ens.n_members() < 2 {
            return Err(FilterError::InvalidParameter("the LETKF needs at least 2 members".into()));
        }
        if ens.dim() != self.space.dim() {
            return Err(FilterError::Dimension(format!("ensemble of length {} on a state of {}", ens.dim(), self.space.dim())));
        }
        let background_std = ens.std();
        let g = &self.space.geometry;
        let oe = ObservedEnsemble::new(ens, batch);
        let obs_xy: Vec<(f64, f64)> = batch.obs.iter().map(|o| g.to_plane(o.lat, o.lon)).collect();
        let np = g.n_points();
        let n = ens.n_members();
        let results: Vec<Vec<f64>> = {
            let ens_ref: &Ensemble = ens;
            let run = |p| self.local(p, ens_ref, &oe, &obs_xy, &batch.sigma);
            if np * n >= 4096 {
                (0..np).into_par_iter().map(run).collect()
            } else {
                (0..np).map(run).collect()
            }
        };
        for (p, vals) in results.iter().enumerate() {
            for (f, fvals) in vals.chunks_exact(n).enumerate() {
                for (k, v) in fvals.iter().enumerate() {
                    ens.member_mut(k)[f * np + p] = *v;
                }
            }
        }
        self.inflation.relax(ens, &background_std);
        Ok(())
    }
}
