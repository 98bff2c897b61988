//! Integration tests of the two-layer QG model (`assimd_models::qg2l`). Run with `--release`.
//! The spin-up file and the equilibrium statistics are made by commands, not tests:
//! `cargo run --release -p assimd-models --bin qg2l-tools -- regenerate|equilibrium` (models/tools/qg2l_tools.rs).

use std::path::PathBuf;

use assimd_filter::Dynamics;
use assimd_models::qg2l::*;

fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

fn max_abs(x: &[f64]) -> f64 {
    x.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// Inviscid, unforced (U1 = U2 = 0, rek = 0, no filter, 2/3 dealiasing, beta on): energy and
/// enstrophy are quadratic invariants of the Galerkin-truncated dynamics, so their drift is only the
/// RK4 time-truncation error. From the spun-up state, 480 steps of dt = 3600 s (20 days, the state
/// changes by O(1)): relative drift of both < 1e-8 (measured 2.6e-12 for energy, 1.1e-11 for
/// enstrophy).
#[test]
fn inviscid_conserves_energy_and_enstrophy() {
    let p = Qg2lParams {
        u1: 0.0,
        u2: 0.0,
        rek: 0.0,
        filter: false,
        dealias: true,
        dt: 3600.0,
        ..Default::default()
    };
    let m = Qg2l::new(p);
    // Dealias the initial state first (one zero-length advance projects it).
    let mut x = spun_up_state();
    m.advance(&mut x, 0);
    let (e0, z0) = (m.energy(&x), m.enstrophy(&x));
    let x_start = x.clone();
    m.advance(&mut x, 480);
    let (e1, z1) = (m.energy(&x), m.enstrophy(&x));
    let de = (e1 - e0).abs() / e0;
    let dz = (z1 - z0).abs() / z0;
    eprintln!(
        "inviscid: E {e0:.6e} -> {e1:.6e} (rel {de:.2e}); Z {z0:.6e} -> {z1:.6e} (rel {dz:.2e})"
    );
    // The flow must actually have evolved for the check to mean something.
    let change = max_abs_diff(&x, &x_start) / max_abs(&x_start);
    eprintln!("inviscid: max relative state change {change:.3}");
    assert!(change > 0.05, "state changed by only {change}");
    assert!(de < 1e-8, "energy drift {de}");
    assert!(dz < 1e-8, "enstrophy drift {dz}");
}

/// With the default forcing and drag, the committed spun-up state is in statistical equilibrium:
/// the mean energy over days 0-180 and 180-360 agree within 25 % (in the 20-year equilibrium run of
/// `qg2l-tools equilibrium`, models/data/README.md, the 180-day means stay within -6 %..+7 % of their
/// mean and successive ones differ by at most 10.5 %: 25 % is more than twice the largest change),
/// and the daily energy stays finite and within a factor 2 of the initial value throughout.
#[test]
fn statistically_steady_from_spinup() {
    let m = Qg2l::new(Qg2lParams::default());
    let mut x = spun_up_state();
    let e_init = m.energy(&x);
    let steps_per_day = 12;
    let mut e = Vec::new();
    for _ in 0..360 {
        m.advance(&mut x, steps_per_day);
        let ed = m.energy(&x);
        assert!(ed.is_finite());
        e.push(ed);
    }
    let w1 = e[..180].iter().sum::<f64>() / 180.0;
    let w2 = e[180..].iter().sum::<f64>() / 180.0;
    let (emin, emax) = e
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), v| (a.min(*v), b.max(*v)));
    eprintln!(
        "steady: E0 {e_init:.4e}, window means {w1:.4e} {w2:.4e}, range [{emin:.4e}, {emax:.4e}]"
    );
    assert!(
        (w1 - w2).abs() / (0.5 * (w1 + w2)) < 0.25,
        "window means {w1} {w2}"
    );
    assert!(
        emax < 2.0 * e_init && emin > e_init / 2.0,
        "energy range [{emin}, {emax}] vs {e_init}"
    );
}

/// The pyqg fixture written by `models/tools/pyqg_peer.py fixture`: [q0, dqdt(q0), q1, q3].
fn pyqg_fixture() -> Vec<Vec<f64>> {
    let b =
        std::fs::read(data_path("qg2l_pyqg_peer.f64le")).expect("models/data/qg2l_pyqg_peer.f64le");
    let x = state_from_le_bytes(&b);
    assert_eq!(x.len(), 4 * 8192);
    x.chunks(8192).map(|c| c.to_vec()).collect()
}

fn rel_err(ours: &[f64], peer: &[f64]) -> f64 {
    max_abs_diff(ours, peer) / max_abs(peer)
}

/// Our PV tendency of a smooth random q equals pyqg 0.7.2's (`_invert`, `_do_advection`,
/// `_do_friction`, default QGModel) to round-off: max |ours - pyqg| / max |pyqg| < 1e-10.
#[test]
fn tendency_matches_pyqg() {
    let f = pyqg_fixture();
    let m = Qg2l::new(Qg2lParams::default());
    let t = m.tendency(&f[0]);
    let e = rel_err(&t, &f[1]);
    eprintln!(
        "pyqg tendency: relative max error {e:.2e} (max |dq/dt| {:.3e})",
        max_abs(&f[1])
    );
    assert!(e < 1e-10, "tendency relative error {e}");
}

/// pyqg's first three steps (forward Euler, AB2, AB3, each followed by the exponential filter),
/// replayed with our tendency and filter, equal pyqg's q to round-off (relative max error < 1e-10).
/// Our own RK4 steps differ from pyqg's by the time-stepping error, which pyqg's first step, forward
/// Euler, dominates: its local error ½ dt² |q̈| with |q̈| ≈ |q|/τ², τ = max|q| / max|dq/dt| of the
/// fixture, is ½ (dt/τ)² relative (AB2, AB3 and RK4 add O((dt/τ)³)). The max-norm estimate of |q̈|
/// is crude, so the check allows a factor 10 either way.
#[test]
fn ab3_steps_match_pyqg() {
    let f = pyqg_fixture();
    let p = Qg2lParams::default();
    let dt = p.dt;
    let m = Qg2l::new(p);
    let axpy = |x: &[f64], terms: &[(f64, &[f64])]| -> Vec<f64> {
        let mut y = x.to_vec();
        for (c, t) in terms {
            for (yi, ti) in y.iter_mut().zip(t.iter()) {
                *yi += c * ti;
            }
        }
        y
    };
    let t0 = m.tendency(&f[0]);
    let q1 = m.apply_filter(&axpy(&f[0], &[(dt, &t0)]));
    let e1 = rel_err(&q1, &f[2]);
    let t1 = m.tendency(&q1);
    let q2 = m.apply_filter(&axpy(&q1, &[(1.5 * dt, &t1), (-0.5 * dt, &t0)]));
    let t2 = m.tendency(&q2);
    let q3 = m.apply_filter(&axpy(
        &q2,
        &[
            (23.0 / 12.0 * dt, &t2),
            (-16.0 / 12.0 * dt, &t1),
            (5.0 / 12.0 * dt, &t0),
        ],
    ));
    let e3 = rel_err(&q3, &f[3]);
    // Our RK4 from the same q0, three steps.
    let mut psi = m.q_to_psi(&f[0]);
    m.advance(&mut psi, 3);
    let q3_rk4 = m.psi_to_q(&psi);
    let e_rk4 = rel_err(&q3_rk4, &f[3]);
    let tau = max_abs(&f[0]) / max_abs(&f[1]);
    let euler = 0.5 * (dt / tau).powi(2);
    eprintln!("pyqg steps: Euler step rel err {e1:.2e}, 3 AB steps rel err {e3:.2e}; our RK4 vs pyqg AB3 {e_rk4:.2e}");
    assert!(e1 < 1e-10, "Euler step {e1}");
    assert!(e3 < 1e-10, "AB3 steps {e3}");
    eprintln!(
        "dt/τ = {:.3e}: Euler's local error estimate {euler:.2e}",
        dt / tau
    );
    assert!(
        e_rk4 < 10.0 * euler && e_rk4 > euler / 10.0,
        "RK4 vs AB3 {e_rk4}, Euler estimate {euler}"
    );
}
