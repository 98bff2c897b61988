"""Joint training of conditioner + denoiser on recorded triples, per-sigma evaluation, calibration.

Target: x_truth given x_sigma = x_truth + sigma * eps and the background ensemble, i.e. the denoiser of
p(x | background ensemble). EDM loss with lambda(sigma) = 1/c_out^2 (per point), sigma log-uniform in
[SIG_LO, SIG_HI] (or the long-window pilot's mixture: SIGMA_DISTS, draw_sigma); circular shifts of the
ring as augmentation (no reflection: not an L96 symmetry).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .fit import fit

SIG_LO, SIG_HI = 0.005, 12.0          # training range (slightly wider than the advertised 0.01..10)
SIGMA_MIN, SIGMA_MAX = 0.01, 10.0
BINS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]

# Training distributions of sigma. "pilot" is the long-window pilot's (../shared/notes/long-window-pilot.md):
# 70 % log-normal, median 0.5, std of log sigma 1.2 (EDM's P_std; the note gives no value), and 30 %
# log-uniform on [0.01, 8]. It puts the training where that sampler works (sigma_start ~ the background
# spread, ~2, down to 0.02). Draws are clamped to [SIG_LO, SIG_HI] so that the bundle's advertised range holds.
PILOT = {"p_lognormal": 0.7, "median": 0.5, "p_std": 1.2, "uniform_lo": 0.01, "uniform_hi": 8.0}
SIGMA_DISTS = ("loguniform", "pilot")


def draw_sigma(n: int, gen, dist: str = "loguniform") -> torch.Tensor:
    """n training noise levels from `gen`: "loguniform" one uniform draw of log sigma per level; "pilot"
    n normal, n uniform and n selector draws (PILOT)."""
    if dist == "loguniform":
        return torch.exp(torch.empty(n).uniform_(math.log(SIG_LO), math.log(SIG_HI), generator=gen))
    if dist == "pilot":
        p = PILOT
        ln = math.log(p["median"]) + p["p_std"] * torch.randn(n, generator=gen)
        lu = torch.empty(n).uniform_(math.log(p["uniform_lo"]), math.log(p["uniform_hi"]), generator=gen)
        pick = torch.rand(n, generator=gen) < p["p_lognormal"]
        return torch.exp(torch.where(pick, ln, lu)).clamp(SIG_LO, SIG_HI)
    raise ValueError(f"sigma_dist {dist!r}: expected one of {SIGMA_DISTS}")


def sigma_dist_text(dist: str = "loguniform") -> str:
    """The manifest's `[noise] train_sigma_distribution`."""
    if dist == "loguniform":
        return f"log-uniform [{SIG_LO}, {SIG_HI}]"
    if dist == "pilot":
        p = PILOT
        return (f"mixture (long-window pilot): {p['p_lognormal']:g} log-normal (median {p['median']:g}, "
                f"std of log sigma {p['p_std']:g}) + {1 - p['p_lognormal']:g} log-uniform "
                f"[{p['uniform_lo']:g}, {p['uniform_hi']:g}], clamped to [{SIG_LO}, {SIG_HI}]")
    raise ValueError(f"sigma_dist {dist!r}: expected one of {SIGMA_DISTS}")


class Batcher:
    def __init__(self, tr, device="cpu"):
        self.truth = torch.from_numpy(tr.truth)
        self.mean = torch.from_numpy(tr.mean)
        self.spread = torch.from_numpy(tr.spread)
        self.members = torch.from_numpy(tr.members)
        self.K, self.P = self.truth.shape

    def get(self, idx, shift):
        P = self.P
        ix = (torch.arange(P)[None, :] + shift[:, None]) % P               # (B,P)
        t = torch.gather(self.truth[idx], 1, ix)
        m = torch.gather(self.mean[idx], 1, ix)
        s = torch.gather(self.spread[idx], 1, ix)
        mem = self.members[idx]
        mem = torch.gather(mem, 2, ix[:, None, :].expand(-1, mem.shape[1], -1))
        return t, m, s, mem

    def sample(self, B, gen):
        idx = torch.randint(0, self.K, (B,), generator=gen)
        shift = torch.randint(0, self.P, (B,), generator=gen)
        return self.get(idx, shift)


def edm_loss(model, t, m, s, mem, sigma, eps, feats=None, spec=None):
    if feats is None:
        feats = model.features(mem, m, s)
    if spec is None:
        spec = model.spectrum(mem)
    x_sigma = t + sigma[:, None] * eps
    x0, (f, skip, c_out) = model.den(x_sigma, sigma, m, s, feats, *spec)
    target = ((t - m) - skip) / c_out
    return ((f - target) ** 2).mean(dim=-1), x0


def train(model, tr, iters: int, batch: int = 128, reps: int = 2, lr: float = 2e-3, seed: int = 0,
          log_every: int = 250, log=print, sigma_dist: str = "loguniform"):
    """fit.fit on the EDM loss of `reps` sigma draws per triple (the conditioner runs once per triple);
    returns the EMA copy and the training report. sigma_dist: the training distribution of sigma
    (SIGMA_DISTS, draw_sigma)."""
    sigma_text = sigma_dist_text(sigma_dist)  # fails early on an unknown name
    data = Batcher(tr)
    rep = lambda a: a.repeat((reps,) + (1,) * (a.dim() - 1)) if a is not None else None

    def loss_fn(gen):
        t, m, s, mem = data.sample(batch, gen)
        feats = model.features(mem, m, s)
        u, lam = model.spectrum(mem)
        t, m, s, feats = rep(t), rep(m), rep(s), rep(feats)
        sigma = draw_sigma(batch * reps, gen, sigma_dist)
        eps = torch.randn(batch * reps, data.P, generator=gen)
        return edm_loss(model, t, m, s, None, sigma, eps, feats=feats, spec=(rep(u), rep(lam)))[0].mean()

    ema, info = fit(model, loss_fn, iters, lr=lr, warmup=200, ema_decay=0.999, loss_weight=0.02, seed=seed,
                    tag="train", log=log, log_every=log_every)
    info.update({"batch_triples": batch, "sigma_draws_per_triple": reps})
    if sigma_dist != "loguniform":  # (the default's report has no sigma_dist keys)
        info.update({"sigma_dist": sigma_dist, "sigma_distribution": sigma_text})
    return ema, info


@torch.no_grad()
def eval_bins(model, va, n: int = 2048, seed: int = 123):
    """Denoiser loss per sigma bin on held-out triples: EDM loss, and the MSE of x0_hat against the
    truth compared with the diagonal-Gaussian baseline (F = 0: mean + c_skip r)."""
    gen = torch.Generator().manual_seed(seed)
    data = Batcher(va)
    t, m, s, mem = data.sample(n, gen)
    feats = model.features(mem, m, s)
    spec = model.spectrum(mem)
    out = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sigma = torch.exp(torch.empty(n).uniform_(math.log(lo), math.log(hi), generator=gen))
        eps = torch.randn(n, data.P, generator=gen)
        l, x0 = edm_loss(model, t, m, s, mem, sigma, eps, feats=feats, spec=spec)
        x_sigma = t + sigma[:, None] * eps
        c_skip = model.den.precond(sigma, s)[0]
        base = m + c_skip * (x_sigma - m)
        if model.gauss:
            from .nets import gaussian_denoise
            base = m + gaussian_denoise(x_sigma - m, sigma, *spec)[0]
        mse = ((x0 - t) ** 2).mean().item()
        mse_b = ((base - t) ** 2).mean().item()
        out.append({"sigma_lo": lo, "sigma_hi": hi, "edm_loss": l.mean().item(),
                    "rmse_x0": math.sqrt(mse), "rmse_x0_gaussian_baseline": math.sqrt(mse_b)})
    return out


def karras(n, smin=SIGMA_MIN, smax=SIGMA_MAX, rho=7.0):
    i = torch.arange(n, dtype=torch.float64)
    s = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)]).float()


@torch.no_grad()
def sample(model, m, s, feats, n_samples: int, steps: int = 24, gen=None, spec=(None, None)):
    """Unguided EDM Heun sampler (Karras et al. 2022, Alg. 1) of p(x | background) for one triple."""
    P = m.shape[-1]
    M, S = m.expand(n_samples, P), s.expand(n_samples, P)
    Fe = feats.expand(n_samples, -1, -1) if feats is not None else None
    U = spec[0].expand(n_samples, -1, -1) if spec[0] is not None else None
    L = spec[1].expand(n_samples, -1) if spec[1] is not None else None
    D = lambda x, sg: model.den(x, torch.full((n_samples,), float(sg)), M, S, Fe, U, L)[0]
    return heun(D, M, steps, gen)


def heun(D, M, steps: int, gen=None):
    """EDM Heun steps over `steps` Karras levels from sigma_max, starting at M + sigma_max * noise;
    D(x, sigma) is the denoiser for the batch x (shape of M). Shared by the l96 and qg2l calibrations."""
    sig = karras(steps)
    x = M + sig[0] * torch.randn(M.shape, generator=gen)
    for i in range(steps):
        s0, s1 = sig[i], sig[i + 1]
        d = (x - D(x, s0)) / s0
        x1 = x + (s1 - s0) * d
        if s1 > 0:
            d1 = (x1 - D(x1, s1)) / s1
            x1 = x + (s1 - s0) * 0.5 * (d + d1)
        x = x1
    return x


@torch.no_grad()
def calibration(model, va, run_names, n_per_run: int = 24, n_samples: int = 20, seed: int = 7):
    """Spread of samples from p(x | background) vs the error of their mean, on held-out triples, per
    validation run and overall. Also the background's own error and spread for reference."""
    gen = torch.Generator().manual_seed(seed)
    data = Batcher(va)
    res = {}
    allrows = []
    for rid, name in enumerate(run_names):
        cand = np.nonzero(va.run_id == rid)[0]
        pick = cand[np.linspace(0, len(cand) - 1, n_per_run).astype(int)]
        rows = []
        for k in pick:
            idx = torch.tensor([int(k)])
            t, m, s, mem = data.get(idx, torch.zeros(1, dtype=torch.long))
            feats = model.features(mem, m, s)
            xs = sample(model, m, s, feats, n_samples, gen=gen, spec=model.spectrum(mem))
            pm = xs.mean(0)
            rows.append([((m[0] - t[0]) ** 2).mean().item(), (s[0] ** 2).mean().item(),
                         ((pm - t[0]) ** 2).mean().item(), xs.var(0, unbiased=True).mean().item(),
                         # crps of the sample ensemble, averaged over points
                         ((xs - t).abs().mean(0) - 0.5 * (xs[:, None] - xs[None]).abs().mean((0, 1))).mean().item()])
        allrows += rows
        res[name] = _calib_summary(np.array(rows), n_samples)
    res["all"] = _calib_summary(np.array(allrows), n_samples)
    res["all"].update({"triples": len(allrows), "samples_per_triple": n_samples, "sampler": "Heun, 24 Karras steps 10 -> 0.01, unguided"})
    return res


def _calib_summary(a, n):
    r = {"rmse_background_mean": math.sqrt(a[:, 0].mean()), "spread_background": math.sqrt(a[:, 1].mean()),
         "rmse_sample_mean": math.sqrt(a[:, 2].mean()), "spread_samples": math.sqrt(a[:, 3].mean()),
         "crps_samples": float(a[:, 4].mean())}
    # for a calibrated ensemble of n draws, E|mean - truth|^2 = (1 + 1/n) * spread^2
    r["spread_over_rmse_samples"] = r["spread_samples"] * math.sqrt(1 + 1 / n) / r["rmse_sample_mean"]
    r["spread_over_rmse_background"] = r["spread_background"] / r["rmse_background_mean"]
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}
