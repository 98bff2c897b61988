//! Local ensemble transform Kalman filter with Gaspari–Cohn R-localisation.

use super::adaptive::finite_size_from_eigen;
use super::{apply_weights_at, gaspari_cohn, Adaptive, Gram, Inflation, ObservedEnsemble};
use crate::analysis::Analysis;
use crate::ensemble::Ensemble;
use crate::geometry::{Geometry, StateSpace, EARTH_RADIUS_KM};
use crate::obs::ObsBatch;
use crate::FilterError;
use nalgebra::DMatrix;
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

    /// The transform W (N × N) at horizontal point `p` from its local observations, which
    /// `index` finds: observation j enters with R⁻¹ tapered by GC(distance / c).
    fn weights(&self, p: usize, n: usize, obs: &LocalObs, scratch: &mut Scratch) -> DMatrix<f64> {
        let g = &self.space.geometry;
        let Scratch {
            local,
            rinv,
            candidates,
            ..
        } = scratch;
        local.clear();
        rinv.clear();
        let xy = self.points_xy[p];
        let mut push = |j: usize| {
            let taper = if self.half_width_km.is_infinite() {
                1.0
            } else {
                gaspari_cohn(g.plane_distance_km(xy, obs.xy[j]) / self.half_width_km)
            };
            if taper > 0.0 {
                local.push(j);
                rinv.push(taper / (obs.sigma[j] * obs.sigma[j]));
            }
        };
        match &obs.index {
            None => (0..obs.xy.len()).for_each(push),
            Some(index) => {
                index.candidates(xy, candidates);
                candidates.iter().for_each(|&j| push(j as usize));
            }
        }
        if scratch.local.is_empty() {
            return DMatrix::identity(n, n) * self.inflation.rho.sqrt();
        }
        let eig = Gram::local_eigen(
            obs.yt,
            obs.d,
            &scratch.local,
            &scratch.rinv,
            n,
            &mut scratch.scaled,
        );
        let rho = match self.adaptive {
            Adaptive::Off => self.inflation.rho,
            // From the tapered R⁻¹: the information the point's analysis actually uses (module
            // docs of `adaptive`); the same eigen-decomposition as the transform's.
            Adaptive::FiniteSize { xn } => self.inflation.rho * finite_size_from_eigen(&eig, xn),
        };
        eig.transform(rho)
    }

    /// The transform at point `p` interpolated from the `coarse` transforms (computed every
    /// `stride` points): linearly on a ring, bilinearly in a box, into `w`.
    fn interpolated(&self, p: usize, coarse: &[DMatrix<f64>], w: &mut DMatrix<f64>) {
        let (nx, ny) = self.grid_dims();
        let s = self.stride;
        let (cx, cy) = (nx / s, (ny / s).max(1));
        let (i, j) = (p % nx, p / nx);
        let (ci, fi) = (i / s, (i % s) as f64 / s as f64);
        let (cj, fj) = if ny == 1 {
            (0, 0.0)
        } else {
            (j / s, (j % s) as f64 / s as f64)
        };
        let (ci1, cj1) = ((ci + 1) % cx, (cj + 1) % cy);
        w.copy_from(&coarse[cj * cx + ci]);
        *w *= (1.0 - fi) * (1.0 - fj);
        for (c, f) in [
            (cj * cx + ci1, fi * (1.0 - fj)),
            (cj1 * cx + ci, (1.0 - fi) * fj),
            (cj1 * cx + ci1, fi * fj),
        ] {
            if f > 0.0 {
                for (a, b) in w.iter_mut().zip(coarse[c].iter()) {
                    *a += f * b;
                }
            }
        }
    }
}

/// The cycle's observations as the local analyses read them.
struct LocalObs<'a> {
    /// Y's rows: observation j's N anomalies at `yt[j N .. (j + 1) N]`.
    yt: &'a [f64],
    /// Innovations d = y − ȳ.
    d: &'a [f64],
    /// Observation error standard deviations.
    sigma: &'a [f64],
    /// Positions on the plane.
    xy: &'a [(f64, f64)],
    /// Buckets for the search; `None` scans them all (infinite or domain-wide support).
    index: Option<ObsIndex>,
}

/// Per-thread scratch of the local analyses.
struct Scratch {
    local: Vec<usize>,
    rinv: Vec<f64>,
    candidates: Vec<u32>,
    scaled: Vec<f64>,
    vals: Vec<f64>,
    w: DMatrix<f64>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch {
            local: Vec::new(),
            rinv: Vec::new(),
            candidates: Vec::new(),
            scaled: Vec::new(),
            vals: vec![0.0; n],
            w: DMatrix::zeros(n, n),
        }
    }
}

/// Observations bucketed in cells on the periodic plane, so that each grid point's search for
/// its local observations reads only the cells within the localisation support instead of every
/// observation: the cost of the search grows with the local count, not with the grid times the
/// network. Cells are at least the support radius wide, so every observation within the support
/// of a point lies in the point's cell or a neighbouring one.
pub(super) struct ObsIndex {
    /// Cells along x and y (1 along y on a ring).
    cells: (usize, usize),
    /// Periods of the plane along x and y in km.
    period: (f64, f64),
    /// Observation indices per cell (`iy · cells.0 + ix`), ascending.
    buckets: Vec<Vec<u32>>,
}

impl ObsIndex {
    /// At most this many cells along an axis: past it the buckets cost more than they save.
    const MAX_CELLS: usize = 512;

    /// The index for support radius `radius_km`, or `None` where it would not prune (fewer than
    /// four cells along every axis: a point's neighbourhood would be the whole domain).
    pub(super) fn new(geometry: &Geometry, radius_km: f64, xy: &[(f64, f64)]) -> Option<Self> {
        if !radius_km.is_finite() {
            return None;
        }
        let (px, py, ring) = match *geometry {
            Geometry::Ring { lat_deg, .. } => (
                2.0 * std::f64::consts::PI * EARTH_RADIUS_KM * lat_deg.to_radians().cos(),
                1.0,
                true,
            ),
            Geometry::PeriodicBox { length_km, .. } => (length_km, length_km, false),
        };
        let count = |period: f64| ((period / radius_km).floor() as usize).clamp(1, Self::MAX_CELLS);
        let cells = (count(px), if ring { 1 } else { count(py) });
        if cells.0 < 4 && cells.1 < 4 {
            return None;
        }
        let mut index = ObsIndex {
            cells,
            period: (px, py),
            buckets: vec![Vec::new(); cells.0 * cells.1],
        };
        for (j, &p) in xy.iter().enumerate() {
            let (ix, iy) = index.cell(p);
            index.buckets[iy * cells.0 + ix].push(j as u32);
        }
        Some(index)
    }

    fn cell(&self, (x, y): (f64, f64)) -> (usize, usize) {
        let along = |v: f64, period: f64, k: usize| {
            ((v.rem_euclid(period) / period * k as f64) as usize).min(k - 1)
        };
        (
            along(x, self.period.0, self.cells.0),
            along(y, self.period.1, self.cells.1),
        )
    }

    /// The observations in the cells around `xy` (every one within the support radius and
    /// possibly more), ascending, into `out`.
    pub(super) fn candidates(&self, xy: (f64, f64), out: &mut Vec<u32>) {
        out.clear();
        let (ix, iy) = self.cell(xy);
        // The cells i − 1, i, i + 1 (mod k), or all k of them when k < 4 (then k ≤ 3).
        let around = |i: usize, k: usize| -> ([usize; 3], usize) {
            if k < 4 {
                ([0, 1, 2], k)
            } else {
                ([(i + k - 1) % k, i, (i + 1) % k], 3)
            }
        };
        let ((ys, ny), (xs, nx)) = (around(iy, self.cells.1), around(ix, self.cells.0));
        for &cy in &ys[..ny] {
            for &cx in &xs[..nx] {
                out.extend_from_slice(&self.buckets[cy * self.cells.0 + cx]);
            }
        }
        out.sort_unstable();
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
        let yt = oe.y_anom.transpose();
        let obs_xy: Vec<(f64, f64)> = batch.obs.iter().map(|o| g.to_plane(o.lat, o.lon)).collect();
        let obs = LocalObs {
            yt: yt.as_slice(),
            d: oe.innovation.as_slice(),
            sigma: &batch.sigma,
            xy: &obs_xy,
            index: ObsIndex::new(g, 2.0 * self.half_width_km, &obs_xy),
        };
        let np = g.n_points();
        let n = ens.n_members();
        let nf = self.space.fields.len();
        // Each local analysis costs an N × N eigen-decomposition (~10 µs at N = 20): worth a thread
        // from a few hundred state values on.
        let parallel = np * n >= 512;
        // With a stride, the transforms at the coarse points first.
        let coarse: Vec<DMatrix<f64>> = if self.stride == 1 {
            Vec::new()
        } else {
            let (nx, ny) = self.grid_dims();
            let s = self.stride;
            let (cx, cy) = (nx / s, (ny / s).max(1));
            let at = |sc: &mut Scratch, c: usize| {
                self.weights((c / cx) * s * nx + (c % cx) * s, n, &obs, sc)
            };
            if parallel {
                (0..cx * cy)
                    .into_par_iter()
                    .map_init(|| Scratch::new(n), at)
                    .collect()
            } else {
                let mut sc = Scratch::new(n);
                (0..cx * cy).map(|c| at(&mut sc, c)).collect()
            }
        };
        // Point-major output: the N analysis values of field f at point p at ((p nf + f) N ..).
        let mut out = vec![0.0; np * nf * n];
        let ens_ref: &Ensemble = ens;
        let local = |sc: &mut Scratch, (p, chunk): (usize, &mut [f64])| {
            let exact;
            let w = if self.stride == 1 {
                exact = self.weights(p, n, &obs, sc);
                &exact
            } else {
                self.interpolated(p, &coarse, &mut sc.w);
                &sc.w
            };
            for (f, vals) in chunk.chunks_exact_mut(n).enumerate() {
                apply_weights_at(ens_ref, f * np + p, w, &mut sc.vals, vals);
            }
        };
        if parallel {
            out.par_chunks_mut(nf * n)
                .enumerate()
                .for_each_init(|| Scratch::new(n), local);
        } else {
            let mut sc = Scratch::new(n);
            out.chunks_mut(nf * n)
                .enumerate()
                .for_each(|pc| local(&mut sc, pc));
        }
        let dim = ens.dim();
        let flat = ens.as_flat_mut();
        for (i, vals) in out.chunks_exact(n).enumerate() {
            // Row i of `out` is field i % nf at point i / nf: state element (i % nf) np + i / nf.
            let e = (i % nf) * np + i / nf;
            for (k, v) in vals.iter().enumerate() {
                flat[k * dim + e] = *v;
            }
        }
        self.inflation.relax(ens, &background_std);
        Ok(())
    }
}
