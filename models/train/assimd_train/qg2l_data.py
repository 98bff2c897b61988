"""qg2l training data: cycled LETKF runs of `assimd experiment --testbed qg2l ... --record`.

Array format (the recorder's, as in data.py; little-endian float32 .npy, C order, K records taken every
`every` cycles after burn-in):
  DIR/truth.npy    (K, 8192)       true state
  DIR/mean.npy     (K, 8192)       background (forecast) ensemble mean
  DIR/spread.npy   (K, 8192)       background per-point std over members (ddof = 1)
  DIR/members.npy  (K, 32, 8192)   background members
  DIR/meta.json    testbed, network, filter, inflation, rtps, localization_km, seed, burn_in, records, ...
  DIR/result.json  the run's --json skill line (added here)
State layout: 2 fields (psi1 upper, psi2 lower; m^2/s) x 64 x 64, field-major, row-major (y, x), i.e.
reshape(K, 2, 64, 64). Doubly periodic 1000 km box (15.6 km cells).

Seeds: 1-99 are test seeds and 100-199 tuning seeds: never used. Training runs use 2001-2015,
validation runs 2901-2903.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import progress
from .data import Run

# Tuned qg2l LETKF (N = 32): RTPS 0.5, no multiplicative inflation, Gaspari-Cohn half-width 100 km.
TUNED = {"inflation": 1.0, "rtps": 0.5, "localization_km": 100.0}
CYCLES = 220          # per run; burn-in 40 cycles (20 days), then every 2nd cycle is recorded -> 90 records
BURN_IN = 40
EVERY = 2
INITIAL_SPREAD = 800.0  # m^2/s: truth + noise start (climatological draws cost ~20 s of spin-up per run)
WEIGHT_STRIDE = 2
MAX_RMSE = 2000.0     # climatology is 1123 m^2/s; above 2000 a run is called diverged and dropped


@dataclass
class QgRun(Run):
    members: int = 32
    cycles: int = CYCLES
    burn_in: int = BURN_IN

    def args(self, binary: str, testbed: str, out: str, every: int) -> list[str]:
        a = [binary, "experiment", "--testbed", testbed, "--network", self.network,
             "--filter", self.filter, "--members", str(self.members), "--cycles", str(self.cycles),
             "--burn-in", str(self.burn_in), "--seed", str(self.seed), "--inflation", str(self.inflation),
             "--rtps", str(self.rtps), "--weight-stride", str(WEIGHT_STRIDE),
             "--initial-spread", str(INITIAL_SPREAD)]
        if self.localization_km is not None:
            a += ["--localization-km", str(self.localization_km)]
        a += ["--record", out, "--record-every", str(every), "--record-members", "--json"]
        return a


def qg2l_runs() -> list[QgRun]:
    """Per network: tuned, under-dispersive (RTPS 0.3), over-dispersive (RTPS 0.8), narrow (70 km) and
    wide (150 km) localisation. Validation: three runs on their own seeds."""
    runs: list[QgRun] = []
    seed = 2000
    for net, short in (("stations+satellite", "stsat"), ("satellite", "sat"), ("stations", "st")):
        for tag, rtps, loc in (("tuned", 0.5, 100.0), ("rtps0.3", 0.3, 100.0), ("rtps0.8", 0.8, 100.0),
                               ("loc70", 0.5, 70.0), ("loc150", 0.5, 150.0)):
            seed += 1
            runs.append(QgRun(f"{short}-{tag}", net, seed, 1.0, loc, rtps=rtps))
    runs.append(QgRun("val-stsat-tuned", "stations+satellite", 2901, 1.0, 100.0, rtps=0.5, split="val"))
    runs.append(QgRun("val-sat-rtps0.3", "satellite", 2902, 1.0, 100.0, rtps=0.3, split="val"))
    runs.append(QgRun("val-st-tuned", "stations", 2903, 1.0, 100.0, rtps=0.5, split="val"))
    return runs


def generate(binary: str, root: str, log=progress.write) -> list[dict]:
    """Run assimd for every qg2l run (cached per directory); keep runs that did not diverge."""
    os.makedirs(root, exist_ok=True)
    kept = []
    t_all = time.time()
    for run in progress.bar(qg2l_runs(), "qg2l training data"):
        out = os.path.join(root, run.name)
        args = run.args(binary, "qg2l", out, EVERY)
        res_path = os.path.join(out, "result.json")
        if os.path.exists(res_path):
            res = json.load(open(res_path))
        else:
            t0 = time.time()
            p = subprocess.run(["nice", "-n", "5"] + args, capture_output=True, text=True)
            if p.returncode != 0:
                msg = (p.stderr + p.stdout).strip().splitlines()[-1:] or [""]
                log(f"[data] {run.name}: exit {p.returncode} ({msg[0]}) -> dropped")
                continue
            res = json.loads(p.stdout.strip().splitlines()[-1])
            res["wall_seconds"] = time.time() - t0
            json.dump(res, open(res_path, "w"))
        ok = np.isfinite(res.get("rmse_a", np.nan)) and res["rmse_a"] <= MAX_RMSE
        log(f"[data] {run.name:18s} seed {run.seed} rmse_a {res['rmse_a']:7.1f} spread_a {res['spread_a']:7.1f} "
            f"rmse_f {res['rmse_f']:7.1f} ({res.get('wall_seconds', 0):.0f}s) "
            f"{'kept' if ok else 'DROPPED (rmse_a > %g)' % MAX_RMSE}")
        if ok:
            meta = json.load(open(os.path.join(out, "meta.json")))
            kept.append({**asdict(run), "dir": out, "command": " ".join(args[1:]),
                         "records": meta["records"], "rmse_a": res["rmse_a"], "rmse_f": res["rmse_f"],
                         "spread_a": res["spread_a"], "wall_seconds": res.get("wall_seconds")})
    json.dump(kept, open(os.path.join(root, "runs.json"), "w"), indent=1)
    log(f"[data] {len(kept)} runs kept ({time.time() - t_all:.0f}s)")
    return kept


@dataclass
class QgTriples:
    truth: np.ndarray    # (K, 2, 64, 64)
    mean: np.ndarray     # (K, 2, 64, 64)
    spread: np.ndarray   # (K, 2, 64, 64)
    members: np.ndarray  # (K, N, 2, 64, 64)
    run_id: np.ndarray   # (K,)


def load(kept: list[dict], split: str, members: bool = True) -> QgTriples:
    parts = [r for r in kept if r["split"] == split]
    t, m, s, e, ids = [], [], [], [], []
    for i, r in enumerate(parts):
        d = r["dir"]
        t.append(np.load(os.path.join(d, "truth.npy")).reshape(-1, 2, 64, 64))
        m.append(np.load(os.path.join(d, "mean.npy")).reshape(-1, 2, 64, 64))
        s.append(np.load(os.path.join(d, "spread.npy")).reshape(-1, 2, 64, 64))
        if members:
            mem = np.load(os.path.join(d, "members.npy"), mmap_mode="r")
            e.append(np.asarray(mem).reshape(mem.shape[0], mem.shape[1], 2, 64, 64))
        ids.append(np.full(len(t[-1]), i, dtype=np.int32))
    cat = lambda a: np.concatenate(a).astype(np.float32, copy=False) if a else None
    return QgTriples(cat(t), cat(m), cat(s), cat(e), np.concatenate(ids))
