//! Local ensemble transform Kalman filter with Gaspari–Cohn R-localisation.

use super::{
    apply_weights, finite_size_inflation, gaspari_cohn, transform, Adaptive, Inflation,
    ObservedEnsemble,
};
use crate::analysis::Analysis;
use crate::ensemble::Ensemble;
use crate::geometry::{Geometry, StateSpace};
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
    /// Weight interpolation stride s (Yang et al. 2009): the transform is computed at every s-th
    /// grid point in each direction and interpolated (linearly on a ring, bilinearly in a box) in
    /// between; 1 = computed at every point (exact LETKF).
    pub stride: usize,
    /// Adaptive prior inflation at each grid point ([`Adaptive`]), on top of `inflation.rho`.
    pub adaptive: Adaptive,
    space: StateSpace,
    points_xy: Vec<(f64, f64)>,
}

impl Letkf {
    /// An LETKF on `space`.
    pub fn new(
        space: &StateSpace,
        half_width_km: f64,
        inflation: Inflation,
    ) -> Result<Self, FilterError> {
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
        Ok(Letkf {
            inflation,
            half_width_km,
            stride: 1,
            adaptive: Adaptive::Off,
            space: space.clone(),
            points_xy,
        })
    }

    /// With weight interpolation every `stride` grid points (see [`Letkf::stride`]); the grid size
    /// along each direction must be a multiple of it.
    pub fn with_stride(mut self, stride: usize) -> Result<Self, FilterError> {
        let dims = self.grid_dims();
        if stride == 0
            || !dims.0.is_multiple_of(stride)
            || !dims.1.is_multiple_of(stride.min(dims.1))
        {
            return Err(FilterError::InvalidParameter(format!(
                "weight interpolation stride must divide the grid size {dims:?} (1 = off), got {stride}"
            )));
        }
        self.stride = stride;
        Ok(self)
    }

    /// With adaptive inflation (see [`Letkf::adaptive`]).
    pub fn with_adaptive(mut self, adaptive: Adaptive) -> Result<Self, FilterError> {
        if let Adaptive::FiniteSize { xn } = adaptive {
            if !(xn.is_finite() && xn > 0.0) {
                return Err(FilterError::InvalidParameter(format!(
                    "the EnKF-N's hyperprior confidence xn must be > 0 (1 = agnostic), got {xn}"
                )));
            }
        }
        self.adaptive = adaptive;
        Ok(self)
    }

    /// (points along x, points along y); y = 1 on a ring.
    fn grid_dims(&self) -> (usize, usize) {
        match self.space.geometry {
            Geometry::Ring { n, .. } => (n, 1),
            Geometry::PeriodicBox { nx, ny, .. } => (nx, ny),
        }
    }

    /// The transform W (N × N) at horizontal point `p`.
    fn weights(
        &self,
        p: usize,
        n: usize,
        oe: &ObservedEnsemble,
        obs_xy: &[(f64, f64)],
        sigma: &[f64],
    ) -> DMatrix<f64> {
        let g = &self.space.geometry;
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
        if local.is_empty() {
            DMatrix::identity(n, n) * self.inflation.rho.sqrt()
        } else {
            let y = oe.y_anom.select_rows(local.iter());
            let d = DVector::from_iterator(local.len(), local.iter().map(|&j| oe.innovation[j]));
            let rho = match self.adaptive {
                Adaptive::Off => self.inflation.rho,
                // From the tapered R⁻¹: the information the point's analysis actually uses
                // (module docs of `adaptive`).
                Adaptive::FiniteSize { xn } => {
                    self.inflation.rho * finite_size_inflation(&y, &d, &rinv, xn)
                }
            };
            transform(&y, &d, &rinv, rho)
        }
    }

    /// The transform at every horizontal point: computed at the stride's coarse points and
    /// interpolated in between.
    fn all_weights(
        &self,
        n: usize,
        oe: &ObservedEnsemble,
        obs_xy: &[(f64, f64)],
        sigma: &[f64],
        parallel: bool,
    ) -> Vec<DMatrix<f64>> {
        let (nx, ny) = self.grid_dims();
        let s = self.stride;
        let (cx, cy) = (nx / s, (ny / s).max(1));
        let coarse_point = |c: usize| (c / cx) * s * nx + (c % cx) * s;
        let exact = |p: usize| self.weights(p, n, oe, obs_xy, sigma);
        let coarse: Vec<DMatrix<f64>> = if parallel {
            (0..cx * cy)
                .into_par_iter()
                .map(|c| exact(coarse_point(c)))
                .collect()
        } else {
            (0..cx * cy).map(|c| exact(coarse_point(c))).collect()
        };
        if s == 1 {
            return coarse;
        }
        let interp = |p: usize| {
            let (i, j) = (p % nx, p / nx);
            let (ci, fi) = (i / s, (i % s) as f64 / s as f64);
            let (cj, fj) = if ny == 1 {
                (0, 0.0)
            } else {
                (j / s, (j % s) as f64 / s as f64)
            };
            let (ci1, cj1) = ((ci + 1) % cx, (cj + 1) % cy);
            let mut w = &coarse[cj * cx + ci] * ((1.0 - fi) * (1.0 - fj));
            for (c, f) in [
                (cj * cx + ci1, fi * (1.0 - fj)),
                (cj1 * cx + ci, (1.0 - fi) * fj),
                (cj1 * cx + ci1, fi * fj),
            ] {
                if f > 0.0 {
                    w += &coarse[c] * f;
                }
            }
            w
        };
        if parallel {
            (0..nx * ny).into_par_iter().map(interp).collect()
        } else {
            (0..nx * ny).map(interp).collect()
        }
    }
}

impl Analysis for Letkf {
    fn name(&self) -> &'static str {
        "letkf"
    }

    fn analyse(
        &self,
        ens: &mut Ensemble,
        batch: &ObsBatch,
        _rng: &mut dyn RngCore,
    ) -> Result<(), FilterError> {
        if ens.n_members() < 2 {
            return Err(FilterError::InvalidParameter(
                "the LETKF needs at least 2 members".into(),
            ));
        }
        if ens.dim() != self.space.dim() {
            return Err(FilterError::Dimension(format!(
                "ensemble of length {} on a state of {}",
                ens.dim(),
                self.space.dim()
            )));
        }
        let background_std = ens.std();
        let g = &self.space.geometry;
        let oe = ObservedEnsemble::new(ens, batch);
        let obs_xy: Vec<(f64, f64)> = batch.obs.iter().map(|o| g.to_plane(o.lat, o.lon)).collect();
        let np = g.n_points();
        let n = ens.n_members();
        let nf = self.space.fields.len();
        // Each local analysis costs an N × N eigen-decomposition (~20 µs at N = 20): worth a thread
        // from a few hundred state values on.
        let parallel = np * n >= 512;
        let weights = self.all_weights(n, &oe, &obs_xy, &batch.sigma, parallel);
        let results: Vec<Vec<f64>> = {
            let ens_ref: &Ensemble = ens;
            let run = |p: usize| {
                let idx: Vec<usize> = (0..nf).map(|f| f * np + p).collect();
                let mut out = vec![0.0; nf * n];
                apply_weights(ens_ref, &idx, &weights[p], &mut out);
                out
            };
            if parallel {
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
