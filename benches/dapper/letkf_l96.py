"""DAPPER's LETKF on the Sakov & Oke (2008) Lorenz-96 setup, timed per cycle on one thread.

The reference side of `docs/benchmarks.md`'s "l96 whole cycle against DAPPER" row (issue 17):
DAPPER (PyPI `dapper`, a bench-only dependency, never in CI or the README commands) runs
`dapper/mods/Lorenz96/sakov2008.py` (40 variables, all observed with R = I every Δt = 0.05, RK4)
with `LETKF(N=20, rot=True, infl=..., loc_rad=4)`, and this prints its analysis RMSE and its wall
time per cycle (forecast, analysis and DAPPER's own statistics, like assimd's `experiment`). Run it
with one BLAS thread, as `scripts/bench-dapper` does:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 python letkf_l96.py --cycles 2000

Output: one JSON line per inflation value.
"""

import argparse
import json
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--members", type=int, default=20)
    ap.add_argument("--loc-rad", type=float, default=4.0)
    ap.add_argument("--infl", type=float, nargs="+", default=[1.02])
    ap.add_argument("--seed", type=int, default=3000)
    a = ap.parse_args()

    import dapper as dpr
    import dapper.da_methods as da
    from dapper.mods.Lorenz96.sakov2008 import HMM

    dpr.set_seed(a.seed)
    HMM.tseq.Ko = a.cycles
    HMM.tseq.BurnIn = 200 * HMM.tseq.dto
    xx, yy = HMM.simulate()
    for infl in a.infl:
        dpr.set_seed(a.seed + 1)
        xp = da.LETKF(N=a.members, rot=True, infl=infl, loc_rad=a.loc_rad)
        xp.liveplotting = False
        t0 = time.perf_counter()
        xp.assimilate(HMM, xx, yy)
        dt = time.perf_counter() - t0
        xp.stats.average_in_time()
        rmse = float(xp.avrgs.err.rms.a.val)
        print(json.dumps({
            "method": f"dapper LETKF(N={a.members}, rot=True, infl={infl}, loc_rad={a.loc_rad})",
            "cycles": a.cycles, "rmse_a": rmse, "seconds_per_cycle": dt / a.cycles,
            "numpy": np.__version__, "dapper": dpr.__version__,
        }), flush=True)


if __name__ == "__main__":
    main()
