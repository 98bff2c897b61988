#!/usr/bin/env python3
"""Numerical peer for assimd's two-layer QG model (models/src/qg2l.rs): pyqg 0.7.2 `QGModel`.

Setup (see /work/shared/TOOLCHAIN.md; pyqg 0.7.2's sdist needs setuptools_scm or a pretended
version, otherwise pip silently falls back to pyqg 0.4.0):

    python3 -m venv /tmp/pyqgenv
    /tmp/pyqgenv/bin/pip install "cython<3" "numpy<2" setuptools wheel setuptools_scm
    SETUPTOOLS_SCM_PRETEND_VERSION=0.7.2 /tmp/pyqgenv/bin/pip install --no-build-isolation pyqg==0.7.2

Usage:

    /tmp/pyqgenv/bin/python models/tools/pyqg_peer.py fixture      # writes models/data/qg2l_pyqg_peer.*
    /tmp/pyqgenv/bin/python models/tools/pyqg_peer.py equilibrium  # prints pyqg's equilibrium energy

`fixture` builds pyqg's default QGModel, sets a deterministic smooth random PV q (numpy
RandomState(20250101)), and writes `qg2l_pyqg_peer.f64le`: four blocks of 2*64*64 little-endian
f64, each in pyqg's order [layer, y, x] (= the Rust state layout, x fastest):

    0: q0      initial PV (1/s)
    1: dqdt    pyqg's tendency of q0 (after _invert, _do_advection, _do_friction), ifft'd (1/s^2)
    2: q1      q after one pyqg step (forward Euler + filter)
    3: q3      q after three pyqg steps (Euler, AB2, AB3, each followed by the filter)

plus `qg2l_pyqg_peer.json` describing it. `equilibrium` spins pyqg up from 1e-7 * randn PV for
`--years` (default 10) and prints the time-mean energy (same formula as Qg2l::energy) over the
second half.
"""
import json
import os
import sys
import time

import numpy as np
import pyqg

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data")


def model(**kw):
    return pyqg.QGModel(log_level=0, **kw)


def energy(m, ph=None):
    """Total energy per unit area / H, as Qg2l::energy (Parseval over the half spectrum)."""
    ph = m.ph if ph is None else ph
    w = np.full(m.wv2.shape, 2.0)
    w[:, 0] = 1.0
    w[:, -1] = 1.0
    w /= m.M ** 2
    hw = m.Hi / m.H
    ke = hw[0] * np.abs(ph[0]) ** 2 + hw[1] * np.abs(ph[1]) ** 2
    pe = hw[0] * m.F1 * np.abs(ph[0] - ph[1]) ** 2
    return float((w * 0.5 * (m.wv2 * ke + pe)).sum())


def smooth_random_q(m, seed=20250101):
    rng = np.random.RandomState(seed)
    q = np.zeros((2, m.ny, m.nx))
    kmax = 10
    for layer, amp in enumerate((4e-6, 2e-6)):
        qh = (rng.standard_normal((m.nl, m.nk)) + 1j * rng.standard_normal((m.nl, m.nk)))
        ki = m.k / m.dk
        li = m.l / m.dl
        env = np.exp(-(ki ** 2 + li ** 2) / 36.0) * (np.abs(ki) <= kmax) * (np.abs(li) <= kmax)
        qh *= env
        qh[0, 0] = 0.0
        f = np.fft.irfft2(qh, s=(m.ny, m.nx))
        f -= f.mean()
        q[layer] = amp * f / f.std()
    return q


def fixture():
    m = model()
    q0 = smooth_random_q(m)
    m.q = q0.copy()
    m._invert()
    m._do_advection()
    m._do_friction()
    dqdt = np.fft.irfftn(np.asarray(m.dqhdt), axes=(-2, -1))
    m = model()
    m.q = q0.copy()
    m._step_forward()
    q1 = np.asarray(m.q).copy()
    m._step_forward()
    m._step_forward()
    q3 = np.asarray(m.q).copy()
    blocks = [q0, dqdt, q1, q3]
    out = np.concatenate([b.reshape(-1) for b in blocks]).astype("<f8")
    path = os.path.join(DATA, "qg2l_pyqg_peer.f64le")
    out.tofile(path)
    header = {
        "generator": "models/tools/pyqg_peer.py fixture",
        "pyqg_version": pyqg.__version__,
        "numpy_version": np.__version__,
        "model": "pyqg.QGModel() defaults (nx=64, L=1e6, beta=1.5e-11, rd=15000, delta=0.25, H1=500, "
                 "U1=0.025, U2=0, rek=5.787e-7, dt=7200, filterfac=23.6)",
        "dtype": "little-endian f64",
        "shape_per_block": [2, m.ny, m.nx],
        "order": "[layer, y, x] (x fastest)",
        "blocks": ["q0", "dqdt(q0)", "q after 1 step (Euler+filter)", "q after 3 steps (Euler, AB2, AB3 + filter)"],
        "initial_q": "smooth random: RandomState(20250101) spectral coefficients, exp(-(|k|^2)/36) envelope, "
                     "|k|,|l| <= 10 (index units), layer rms 4e-6 and 2e-6 1/s",
    }
    with open(os.path.join(DATA, "qg2l_pyqg_peer.json"), "w") as f:
        json.dump(header, f, indent=2)
        f.write("\n")
    print("wrote", path, out.shape, "max|dqdt| =", np.abs(dqdt).max())


def equilibrium(years=10.0, seed=20250101):
    m = model(tmax=years * 360 * 86400.0, tavestart=years * 360 * 86400.0 * 2)
    rng = np.random.RandomState(seed)
    m.q = 1e-7 * rng.standard_normal((2, m.ny, m.nx))
    t0 = time.time()
    es, ts = [], []
    for _ in m.run_with_snapshots(tsnapstart=0.0, tsnapint=10 * 86400.0):
        es.append(energy(m))
        ts.append(m.t / 86400.0)
    es, ts = np.array(es), np.array(ts)
    half = ts >= ts[-1] / 2
    print(f"pyqg {pyqg.__version__}: {years} years in {time.time() - t0:.1f} s")
    for d in range(0, int(ts[-1]) + 1, 180):
        i = np.searchsorted(ts, d)
        if i < len(ts):
            print(f"day {ts[i]:7.0f} E {es[i]:.5e}")
    print(f"mean energy over days {ts[half][0]:.0f}-{ts[-1]:.0f}: {es[half].mean():.5e} "
          f"(std {es[half].std():.2e}, n={half.sum()})")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "fixture"
    if what == "fixture":
        fixture()
    elif what == "equilibrium":
        years = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
        equilibrium(years)
    else:
        sys.exit(f"unknown command {what}")
