"""PyTorch-eager timing of a bundle's denoiser and VJP, the reference for the Rust criterion benchmark
`cargo bench -p assimd-models --bench bundle` (which runs the same graphs through ONNX Runtime and
prints the ratio).

python -m assimd_train.bench_torch <bundle>   (after training: loads runs/<bundle>/model_ema.pt)

Writes models/zoo/<bundle>/bench_torch.json: per batch size B the median wall time of one call of
  denoise:  x0_hat = D(x_sigma; sigma, conditioning)                  (torch.no_grad)
  vjp:      x0_hat and J^T v by torch.func.vjp                        (what denoiser_vjp.onnx computes)
on one thread (ONNX Runtime's sessions in assimd use one intra-op thread by default), with the
conditioning of one held-out example (the export fixtures).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np
import torch

from . import nets
from .export import DenoiserGraph
from .pipeline import REPO, TRAIN_DIR, VARIANTS

BATCHES = [1, 20, 80]


def _median_time(fn, min_seconds: float = 1.0, min_reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < min_reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench(bundle: str) -> dict:
    torch.set_num_threads(1)
    cfg = VARIANTS[bundle]
    model = nets.ScoreModel(set_encoder=cfg["set_encoder"], gauss=cfg.get("gauss", False))
    model.load_state_dict(torch.load(os.path.join(TRAIN_DIR, "runs", bundle, "model_ema.pt")))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fx = os.path.join(REPO, "models", "zoo", bundle, "fixtures")
    ld = lambda n: torch.from_numpy(np.load(os.path.join(fx, f"denoiser_in_{n}.npy")))
    names = ["mean", "spread"] + (["features"] if cfg["set_encoder"] else []) + (["basis", "eigvals"] if cfg.get("gauss") else [])
    cond = [ld(n) for n in names]
    x1 = ld("x_sigma")[:1]
    P = x1.shape[-1]
    g = DenoiserGraph(model.den, names).eval()
    out = {"bundle": bundle, "threads": 1, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "what": "median seconds per call, PyTorch eager, one thread", "batches": {}}
    for b in BATCHES:
        gen = torch.Generator().manual_seed(b)
        x = x1.expand(b, P) + 0.1 * torch.randn(b, P, generator=gen)
        sigma = torch.full((b,), 0.3)
        v = torch.randn(b, P, generator=gen)

        def den():
            with torch.no_grad():
                return g(x, sigma, *cond)

        def vjp():
            o, pull = torch.func.vjp(lambda xx: g(xx, sigma, *cond), x)
            return o, pull(v)[0]

        out["batches"][str(b)] = {"denoise": _median_time(den), "vjp": _median_time(vjp)}
        print(f"[bench] {bundle} B={b}: denoise {out['batches'][str(b)]['denoise'] * 1e3:.3f} ms, "
              f"vjp {out['batches'][str(b)]['vjp'] * 1e3:.3f} ms", flush=True)
    path = os.path.join(REPO, "models", "zoo", bundle, "bench_torch.json")
    json.dump(out, open(path, "w"), indent=1)
    return out


if __name__ == "__main__":
    for name in sys.argv[1:] or ["l96"]:
        bench(name)
