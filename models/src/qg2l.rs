//! # Two-layer QG model
//!
//! Two-layer quasi-geostrophic turbulence on a doubly periodic `nx x ny` grid (default 64 x 64 on a
//! 1000 km box), pseudo-spectral in space, driven by baroclinic instability of an imposed vertical
//! shear `U1 - U2` and damped by linear bottom (Ekman) drag and an exponential small-scale filter.
//! It reproduces the equations, parameters, grid conventions and filter of pyqg's `QGModel`
//! (pyqg 0.7.2); only the time stepper differs (classic RK4 instead of pyqg's AB3, so that every
//! call of [`Dynamics::advance`] is self-starting and an ensemble member can be advanced from any
//! analysis).
//!
//! ## Equations
//!
//! Layers `i = 1` (upper, thickness `H1`) and `i = 2` (lower, `H2 = H1 / delta`), `H = H1 + H2`.
//! The state is the streamfunction `psi_i` (m²/s); the prognostic variable is the PV anomaly
//!
//! ```text
//! q1 = lap psi1 + F1 (psi2 - psi1),     F1 = 1 / (rd² (1 + delta))
//! q2 = lap psi2 + F2 (psi1 - psi2),     F2 = delta F1
//! ```
//!
//! evolving as
//!
//! ```text
//! dq_i/dt + J(psi_i, q_i) + U_i dq_i/dx + Qy_i dpsi_i/dx = ssd                  (i = 1)
//!                                                       = ssd - rek lap psi2   (i = 2)
//! Qy1 = beta + F1 (U1 - U2),   Qy2 = beta - F2 (U1 - U2)
//! ```
//!
//! with `u = -dpsi/dy`, `v = dpsi/dx`. In spectral form (pyqg's kernel, `k` along x, `l` along y):
//!
//! ```text
//! dq_ih/dt = -i k FFT((u_i + U_i) q_i) - i l FFT(v_i q_i) - i k Qy_i psi_ih  [+ rek (k² + l²) psi_2h]
//! ```
//!
//! The small-scale dissipation `ssd` is pyqg's exponential filter (Arbic & Flierl 2003), multiplied
//! into `q_h` after every full time step: with `cphi = 0.65 pi` and `wvx = sqrt((k dx)² + (l dy)²)`,
//! `filtr = exp(-filterfac (wvx - cphi)^4)` for `wvx > cphi`, else 1. Optionally ([`Qg2lParams::dealias`])
//! the tendency is truncated with the 2/3 rule, which makes the semi-discrete inviscid dynamics an
//! exact Galerkin truncation. The `k = l = 0` mode of `q` and `psi` is held at zero.
//!
//! Spectral conventions follow numpy/pyqg: unnormalised forward real-to-complex 2-D FFT, inverse
//! divided by `nx ny`, wavenumbers `k = 2 pi / L * (0..=nx/2)`, `l = 2 pi / W * (0, 1, .., ny/2 - 1,
//! -ny/2, .., -1)`. Grid point `(i, j)` sits at `x = (i + 0.5) dx`, `y = (j + 0.5) dy`; a layer is
//! stored row-major as `j * nx + i` (x index fastest, as pyqg's `[layer, y, x]`).
//!
//! ## Diagnostics
//!
//! Domain means, `< >`, weighted by layer thickness:
//!
//! ```text
//! energy    E = sum_i H_i/H 0.5 <|grad psi_i|²>  +  0.5 (H1/H) F1 <(psi1 - psi2)²>
//!             = -0.5 sum_i H_i/H <psi_i q_i>                           (H1 F1 = H2 F2)
//! enstrophy Z = sum_i H_i/H 0.5 <q_i²>
//! ```
//!
//! Both are exact quadratic invariants of the inviscid, unforced (`U1 = U2`, `rek = 0`) equations
//! (with or without `beta`), and of their 2/3-dealiased Galerkin truncation; see the test
//! `inviscid_conserves_energy_and_enstrophy`. Both are computed spectrally with Parseval's identity.
//!
//! ## Time stepping
//!
//! Classic 4th-order Runge-Kutta on `q_h`; after each full step `q_h <- filtr * q_h` (as pyqg does
//! after its AB3 step). Scratch memory is allocated once per [`Dynamics::advance`] call.
//!
//! ## References
//!
//! - G. R. Flierl (1978): Models of vertical structure and the calibration of two-layer models.
//!   Dyn. Atmos. Oceans 2, 341-381.
//! - G. K. Vallis (2017): Atmospheric and Oceanic Fluid Dynamics, 2nd ed., ch. 5.6 and 12.
//! - B. K. Arbic, G. R. Flierl (2003): Coherent vortices and kinetic energy ribbons in asymptotic,
//!   quasi two-dimensional f-plane turbulence. Phys. Fluids 15, 2177 (the exponential filter).
//! - pyqg documentation, "Two-layer model" equations and `pyqg.QGModel` API,
//!   <https://pyqg.readthedocs.io/>; source `pyqg/qg_model.py`, `pyqg/model.py`, `pyqg/kernel.pyx`.

#![allow(clippy::needless_range_loop)] // index loops over matching spectral arrays read best

use std::f64::consts::PI;
use std::path::Path;
use std::sync::Arc;

use assimd_filter::Dynamics;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use rustfft::num_complex::Complex64 as C64;
use rustfft::{Fft, FftPlanner};

/// Parameters of the two-layer QG model; `Default` = pyqg 0.7.2 `QGModel` defaults (DESIGN §3).
#[derive(Clone, Debug, PartialEq)]
pub struct Qg2lParams {
    /// Grid points in x.
    pub nx: usize,
    /// Grid points in y.
    pub ny: usize,
    /// Domain length in x (m).
    pub lx: f64,
    /// Domain length in y (m).
    pub ly: f64,
    /// Meridional gradient of the Coriolis parameter (1/(m s)).
    pub beta: f64,
    /// Deformation radius (m).
    pub rd: f64,
    /// Layer thickness ratio H1/H2.
    pub delta: f64,
    /// Upper layer thickness (m).
    pub h1: f64,
    /// Upper layer background zonal flow (m/s).
    pub u1: f64,
    /// Lower layer background zonal flow (m/s).
    pub u2: f64,
    /// Linear bottom drag on the lower layer (1/s).
    pub rek: f64,
    /// Time step (s).
    pub dt: f64,
    /// Strength of the exponential small-scale filter.
    pub filterfac: f64,
    /// Apply the exponential filter after each step (pyqg always does).
    pub filter: bool,
    /// Truncate the tendency with the 2/3 rule (not in pyqg).
    pub dealias: bool,
    /// Model steps per assimilation cycle.
    pub steps_per_cycle: usize,
    /// Reference Coriolis parameter (1/s), only for observation scalings.
    pub f0: f64,
}

impl Default for Qg2lParams {
    fn default() -> Self {
        Qg2lParams {
            nx: 64,
            ny: 64,
            lx: 1.0e6,
            ly: 1.0e6,
            beta: 1.5e-11,
            rd: 15_000.0,
            delta: 0.25,
            h1: 500.0,
            u1: 0.025,
            u2: 0.0,
            rek: 5.787e-7,
            dt: 7200.0,
            filterfac: 23.6,
            filter: true,
            dealias: false,
            steps_per_cycle: 6,
            f0: 1.0e-4,
        }
    }
}

/// The two-layer QG model with precomputed wavenumbers, inversion matrix, filter and FFT plans.
///
/// Spectral arrays are stored transposed, `[k][l]` (index `ik * ny + jl`), so that the column FFTs
/// along y are contiguous.
pub struct Qg2l {
    p: Qg2lParams,
    nx: usize,
    ny: usize,
    nk: usize,
    f1: f64,
    f2: f64,
    qy: [f64; 2],
    ubg: [f64; 2],
    /// H_i / H.
    hw: [f64; 2],
    kk: Vec<f64>,
    ll: Vec<f64>,
    k2l2: Vec<f64>,
    /// Inversion psi_h = a q_h.
    a: [Vec<f64>; 4],
    /// Filter (all ones if disabled) times the dealiasing mask (if enabled).
    filtr: Vec<f64>,
    /// Dealiasing mask (all ones if disabled).
    mask: Vec<f64>,
    /// Parseval weights of the half spectrum (1 for k = 0 and k = nx/2, else 2) / (nx ny)².
    pw: Vec<f64>,
    r2c: Arc<dyn RealToComplex<f64>>,
    c2r: Arc<dyn ComplexToReal<f64>>,
    fwd: Arc<dyn Fft<f64>>,
    inv: Arc<dyn Fft<f64>>,
}

/// Scratch memory of one `advance` / diagnostic call.
struct Work {
    row_r: Vec<f64>,
    row_c: Vec<C64>,
    rs: Vec<C64>,
    cs: Vec<C64>,
    fs: Vec<C64>,
    spec: Vec<C64>,
    ph: Vec<C64>,
    uh: Vec<C64>,
    u: Vec<f64>,
    v: Vec<f64>,
    q: Vec<f64>,
}

impl Qg2l {
    /// Build the model: wavenumbers, inversion matrices, filter, FFT plans.
    pub fn new(params: Qg2lParams) -> Qg2l {
        let (nx, ny) = (params.nx, params.ny);
        assert!(
            nx >= 4 && ny >= 4 && nx % 2 == 0 && ny % 2 == 0,
            "qg2l: nx, ny must be even"
        );
        let nk = nx / 2 + 1;
        let f1 = 1.0 / (params.rd * params.rd * (1.0 + params.delta));
        let f2 = params.delta * f1;
        let du = params.u1 - params.u2;
        let qy = [params.beta + f1 * du, params.beta - f2 * du];
        let h2 = params.h1 / params.delta;
        let h = params.h1 + h2;
        let dk = 2.0 * PI / params.lx;
        let dl = 2.0 * PI / params.ly;
        let kk: Vec<f64> = (0..nk).map(|i| dk * i as f64).collect();
        let ll: Vec<f64> = (0..ny)
            .map(|j| {
                if j < ny / 2 {
                    dl * j as f64
                } else {
                    dl * (j as f64 - ny as f64)
                }
            })
            .collect();
        let dx = params.lx / nx as f64;
        let dy = params.ly / ny as f64;
        let ns = nk * ny;
        let mut k2l2 = vec![0.0; ns];
        let mut a = [vec![0.0; ns], vec![0.0; ns], vec![0.0; ns], vec![0.0; ns]];
        let mut filtr = vec![1.0; ns];
        let mut mask = vec![1.0; ns];
        let mut pw = vec![0.0; ns];
        let norm = 1.0 / ((nx * ny) as f64 * (nx * ny) as f64);
        let cphi = 0.65 * PI;
        for ik in 0..nk {
            for jl in 0..ny {
                let s = ik * ny + jl;
                let (k, l) = (kk[ik], ll[jl]);
                let wv2 = k * k + l * l;
                k2l2[s] = wv2;
                let det = wv2 * (wv2 + f1 + f2);
                if det != 0.0 {
                    let di = 1.0 / det;
                    a[0][s] = -(wv2 + f2) * di;
                    a[1][s] = -f1 * di;
                    a[2][s] = -f2 * di;
                    a[3][s] = -(wv2 + f1) * di;
                }
                if params.filter {
                    let wvx = ((k * dx).powi(2) + (l * dy).powi(2)).sqrt();
                    if wvx > cphi {
                        filtr[s] = (-params.filterfac * (wvx - cphi).powi(4)).exp();
                    }
                }
                if params.dealias {
                    // Keep |k| < nx/3 and |l| < ny/3 (2/3 rule).
                    let ki = ik as f64;
                    let li = if jl < ny / 2 {
                        jl as f64
                    } else {
                        (ny - jl) as f64
                    };
                    if 3.0 * ki >= nx as f64 || 3.0 * li >= ny as f64 {
                        mask[s] = 0.0;
                    }
                }
                filtr[s] *= mask[s];
                pw[s] = if ik == 0 || ik == nk - 1 {
                    norm
                } else {
                    2.0 * norm
                };
            }
        }
        let mut rp = RealFftPlanner::<f64>::new();
        let r2c = rp.plan_fft_forward(nx);
        let c2r = rp.plan_fft_inverse(nx);
        let mut cp = FftPlanner::<f64>::new();
        let fwd = cp.plan_fft_forward(ny);
        let inv = cp.plan_fft_inverse(ny);
        Qg2l {
            nx,
            ny,
            nk,
            f1,
            f2,
            qy,
            ubg: [params.u1, params.u2],
            hw: [params.h1 / h, h2 / h],
            kk,
            ll,
            k2l2,
            a,
            filtr,
            mask,
            pw,
            r2c,
            c2r,
            fwd,
            inv,
            p: params,
        }
    }

    /// The parameters the model was built with.
    pub fn params(&self) -> &Qg2lParams {
        &self.p
    }

    /// Grid points in x and y.
    pub fn grid(&self) -> (usize, usize) {
        (self.nx, self.ny)
    }

    /// Coupling coefficients `(F1, F2)` (1/m²).
    pub fn f1_f2(&self) -> (f64, f64) {
        (self.f1, self.f2)
    }

    /// Physical coordinates (m) of grid point `(i, j)`: `((i + 0.5) dx, (j + 0.5) dy)`, as pyqg.
    pub fn xy(&self, i: usize, j: usize) -> (f64, f64) {
        (
            (i as f64 + 0.5) * self.p.lx / self.nx as f64,
            (j as f64 + 0.5) * self.p.ly / self.ny as f64,
        )
    }

    fn n2(&self) -> usize {
        self.nx * self.ny
    }

    fn ns(&self) -> usize {
        self.nk * self.ny
    }

    fn work(&self) -> Work {
        let (n2, ns) = (self.n2(), self.ns());
        Work {
            row_r: vec![0.0; self.nx],
            row_c: vec![C64::default(); self.nk],
            rs: vec![C64::default(); self.r2c.get_scratch_len()],
            cs: vec![C64::default(); self.c2r.get_scratch_len()],
            fs: vec![
                C64::default();
                self.fwd
                    .get_inplace_scratch_len()
                    .max(self.inv.get_inplace_scratch_len())
            ],
            spec: vec![C64::default(); ns],
            ph: vec![C64::default(); 2 * ns],
            uh: vec![C64::default(); ns],
            u: vec![0.0; n2],
            v: vec![0.0; n2],
            q: vec![0.0; 2 * n2],
        }
    }

    /// Unnormalised forward 2-D real FFT of one layer (`nx*ny`) into `out` (`[k][l]`, `nk*ny`).
    fn fft2(&self, w: &mut Work, x: &[f64], out: &mut [C64]) {
        let (nx, ny) = (self.nx, self.ny);
        for j in 0..ny {
            w.row_r.copy_from_slice(&x[j * nx..(j + 1) * nx]);
            self.r2c
                .process_with_scratch(&mut w.row_r, &mut w.row_c, &mut w.rs)
                .expect("qg2l: r2c");
            for (ik, c) in w.row_c.iter().enumerate() {
                out[ik * ny + j] = *c;
            }
        }
        self.fwd.process_with_scratch(out, &mut w.fs);
    }

    /// Inverse 2-D FFT (divided by `nx ny`) of `spec` (`[k][l]`) into the layer `out`. Like numpy's
    /// `irfftn`, the imaginary parts of the `k = 0` and `k = nx/2` columns after the y transform are
    /// ignored. `w.spec` is clobbered.
    fn ifft2_from(&self, w: &mut Work, out: &mut [f64]) {
        let (nx, ny, nk) = (self.nx, self.ny, self.nk);
        self.inv.process_with_scratch(&mut w.spec, &mut w.fs);
        let scale = 1.0 / (nx * ny) as f64;
        for j in 0..ny {
            for ik in 0..nk {
                w.row_c[ik] = w.spec[ik * ny + j];
            }
            w.row_c[0].im = 0.0;
            w.row_c[nk - 1].im = 0.0;
            self.c2r
                .process_with_scratch(&mut w.row_c, &mut w.row_r, &mut w.cs)
                .expect("qg2l: c2r");
            for (o, r) in out[j * nx..(j + 1) * nx].iter_mut().zip(&w.row_r) {
                *o = r * scale;
            }
        }
    }

    /// psi_h = a q_h for both layers (`[layer][k][l]`).
    fn invert(&self, qh: &[C64], ph: &mut [C64]) {
        let ns = self.ns();
        let (q1, q2) = qh.split_at(ns);
        let (p1, p2) = ph.split_at_mut(ns);
        for s in 0..ns {
            p1[s] = q1[s] * self.a[0][s] + q2[s] * self.a[1][s];
            p2[s] = q1[s] * self.a[2][s] + q2[s] * self.a[3][s];
        }
    }

    /// q_h from psi_h (`[layer][k][l]`), mean mode zeroed.
    fn psih_to_qh(&self, ph: &[C64], qh: &mut [C64]) {
        let ns = self.ns();
        for s in 0..ns {
            let (p1, p2) = (ph[s], ph[ns + s]);
            qh[s] = -p1 * self.k2l2[s] + (p2 - p1) * self.f1;
            qh[ns + s] = -p2 * self.k2l2[s] + (p1 - p2) * self.f2;
        }
        qh[0] = C64::default();
        qh[ns] = C64::default();
    }

    /// Spectral tendency `dqh` of `qh`; `q` (physical, both layers) must equal ifft2(qh) already
    /// (it is computed here if `have_q` is false).
    fn tendency_spec(&self, w: &mut Work, qh: &[C64], have_q: bool, dqh: &mut [C64]) {
        let (n2, ns, ny) = (self.n2(), self.ns(), self.ny);
        let mut ph = std::mem::take(&mut w.ph);
        let mut uh = std::mem::take(&mut w.uh);
        let mut u = std::mem::take(&mut w.u);
        let mut v = std::mem::take(&mut w.v);
        let mut q = std::mem::take(&mut w.q);
        self.invert(qh, &mut ph);
        for m in 0..2 {
            let phm = &ph[m * ns..(m + 1) * ns];
            // u = ifft(-i l psi_h), v = ifft(i k psi_h), q = ifft(q_h)
            for ik in 0..self.nk {
                let k = self.kk[ik];
                for jl in 0..ny {
                    let s = ik * ny + jl;
                    let p = phm[s];
                    let l = self.ll[jl];
                    // -i l p = (l p.im, -l p.re); i k p = (-k p.im, k p.re)
                    w.spec[s] = C64::new(l * p.im, -l * p.re);
                    uh[s] = C64::new(-k * p.im, k * p.re);
                }
            }
            self.ifft2_from(w, &mut u);
            w.spec.copy_from_slice(&uh);
            self.ifft2_from(w, &mut v);
            if !have_q {
                w.spec.copy_from_slice(&qh[m * ns..(m + 1) * ns]);
                self.ifft2_from(w, &mut q[m * n2..(m + 1) * n2]);
            }
            let qm = &q[m * n2..(m + 1) * n2];
            let ub = self.ubg[m];
            for ((uu, vv), qq) in u.iter_mut().zip(v.iter_mut()).zip(qm) {
                *uu = (*uu + ub) * qq;
                *vv *= qq;
            }
            let out = &mut dqh[m * ns..(m + 1) * ns];
            self.fft2(w, &u, out);
            self.fft2(w, &v, &mut uh);
            let qy = self.qy[m];
            for ik in 0..self.nk {
                let k = self.kk[ik];
                for jl in 0..ny {
                    let s = ik * ny + jl;
                    let l = self.ll[jl];
                    let (a, b, p) = (out[s], uh[s], phm[s]);
                    // -(i k a + i l b + i k qy p)
                    let re = k * a.im + l * b.im + k * qy * p.im;
                    let im = -(k * a.re + l * b.re + k * qy * p.re);
                    out[s] = C64::new(re, im);
                }
            }
            if m == 1 && self.p.rek != 0.0 {
                for s in 0..ns {
                    out[s] += phm[s] * (self.p.rek * self.k2l2[s]);
                }
            }
            if self.p.dealias {
                for s in 0..ns {
                    out[s] *= self.mask[s];
                }
            }
        }
        w.ph = ph;
        w.uh = uh;
        w.u = u;
        w.v = v;
        w.q = q;
    }

    fn fft_layers(&self, w: &mut Work, x: &[f64]) -> Vec<C64> {
        let (n2, ns) = (self.n2(), self.ns());
        let mut out = vec![C64::default(); 2 * ns];
        for m in 0..2 {
            self.fft2(w, &x[m * n2..(m + 1) * n2], &mut out[m * ns..(m + 1) * ns]);
        }
        out
    }

    fn ifft_layers(&self, w: &mut Work, xh: &[C64], out: &mut [f64]) {
        let (n2, ns) = (self.n2(), self.ns());
        for m in 0..2 {
            w.spec.copy_from_slice(&xh[m * ns..(m + 1) * ns]);
            self.ifft2_from(w, &mut out[m * n2..(m + 1) * n2]);
        }
    }

    /// PV `[q1, q2]` of the streamfunction `[psi1, psi2]` (physical space, mean removed).
    pub fn psi_to_q(&self, psi: &[f64]) -> Vec<f64> {
        assert_eq!(psi.len(), 2 * self.n2());
        let mut w = self.work();
        let ph = self.fft_layers(&mut w, psi);
        let mut qh = vec![C64::default(); 2 * self.ns()];
        self.psih_to_qh(&ph, &mut qh);
        let mut q = vec![0.0; 2 * self.n2()];
        self.ifft_layers(&mut w, &qh, &mut q);
        q
    }

    /// Streamfunction `[psi1, psi2]` of the PV `[q1, q2]` (physical space; zero-mean psi).
    pub fn q_to_psi(&self, q: &[f64]) -> Vec<f64> {
        assert_eq!(q.len(), 2 * self.n2());
        let mut w = self.work();
        let qh = self.fft_layers(&mut w, q);
        let mut ph = vec![C64::default(); 2 * self.ns()];
        self.invert(&qh, &mut ph);
        let mut psi = vec![0.0; 2 * self.n2()];
        self.ifft_layers(&mut w, &ph, &mut psi);
        psi
    }

    /// The PV tendency `dq/dt` (physical space, 1/s²) of the PV field `q = [q1, q2]` (physical, layer
    /// row-major `j * nx + i`), exactly as pyqg's `_invert(); _do_advection(); _do_friction()` with
    /// `q` set; truncated by the 2/3 rule if `dealias`. Mainly for tests against pyqg.
    pub fn tendency(&self, q: &[f64]) -> Vec<f64> {
        let (n2, ns) = (self.n2(), self.ns());
        assert_eq!(q.len(), 2 * n2);
        let mut w = self.work();
        let qh = self.fft_layers(&mut w, q);
        w.q.copy_from_slice(q);
        let mut dqh = vec![C64::default(); 2 * ns];
        self.tendency_spec(&mut w, &qh, true, &mut dqh);
        let mut out = vec![0.0; 2 * n2];
        self.ifft_layers(&mut w, &dqh, &mut out);
        out
    }

    /// Multiply the spectrum of the PV field `q` (physical, both layers) by the small-scale filter
    /// (and the dealiasing mask), as after each time step.
    pub fn apply_filter(&self, q: &[f64]) -> Vec<f64> {
        let (n2, ns) = (self.n2(), self.ns());
        assert_eq!(q.len(), 2 * n2);
        let mut w = self.work();
        let mut qh = self.fft_layers(&mut w, q);
        for m in 0..2 {
            for s in 0..ns {
                qh[m * ns + s] *= self.filtr[s];
            }
        }
        let mut out = vec![0.0; 2 * n2];
        self.ifft_layers(&mut w, &qh, &mut out);
        out
    }

    /// Total energy per unit area (divided by H; m²/s²), see the module docs.
    pub fn energy(&self, psi: &[f64]) -> f64 {
        assert_eq!(psi.len(), 2 * self.n2());
        let ns = self.ns();
        let mut w = self.work();
        let ph = self.fft_layers(&mut w, psi);
        let mut e = 0.0;
        for s in 0..ns {
            let (p1, p2) = (ph[s], ph[ns + s]);
            let ke = self.hw[0] * p1.norm_sqr() + self.hw[1] * p2.norm_sqr();
            let pe = self.hw[0] * self.f1 * (p1 - p2).norm_sqr();
            e += self.pw[s] * 0.5 * (self.k2l2[s] * ke + pe);
        }
        e
    }

    /// Total potential enstrophy per unit area (divided by H; 1/s²), see the module docs.
    pub fn enstrophy(&self, psi: &[f64]) -> f64 {
        assert_eq!(psi.len(), 2 * self.n2());
        let ns = self.ns();
        let mut w = self.work();
        let ph = self.fft_layers(&mut w, psi);
        let mut qh = vec![C64::default(); 2 * ns];
        self.psih_to_qh(&ph, &mut qh);
        let mut z = 0.0;
        for s in 0..ns {
            z += self.pw[s]
                * 0.5
                * (self.hw[0] * qh[s].norm_sqr() + self.hw[1] * qh[ns + s].norm_sqr());
        }
        z
    }

    /// Advance the spectral PV `qh` by `n` RK4 steps with the filter after each step.
    fn step_spec(&self, w: &mut Work, qh: &mut [C64], n: usize) {
        let ns2 = 2 * self.ns();
        let ns = self.ns();
        let dt = self.p.dt;
        let mut tmp = vec![C64::default(); ns2];
        let mut kb = vec![C64::default(); ns2];
        let mut acc = vec![C64::default(); ns2];
        for _ in 0..n {
            // k1
            self.tendency_spec(w, qh, false, &mut kb);
            for s in 0..ns2 {
                acc[s] = kb[s];
                tmp[s] = qh[s] + kb[s] * (0.5 * dt);
            }
            // k2
            self.tendency_spec(w, &tmp, false, &mut kb);
            for s in 0..ns2 {
                acc[s] += kb[s] * 2.0;
                tmp[s] = qh[s] + kb[s] * (0.5 * dt);
            }
            // k3
            self.tendency_spec(w, &tmp, false, &mut kb);
            for s in 0..ns2 {
                acc[s] += kb[s] * 2.0;
                tmp[s] = qh[s] + kb[s] * dt;
            }
            // k4
            self.tendency_spec(w, &tmp, false, &mut kb);
            for m in 0..2 {
                for s in 0..ns {
                    let t = m * ns + s;
                    qh[t] = (qh[t] + (acc[t] + kb[t]) * (dt / 6.0)) * self.filtr[s];
                }
            }
            qh[0] = C64::default();
            qh[ns] = C64::default();
        }
    }
}

impl Dynamics for Qg2l {
    fn state_dim(&self) -> usize {
        2 * self.nx * self.ny
    }

    fn step_seconds(&self) -> f64 {
        self.p.dt
    }

    fn steps_per_cycle(&self) -> usize {
        self.p.steps_per_cycle
    }

    fn advance(&self, x: &mut [f64], n: usize) {
        assert_eq!(x.len(), self.state_dim(), "qg2l: state length");
        let ns = self.ns();
        let mut w = self.work();
        let ph = self.fft_layers(&mut w, x);
        let mut qh = vec![C64::default(); 2 * ns];
        self.psih_to_qh(&ph, &mut qh);
        if self.p.dealias {
            for m in 0..2 {
                for s in 0..ns {
                    qh[m * ns + s] *= self.mask[s];
                }
            }
        }
        self.step_spec(&mut w, &mut qh, n);
        let mut ph = ph;
        self.invert(&qh, &mut ph);
        self.ifft_layers(&mut w, &ph, x);
    }
}

/// Seed of the committed spun-up state (`models/data/qg2l_spinup.f64le`).
pub const SPINUP_SEED: u64 = 20_250_101;
/// Model days of the committed spin-up.
pub const SPINUP_DAYS: f64 = 3650.0;

/// A pyqg-like random initial streamfunction: PV `1e-7 * N(0, 1)` white noise in both layers from
/// `ChaCha8Rng::seed_from_u64(seed)` (upper layer first, row-major), inverted to psi.
pub fn random_initial_state(params: &Qg2lParams, seed: u64) -> Vec<f64> {
    let model = Qg2l::new(params.clone());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let q: Vec<f64> = (0..2 * params.nx * params.ny)
        .map(|_| {
            let e: f64 = StandardNormal.sample(&mut rng);
            1e-7 * e
        })
        .collect();
    model.q_to_psi(&q)
}

/// Deterministic spin-up: [`random_initial_state`] advanced `days` model days.
pub fn spin_up(params: &Qg2lParams, seed: u64, days: f64) -> Vec<f64> {
    let model = Qg2l::new(params.clone());
    let mut x = random_initial_state(params, seed);
    let steps = (days * 86_400.0 / params.dt).round() as usize;
    model.advance(&mut x, steps);
    x
}

/// Little-endian bytes of a state vector (the format of `models/data/qg2l_spinup.f64le`).
pub fn state_to_le_bytes(x: &[f64]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// State vector from little-endian `f64` bytes.
pub fn state_from_le_bytes(b: &[u8]) -> Vec<f64> {
    assert_eq!(b.len() % 8, 0, "qg2l: byte length not a multiple of 8");
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Regenerate the spun-up state with the default parameters, `seed` and `days`, and write it to
/// `path` (8192 little-endian f64). Returns the state. The committed file was made with
/// [`SPINUP_SEED`] and [`SPINUP_DAYS`].
pub fn regenerate_spinup(path: &Path, seed: u64, days: f64) -> std::io::Result<Vec<f64>> {
    let x = spin_up(&Qg2lParams::default(), seed, days);
    std::fs::write(path, state_to_le_bytes(&x))?;
    Ok(x)
}

static SPINUP_BYTES: &[u8] = include_bytes!("../data/qg2l_spinup.f64le");

/// The committed spun-up state (default parameters, [`SPINUP_SEED`], [`SPINUP_DAYS`]).
pub fn spun_up_state() -> Vec<f64> {
    let x = state_from_le_bytes(SPINUP_BYTES);
    assert_eq!(
        x.len(),
        8192,
        "qg2l: models/data/qg2l_spinup.f64le missing or wrong size"
    );
    x
}

/// A state of `n × n` points per layer (`[layer][j][i]`, as the model stores it) repeated `s × s`
/// times: a state of the same doubly periodic flow on a box `s` times as long. Larger grids start
/// from it plus noise, which breaks the symmetry ([`crate::testbed::Testbed::initial_truth`]).
pub fn tile(x: &[f64], n: usize, s: usize) -> Vec<f64> {
    if s == 1 {
        return x.to_vec();
    }
    let layers = x.len() / (n * n);
    let big = n * s;
    let mut out = Vec::with_capacity(x.len() * s * s);
    for layer in 0..layers {
        let src = &x[layer * n * n..(layer + 1) * n * n];
        for j in 0..big {
            let row = &src[(j % n) * n..(j % n + 1) * n];
            for _ in 0..s {
                out.extend_from_slice(row);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiled_state_evolves_as_the_tiles_of_its_evolution() {
        // The equations are translation invariant and doubly periodic: on a box twice as long, a
        // state repeated 2 × 2 times stays so, and each tile evolves as the small box's state. So
        // `tile` lays out the layers and rows as the model reads them, and the larger grid's
        // wavenumbers, filter and inversion match the small one's on the modes they share.
        let small = Qg2l::new(Qg2lParams::default());
        let big = Qg2l::new(Qg2lParams {
            nx: 128,
            ny: 128,
            lx: 2.0e6,
            ly: 2.0e6,
            ..Qg2lParams::default()
        });
        let mut x = spun_up_state();
        let mut y = tile(&x, 64, 2);
        assert_eq!(y.len(), 4 * x.len());
        // Row 1 of layer 1 twice over, then row 64 is row 0 again.
        assert_eq!(&y[128..192], &x[64..128]);
        assert_eq!(&y[192..256], &x[64..128]);
        assert_eq!(&y[128 * 64..128 * 64 + 64], &x[..64]);
        small.advance(&mut x, 12);
        big.advance(&mut y, 12);
        let t = tile(&x, 64, 2);
        let scale = assimd_filter::stats::rms(&t);
        let err = t
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            err < 1e-9 * scale,
            "max difference {err} against an RMS of {scale}"
        );
    }

    #[test]
    fn dynamics_constants() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Qg2l>();
        let m = Qg2l::new(Qg2lParams::default());
        assert_eq!(m.state_dim(), 8192);
        assert_eq!(m.step_seconds(), 7200.0);
        assert_eq!(m.steps_per_cycle(), 6);
        assert_eq!(m.cycle_seconds(), 43_200.0);
        let x = spun_up_state();
        assert!(x.iter().all(|v| v.is_finite()));
        let mean: f64 = x[..4096].iter().sum::<f64>() / 4096.0;
        assert!(mean.abs() < 1e-9 * x.iter().fold(0.0f64, |a, v| a.max(v.abs())));
    }

    #[test]
    fn psi_q_roundtrip() {
        let p = Qg2lParams::default();
        let m = Qg2l::new(p.clone());
        let psi = random_initial_state(&p, 3);
        let q = m.psi_to_q(&psi);
        let psi2 = m.q_to_psi(&q);
        let err = psi
            .iter()
            .zip(&psi2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let scale = psi.iter().map(|a| a.abs()).fold(0.0, f64::max);
        assert!(err <= 1e-12 * scale, "roundtrip err {err} scale {scale}");
    }
}
