"""python -m assimd_train l96 [options]: data -> train -> export -> manifest for the l96 bundles.

Variants (VARIANTS): `l96` (mean + spread + set-encoder features, conditioner.onnx, and the localised
ensemble Gaussian as the denoiser's skip), the ablations `l96-gauss-meanspread`, `l96-setenc` and
`l96-meanspread`, the self-training round `l96-selftrain`, and the long window's `l96-long` and
`l96-long-selftrain` (data.l96_long_runs, issue 16: `run.sh l96 --bundles l96-long`).

Each variant trains on one data set: its `runs` (a key of data.RUNS, default the testbed), cached in
`data/<data_dir>/` (default the testbed), with runs above `max_rmse` dropped as diverged (default 2).
Bundles are written to `<--out-root>/<bundle>/` (default models/zoo), the EMA weights and a JSON report
to models/train/runs/<bundle>/. The qg2l bundle has its own driver (qg2l.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import numpy as np
import torch

from . import data, manifest_toml, nets, train as tr_mod
from .export import export_bundle

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_DIR = os.path.dirname(HERE)
REPO = os.path.abspath(os.path.join(TRAIN_DIR, "..", ".."))
ZOO = os.path.join(REPO, "models", "zoo")

# The long window's variant settings, shared by round 1 (l96-long) and round 2 (l96-long-selftrain).
L96_LONG = {"testbed": "l96", "set_encoder": True, "gauss": False, "runs": "l96-long",
            "data_dir": "l96-long", "max_rmse": 3.0, "sigma": "pilot",
            "regime": {"name": "l96-sparse-r0.5-dt0.4 (the long window)", **data.L96_LONG_REGIME,
                       "experiments": "configs/experiments/l96-sparse-r0.5-dt0.4-*.toml"}}

VARIANTS = {
    # default: set encoder + the localised ensemble Gaussian as the denoiser's skip (see nets.py)
    "l96": {"testbed": "l96", "set_encoder": True, "gauss": True},
    # ablations: without the set encoder; without the ensemble Gaussian skip (the session-1 design)
    "l96-gauss-meanspread": {"testbed": "l96", "set_encoder": False, "gauss": True},
    "l96-setenc": {"testbed": "l96", "set_encoder": True, "gauss": False},
    "l96-meanspread": {"testbed": "l96", "set_encoder": False, "gauss": False},
    # round 2: l96 fine-tuned on its own cycled score-filter triples plus the round-1 triples
    "l96-selftrain": {"testbed": "l96", "set_encoder": True, "gauss": True, "init": "l96"},
    # the long window (l96-sparse-r0.5-dt0.4, N = 20), the pilot's design (../shared/notes/long-window-pilot.md):
    # set encoder, no Gaussian skip, so that the score filter starts each member from its LETKF analysis
    # (filter/src/score/filter.rs: a bundle without ensemble_gaussian gets the LETKF baseline); its own
    # runs and data dir; RTPS-only runs reach rmse 1.6-2.3 in this regime, hence the cutoff 3; sigma
    # drawn as the pilot's (train.SIGMA_DISTS).
    "l96-long": {**L96_LONG, "reproduce": "models/train/run.sh l96 --bundles l96-long"},
    # round 2 of the long window: l96-long (its committed ONNX weights) fine-tuned on the score filter's
    # own cycled runs (data.l96_long_selftrain_runs) plus the round-1 LETKF triples
    "l96-long-selftrain": {**L96_LONG, "init_bundle": "l96-long",
                           "regime": {**L96_LONG["regime"],
                                      "experiments": "configs/experiments/l96-sparse-r0.5-dt0.4-n20-*.toml"},
                           "reproduce": "models/train/run.sh l96 --self-train l96-long"},
}
DEFAULT_BUNDLES = "l96,l96-gauss-meanspread,l96-setenc,l96-meanspread"
# Sampler of the score filter's round-2 data runs (the shipped l96 default, configs/experiments).
SELFTRAIN_SAMPLER = ["--steps", "8", "--corrections", "0", "--sigma-start", "0.1", "--start", "sqrt"]


def git_commit():
    return manifest_toml.git_commit("models/train", "models/train")


def data_spec(bundle: str) -> tuple[str, str, float]:
    """(key of data.RUNS, directory under --data-dir, divergence cutoff on rmse_a) of a variant."""
    cfg = VARIANTS[bundle]
    return cfg.get("runs", cfg["testbed"]), cfg.get("data_dir", cfg["testbed"]), cfg.get("max_rmse", 2.0)


def record(testbed: str, binary: str, data_dir: str, spec: tuple[str, str, float]):
    """Record (or reuse the cached) runs of one data set. Returns (kept provenance, names of dropped runs)."""
    runs_key, sub, max_rmse = spec
    runs = data.RUNS[runs_key]()
    kept = data.generate(testbed, binary, os.path.join(data_dir, sub), max_rmse=max_rmse, runs=runs,
                         label=f"{runs_key} training data")
    names = {r["name"] for r in kept}
    return kept, [r.name for r in runs if r.name not in names]


def load_bundle_weights(model, bundle_dir: str, log=print):
    """Load a committed bundle's weights into `model`: the ONNX initializers of denoiser.onnx and
    conditioner.onnx carry the torch parameter names (den.*, cond.*), so round 2 starts from exactly
    the shipped round-1 network even where models/train/runs/ (not committed) is gone."""
    import onnx
    from onnx import numpy_helper
    state = model.state_dict()
    found = {}
    for g in ("denoiser.onnx", "conditioner.onnx"):
        path = os.path.join(bundle_dir, g)
        if os.path.exists(path):
            for t in onnx.load(path).graph.initializer:
                if t.name in state:
                    found[t.name] = torch.from_numpy(numpy_helper.to_array(t).copy())
    missing = [k for k in state if k not in found]
    if missing:
        raise SystemExit(f"{bundle_dir}: no initializer for {', '.join(missing[:5])}; the bundle was not "
                         "exported from this network (nets.ScoreModel)")
    for k, v in found.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise SystemExit(f"{bundle_dir}: {k} has shape {tuple(v.shape)}, the network {tuple(state[k].shape)}")
    model.load_state_dict(found)
    log(f"loaded {len(found)} tensors from {bundle_dir}")


def build(bundle: str, kept: list[dict], iters: int, batch: int, seed: int, log=print,
          dropped: list[str] | None = None, out_root: str = ZOO):
    """Train, evaluate and export one variant into out_root/<bundle>/ (manifest.toml, graphs, fixtures);
    the EMA weights and a JSON report go to models/train/runs/<bundle>/."""
    cfg = VARIANTS[bundle]
    torch.manual_seed(seed)
    trn = data.load(kept, "train")
    val = data.load(kept, "val")
    val_names = [r["name"] for r in kept if r["split"] == "val"]
    log(f"[{bundle}] train triples {len(trn.truth)}, val triples {len(val.truth)}")
    model = nets.ScoreModel(set_encoder=cfg["set_encoder"], gauss=cfg.get("gauss", False))
    lr = 2e-3
    if cfg.get("init"):
        init = os.path.join(TRAIN_DIR, "runs", cfg["init"], "model_ema.pt")
        model.load_state_dict(torch.load(init))
        lr = 5e-4
        log(f"[{bundle}] fine-tuning from {init} at lr {lr}")
    if cfg.get("init_bundle"):
        load_bundle_weights(model, os.path.join(REPO, "models", "zoo", cfg["init_bundle"]), log=log)
        lr = 5e-4
        log(f"[{bundle}] fine-tuning from models/zoo/{cfg['init_bundle']} at lr {lr}")
    t0 = time.time()
    ema, info = tr_mod.train(model, trn, iters=iters, batch=batch, seed=seed, lr=lr, log=log,
                             sigma_dist=cfg.get("sigma", "loguniform"))
    wall_train = time.time() - t0
    info = {**info, "lr": lr, "init": (f"models/zoo/{cfg['init_bundle']} (its ONNX weights)" if cfg.get("init_bundle")
                                       else f"models/train/runs/{cfg['init']}/model_ema.pt" if cfg.get("init") else "random")}
    run_dir = os.path.join(TRAIN_DIR, "runs", bundle)
    os.makedirs(run_dir, exist_ok=True)
    torch.save(ema.state_dict(), os.path.join(run_dir, "model_ema.pt"))
    t1 = time.time()
    bins = tr_mod.eval_bins(ema, val)
    for b in bins:
        log(f"[{bundle}] sigma {b['sigma_lo']:.2f}-{b['sigma_hi']:.2f}: edm {b['edm_loss']:.4f} rmse x0 "
            f"{b['rmse_x0']:.4f} (gaussian {b['rmse_x0_gaussian_baseline']:.4f})")
    cal = tr_mod.calibration(ema, val, val_names)
    log(f"[{bundle}] calibration: {json.dumps(cal['all'])}")
    wall_eval = time.time() - t1
    # one held-out triple as export example / fixtures
    k = len(val.truth) // 3
    example = {"members": val.members[k], "mean": val.mean[k], "spread": val.spread[k]}
    out_dir = os.path.join(out_root, bundle)
    extra = (lambda mem: dict(zip(("basis", "eigvals"), ema.spectrum(mem)))) if ema.gauss else None
    rep = export_bundle(out_dir, ema.den, example, cond=ema.cond, extra=extra)
    log(f"[{bundle}] export checks: {json.dumps(rep['checks'])}")
    man = manifest(bundle, cfg, ema, kept, trn, val, info, bins, cal, rep, wall_train, wall_eval, dropped)
    with open(os.path.join(out_dir, "manifest.toml"), "w") as f:
        f.write(man)
    json.dump({"bins": bins, "calibration": cal, "checks": rep["checks"], "train": info},
              open(os.path.join(run_dir, "report.json"), "w"), indent=1)
    return rep


def manifest(bundle, cfg, model, kept, trn, val, info, bins, cal, rep, wall_train, wall_eval, dropped=None):
    import onnx
    import onnxruntime
    se = cfg["set_encoder"]
    n_members = int(trn.members.shape[1])
    max_rmse = data_spec(bundle)[2]
    dropped_text = ("not recorded" if dropped is None else ", ".join(dropped) or "none")
    regime = cfg.get("regime")
    C = model.den.feat_ch
    cond_inputs = {
        "mean": {"shape": [1, 40], "dtype": "float32", "what": "background ensemble mean"},
        "spread": {"shape": [1, 40], "dtype": "float32",
                   "what": "background per-point ensemble std (ddof = 1), raw (the graph takes sqrt(spread^2 + 0.05^2) and its log)"},
    }
    if se:
        cond_inputs["features"] = {"shape": [1, C, 40], "dtype": "float32",
                                   "what": "output of conditioner.onnx on the background members, computed once per cycle"}
    gauss = cfg.get("gauss", False)
    if gauss:
        cond_inputs["basis"] = {"shape": [1, 40, 40], "dtype": "float32",
                                "what": "eigenvectors (columns) of the localised ensemble covariance P (see ensemble_gaussian)"}
        cond_inputs["eigvals"] = {"shape": [1, 40], "dtype": "float32",
                                  "what": "eigenvalues of P, in the order of basis' columns"}
    graphs = {}
    for name, g in rep["graphs"].items():
        graphs[name] = {"file": g["file"],
                        "inputs": list(g["inputs"].keys()),
                        "outputs": list(g["outputs"].keys()),
                        "dtype": "float32",
                        "input_shapes": {k: v for k, v in g["inputs"].items()},
                        "output_shapes": {k: v for k, v in g["outputs"].items()}}
    m = {
        "name": bundle,
        "testbed": "l96",
        "description": ("EDM denoiser of p(x | background ensemble) for Lorenz-96, pixel space, conditioned on "
                        "the background mean, per-point spread" + (" and DeepSets set-encoder features of the "
                                                                     "members' anomalies (conditioner.onnx)" if se else " (no set encoder)")
                        + ("; skip connection = exact denoiser of the localised ensemble Gaussian (basis, eigvals)" if gauss else "")
                        + (f"; trained for the l96 regime {regime['name']}: network {regime['network']}, "
                           f"{regime['steps_per_cycle']} model steps of 0.05 per cycle, R = {regime['obs_error_variance']:g} I, "
                           f"N = {n_members} (see [regime])" if regime else "")),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "git_commit_note": ("commit of the training code (models/train) the bundle was exported with; the bundle's own "
                            "files are committed afterwards, so `git log -- models/zoo/<name>` gives that commit"),
        "reproduce": cfg.get("reproduce", f"models/train/run.sh l96   (bundle {bundle})"),
        "grid": {"n_points": 40, "geometry": "ring (periodic 1-D)", "dims": [40]},
        "variables": ["x"],
        "normalisation": {
            "space": "pixel (the filter samples x itself)",
            "codec": "identity (no encoder.onnx / decoder.onnx)",
            "edm": ("per point: r = x_sigma - mean, s_d = sqrt(spread^2 + 0.05^2), c_skip = s_d^2/(sigma^2+s_d^2), "
                    "c_out = sigma s_d/sqrt(sigma^2+s_d^2), c_in = 1/sqrt(sigma^2+s_d^2), c_noise = log(sigma)/4; "
                    "x0_hat = mean + c_skip r + c_out F(...), inside the graph"),
            "s0": nets.S0, "x_clim_mean": nets.L96_X_MEAN, "x_clim_std": nets.L96_X_STD,
        },
        "latent": {"shape": [40], "note": "identity codec: latent = state"},
        "noise": {"sigma_min": tr_mod.SIGMA_MIN, "sigma_max": tr_mod.SIGMA_MAX,
                  "train_sigma_distribution": tr_mod.sigma_dist_text(cfg.get("sigma", "loguniform")),
                  "units": "state units (x), isotropic"},
        "conditioning": {"set_encoder": se, "feature_channels": C, "inputs": cond_inputs,
                         **({"ensemble_gaussian": {
                             "half_width_km": nets.EG_HALF_WIDTH_KM, "inflation": nets.EG_INFLATION, "floor": nets.EG_FLOOR,
                             "what": ("P = inflation (L o C) + floor^2 I, C the background members' covariance (ddof 1), "
                                      "L Gaspari-Cohn of the ring distance / half_width_km; the denoiser's skip is the exact "
                                      "denoiser of N(mean, P): mean + U diag(lam/(lam+sigma^2)) U^T (x_sigma - mean), the network adds "
                                      "post_sd * F with post_sd = sqrt(diag(U diag(lam sigma^2/(lam+sigma^2)) U^T))")}} if gauss else {}),
                         "batch_note": "conditioning has batch dim 1 and is broadcast over the B members/samples of x_sigma"},
        "graphs": graphs,
        "architecture": {
            "denoiser": f"circular 1-D conv ResNet, width 48, 4 residual blocks (2 convs k=5 each, FiLM on log sigma), "
                        f"in channels 4 + {C}; {nets.n_params(model.den)} parameters",
            "conditioner": ("DeepSets: phi = 2 shared circular convs (1->32->32, k=5, SiLU) on each member's anomaly / s_d, "
                            "pooled by mean and mean square over members, rho = 2 circular convs (64->64->16, k=3); "
                            f"{nets.n_params(model.cond)} parameters") if se else "none",
        },
        "training": {
            "target": "x_truth from x_truth + sigma eps, conditioned on the recorded background ensemble",
            "loss": "EDM, lambda = 1/c_out^2 per point",
            "augmentation": "random circular shift of the ring per triple (no reflection: not an L96 symmetry)",
            "iterations": info["iters"], "batch_triples": info["batch_triples"],
            "sigma_draws_per_triple": info["sigma_draws_per_triple"], "optimizer": f"Adam, cosine lr from {info['lr']:g}, clip 1, EMA 0.999 (exported)",
            "initialised_from": info["init"],
            "final_train_loss_ema": info["final_train_loss"],
            "wall_seconds_train": round(wall_train, 1), "wall_seconds_eval": round(wall_eval, 1),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "opset": 18,
        },
        "data": {
            "source": ("assimd experiment --record DIR --record-every 1 --record-members (truth.npy, mean.npy, spread.npy, "
                       f"members.npy: float32 (K,40) / (K,{n_members},40))"),
            "train_triples": int(len(trn.truth)), "val_triples": int(len(val.truth)),
            "members": n_members,
            "dropped": f"runs with assimd exit != 0 or rmse_a > {max_rmse:g} (diverged): {dropped_text}",
            "seeds_note": "training seeds 1000-1899, validation seeds 1900-1999 (per run below); test seeds 1-99 and tuning seeds 100-199 never used",
            "runs": [{"name": r["name"], "split": r["split"], "network": r["network"], "filter": r["filter"],
                      "seed": r["seed"], "inflation": r["inflation"], "rtps": r["rtps"],
                      "localization_km": r["localization_km"], "records": r["records"],
                      "rmse_a": round(r["rmse_a"], 4), "spread_a": round(r["spread_a"], 4),
                      "command": "assimd " + r["command"]} for r in kept],
        },
        "quality": {
            "loss_per_sigma": [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in b.items()} for b in bins],
            "loss_per_sigma_note": "held-out triples (2048, val runs); rmse_x0 = RMSE of x0_hat vs truth; gaussian baseline = mean + c_skip (x_sigma - mean), i.e. F = 0",
            "calibration": cal,
        },
        "parity": rep["checks"],
        "fixtures": {"dir": "fixtures", "index": "fixtures/index.json", "format": "npy float32 little-endian",
                     "tolerance_max_abs": 1e-4},
    }
    if regime:  # [regime] after `variables`: the observing setup the bundle is for (the Rust Manifest ignores it)
        items = list(m.items())
        at = [k for k, _ in items].index("variables") + 1
        m = dict(items[:at] + [("regime", {**regime, "members": n_members})] + items[at:])
    return manifest_toml.dumps(m, "assimd model bundle (DESIGN §5), written by models/train (python -m assimd_train)")


def main():
    ap = argparse.ArgumentParser(prog="python -m assimd_train")
    ap.add_argument("testbed", choices=["l96"])
    ap.add_argument("--bundles", default=DEFAULT_BUNDLES,
                    help=f"comma-separated, of: {', '.join(VARIANTS)} (default: {DEFAULT_BUNDLES}; "
                         "l96-selftrain through --self-train)")
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "assimd"))
    ap.add_argument("--data-dir", default=os.path.join(TRAIN_DIR, "data"))
    ap.add_argument("--out-root", default=ZOO,
                    help="bundles go to OUT_ROOT/<bundle>/ (default models/zoo; e.g. a scratch directory to "
                         "retrain without touching the committed bundles)")
    ap.add_argument("--iters", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--self-train", nargs="?", const="l96", choices=["l96", "l96-long"], default=None,
                    help="round 2: record the score filter's own cycled runs with models/zoo/<round 1> (l96, the "
                         "default, or l96-long), then fine-tune round 1 on those plus the round-1 triples into "
                         "models/zoo/<round 1>-selftrain")
    ap.add_argument("--self-train-iters", type=int, default=1500)
    a = ap.parse_args()
    bundles = [f"{a.self_train}-selftrain"] if a.self_train else a.bundles.split(",")
    unknown = [b for b in bundles if b not in VARIANTS or VARIANTS[b]["testbed"] != a.testbed]
    if unknown:
        ap.error(f"unknown {a.testbed} bundle(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(a.threads)
    # every data set the bundles need, recorded (or found cached) before any training
    sets = {}
    for b in bundles:
        spec = data_spec(b)
        if spec not in sets:
            sets[spec] = record(a.testbed, a.binary, a.data_dir, spec)
    if a.self_train:
        bundle = f"{a.self_train}-selftrain"
        kept, dropped = sets[data_spec(bundle)]
        runs_key, sub, max_rmse = data_spec(bundle)
        round1 = os.path.join(REPO, "models", "zoo", a.self_train)
        st_runs = (data.l96_long_selftrain_runs(REPO, round1) if a.self_train == "l96-long"
                   else data.l96_selftrain_runs(round1, SELFTRAIN_SAMPLER))
        st = data.generate(a.testbed, a.binary, os.path.join(a.data_dir, sub), max_rmse=max_rmse,
                           runs=st_runs, index="runs-selftrain.json", label=f"{bundle} data")
        st_names = {r["name"] for r in st}
        dropped = dropped + [r.name for r in st_runs if r.name not in st_names]
        build(bundle, kept + st, a.self_train_iters, a.batch, a.seed + 1, dropped=dropped, out_root=a.out_root)
        return
    for b in bundles:
        kept, dropped = sets[data_spec(b)]
        build(b, kept, a.iters, a.batch, a.seed, dropped=dropped, out_root=a.out_root)
