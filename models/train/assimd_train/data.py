"""Training triples recorded by `assimd experiment --record DIR --record-members`.

Array format (all little-endian float32 .npy, recorded after burn-in, K = records):
  DIR/truth.npy    (K, P)       true state
  DIR/mean.npy     (K, P)       background (forecast) ensemble mean
  DIR/spread.npy   (K, P)       background per-point std over members (ddof = 1)
  DIR/members.npy  (K, N, P)    background members
  DIR/meta.json    testbed, network, filter, inflation, rtps, localization_km, seed, burn_in, records ...
P = 40 for l96 (one variable on the ring). Seeds: 1-99 test, 100-199 tuning, >= 1000 training
(l96: 1001-1027 train, 1909-1982 val; l96 self-training 1101-1106; l96-long 1201-1210 train, 1990-1991 val;
l96-long self-training 1221-1226 train, 1992 val).
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, asdict, field

import numpy as np

from . import progress


@dataclass
class Run:
    name: str
    network: str
    seed: int
    inflation: float
    localization_km: float | None
    filter: str = "letkf"
    rtps: float = 0.0
    members: int = 20
    cycles: int = 3000
    split: str = "train"  # train | val
    extra: tuple = ()     # further assimd flags (score filter: --bundle, sampler settings)

    def args(self, binary: str, testbed: str, out: str, every: int) -> list[str]:
        a = [binary, "experiment", "--testbed", testbed, "--network", self.network,
             "--filter", self.filter, "--members", str(self.members), "--cycles", str(self.cycles),
             "--seed", str(self.seed), "--inflation", str(self.inflation)]
        if self.localization_km is not None:
            a += ["--localization-km", str(self.localization_km)]
        if self.rtps:
            a += ["--rtps", str(self.rtps)]
        a += list(self.extra)
        a += ["--record", out, "--record-every", str(every), "--record-members", "--json"]
        return a


# The l96 training runs' LETKF as the committed bundles were recorded: the inflation and
# localisation given per run, no adaptive inflation, no quality control (tuned.toml's l96 default
# is now the adaptive EnKF-N, which would record other backgrounds).
FIXED_LETKF = ("--adaptive", "off", "--qc", "off")


def l96_runs() -> list[Run]:
    """Cycled LETKF runs on training seeds: tuned, under-inflated, over-inflated, other localisation,
    RTPS, on three observing networks. Validation runs use their own seeds (1900+)."""
    tuned = {"full": (1.02, 8500.0), "sparse": (1.03, 5000.0), "stations+satellite": (1.02, 4500.0)}
    runs: list[Run] = []
    seed = 1000
    for net, (infl, loc) in tuned.items():
        short = net.replace("stations+satellite", "stsat")
        variants = [
            ("tuned-a", infl, loc, 0.0), ("tuned-b", infl, loc, 0.0),
            ("infl1.00", 1.0, loc, 0.0), ("infl1.005", 1.005, loc, 0.0),
            ("infl1.08", 1.08, loc, 0.0), ("infl1.15", 1.15, loc, 0.0),
            ("locnarrow", infl, loc * 0.5, 0.0), ("locwide", infl, loc * 1.6, 0.0),
            ("rtps0.5", 1.0, loc, 0.5),
        ]
        for tag, i, l, r in variants:
            seed += 1
            runs.append(Run(f"{short}-{tag}", net, seed, i, l, rtps=r, extra=FIXED_LETKF))
        # held-out validation runs (own seeds): tuned and one mis-tuned
        runs.append(Run(f"val-{short}-tuned", net, 1900 + len(runs), infl, loc, split="val",
                        extra=FIXED_LETKF))
        runs.append(Run(f"val-{short}-infl1.08", net, 1950 + len(runs), 1.08, loc, split="val",
                        extra=FIXED_LETKF))
    return runs


def l96_selftrain_runs(bundle_dir: str, sampler: list[str]) -> list[Run]:
    """Round 2 (self-training): the score filter's own cycled runs with the round-1 bundle, on new
    training seeds (1100+) and the same three networks, at the default and mis-tuned prior inflation,
    so that the triples carry the background statistics the score filter itself produces."""
    nets = {"full": 4500.0, "sparse": 4500.0, "stations+satellite": 4500.0}
    runs: list[Run] = []
    seed = 1100
    for net, loc in nets.items():
        short = net.replace("stations+satellite", "stsat")
        for tag, rtps in (("a", 0.0), ("rtps0.3", 0.3)):
            seed += 1
            runs.append(Run(f"score-{short}-{tag}", net, seed, 1.0, None, filter="score", rtps=rtps,
                            cycles=800, extra=("--bundle", bundle_dir, *sampler)))
    return runs


# The long window (`configs/experiments/l96-sparse-r0.5-dt0.4-*.toml`, Spantini et al. 2019 as DAPPER runs
# it): every other point observed, R = 0.5 I, 8 model steps of 0.05 per cycle, no QC, fixed inflation
# (tuned.toml's l96 default is the adaptive EnKF-N). Shared by the runs' flags and the manifest's [regime].
L96_LONG_REGIME = {"network": "sparse", "steps_per_cycle": 8, "obs_error_variance": 0.5,
                   "adaptive": "off", "qc": "off"}
L96_LONG_CYCLES, L96_LONG_BURN_IN = 2000, 200


def l96_long_runs(members: int = 20) -> list[Run]:
    """The long window (l96-long): cycled LETKF runs on training seeds 1201+ with deliberately varied
    settings, as the pilot (../shared/notes/long-window-pilot.md): the tuned-like setting (inflation 1.2,
    3,500 km) twice, inflation 1.05 / 1.1 (too low) and 1.3 / 1.4 (too high), localisation 2,500 and
    5,150 km (DAPPER loc_rad 2 and 4), RTPS 0.5 and 0.7 without inflation; 2,000 cycles, burn-in 200
    (1,800 triples per run). Validation: the tuned setting and inflation 1.3 on seeds 1990+."""
    g = L96_LONG_REGIME
    extra = ("--steps-per-cycle", str(g["steps_per_cycle"]), "--obs-error-variance", str(g["obs_error_variance"]),
             "--adaptive", g["adaptive"], "--qc", g["qc"], "--burn-in", str(L96_LONG_BURN_IN))
    infl, loc = 1.2, 3500.0
    variants = [
        ("tuned-a", infl, loc, 0.0), ("tuned-b", infl, loc, 0.0),
        ("infl1.05", 1.05, loc, 0.0), ("infl1.1", 1.1, loc, 0.0),
        ("infl1.3", 1.3, loc, 0.0), ("infl1.4", 1.4, loc, 0.0),
        ("loc2500", infl, 2500.0, 0.0), ("loc5150", infl, 5150.0, 0.0),
        ("rtps0.5", 1.0, loc, 0.5), ("rtps0.7", 1.0, loc, 0.7),
    ]
    mk = lambda name, seed, i, l, r, split: Run(name, g["network"], seed, i, l, rtps=r, members=members,
                                                cycles=L96_LONG_CYCLES, split=split, extra=extra)
    runs = [mk(f"long-{tag}", 1201 + k, i, l, r, "train") for k, (tag, i, l, r) in enumerate(variants)]
    runs.append(mk("val-long-tuned", 1990, infl, loc, 0.0, "val"))
    runs.append(mk("val-long-infl1.3", 1991, 1.3, loc, 0.0, "val"))
    return runs


L96_LONG_SCORE_FILE = "configs/experiments/l96-sparse-r0.5-dt0.4-n20-score.toml"
L96_LONG_SELFTRAIN_CYCLES = 1200


def l96_long_selftrain_runs(repo: str, bundle_dir: str) -> list[Run]:
    """Round 2 of the long window (l96-long-selftrain): the score filter's own cycled runs, the shipped
    N = 20 file (L96_LONG_SCORE_FILE: each member started at its LETKF analysis, 16 guided levels) with
    the round-1 bundle, on training seeds 1221+, so that the triples carry the backgrounds the score
    filter itself forecasts (sharper than the LETKF's: the round-1 data never saw them). The start's
    LETKF is varied as in round 1: tuned (1.25, 2,500 km) twice, inflation 1.1 and 1.4, localisation
    3,500 km, and RTPS 0.5 on the score filter's output; 1,200 cycles, burn-in 200. Validation: the
    tuned setting on seed 1992."""
    g = L96_LONG_REGIME
    cfg = os.path.join(repo, L96_LONG_SCORE_FILE)
    base = ("--config", cfg, "--bundle", bundle_dir, "--burn-in", str(L96_LONG_BURN_IN))
    variants = [("tuned-a", 1.25, 2500.0, ()), ("tuned-b", 1.25, 2500.0, ()),
                ("infl1.1", 1.1, 2500.0, ()), ("infl1.4", 1.4, 2500.0, ()),
                ("loc3500", 1.25, 3500.0, ()), ("rtps0.5", 1.25, 2500.0, ("--score-rtps", "0.5"))]
    mk = lambda name, seed, i, l, x, split: Run(name, g["network"], seed, i, l, filter="score",
                                                cycles=L96_LONG_SELFTRAIN_CYCLES, split=split, extra=base + x)
    runs = [mk(f"score-long-{tag}", 1221 + k, i, l, x, "train") for k, (tag, i, l, x) in enumerate(variants)]
    runs.append(mk("val-score-long-tuned", 1992, 1.25, 2500.0, (), "val"))
    return runs


RUNS = {"l96": l96_runs, "l96-long": l96_long_runs}


def generate(testbed: str, binary: str, root: str, every: int = 1, max_rmse: float = 2.0,
             runs: list[Run] | None = None, index: str = "runs.json", label: str | None = None) -> list[dict]:
    """Run assimd for every run of the testbed; keep runs that did not diverge (exit 0 and
    rmse_a <= max_rmse). Returns provenance."""
    os.makedirs(root, exist_ok=True)
    kept = []
    for run in progress.bar(runs if runs is not None else RUNS[testbed](), label or f"{testbed} training data"):
        out = os.path.join(root, run.name)
        args = run.args(binary, testbed, out, every)
        res_path = os.path.join(out, "result.json")
        if os.path.exists(res_path):
            res = json.load(open(res_path))
        else:
            p = subprocess.run(args, capture_output=True, text=True)
            if p.returncode != 0:
                msg = (p.stderr + p.stdout).strip().splitlines()[-1:] or [""]
                progress.write(f"[data] {run.name}: exit {p.returncode} ({msg[0]}) -> dropped")
                continue
            res = json.loads(p.stdout.strip().splitlines()[-1])
            json.dump(res, open(res_path, "w"))
        ok = res.get("rmse_a", 1e9) <= max_rmse
        progress.write(f"[data] {run.name:28s} seed {run.seed} rmse_a {res['rmse_a']:.3f} "
                       f"spread_a {res['spread_a']:.3f} {'kept' if ok else 'DROPPED (rmse_a > %g)' % max_rmse}")
        if ok:
            meta = json.load(open(os.path.join(out, "meta.json")))
            kept.append({**asdict(run), "dir": out, "command": " ".join(args[1:]),
                         "records": meta["records"], "rmse_a": res["rmse_a"],
                         "spread_a": res["spread_a"]})
    json.dump(kept, open(os.path.join(root, index), "w"), indent=1)
    return kept


@dataclass
class Triples:
    truth: np.ndarray    # (K, P)
    mean: np.ndarray     # (K, P)
    spread: np.ndarray   # (K, P)
    members: np.ndarray  # (K, N, P)
    run_id: np.ndarray   # (K,)


def load(kept: list[dict], split: str) -> Triples:
    parts = [r for r in kept if r["split"] == split]
    t, m, s, e, ids = [], [], [], [], []
    for i, r in enumerate(parts):
        d = r["dir"]
        t.append(np.load(os.path.join(d, "truth.npy")))
        m.append(np.load(os.path.join(d, "mean.npy")))
        s.append(np.load(os.path.join(d, "spread.npy")))
        e.append(np.load(os.path.join(d, "members.npy")))
        ids.append(np.full(len(t[-1]), i, dtype=np.int32))
    return Triples(*(np.concatenate(a).astype(np.float32) for a in (t, m, s, e)), np.concatenate(ids))
