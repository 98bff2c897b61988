"""qg2l training: the autoencoder (stage 1), latent triples (stage 2), the latent score model (stage 3),
and their evaluation (reconstruction errors, loss per noise level, calibration).

Augmentation: periodic translations. Shifting a state by 4 pixels shifts its latent by one cell exactly
(periodic stride-1 convs and a 4x4 space-to-depth), so the score model is trained on latents rolled by
whole cells; the autoencoder sees states rolled by any number of pixels.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .fit import fit
from .train import heun
from .qg2l_nets import CP_HPA, CT_K, OBS_SIGMA, PSI_STD, AutoEncoder, ScoreModel

SIG_LO, SIG_HI = 0.005, 12.0        # training range (latent units; z has unit climatological std)
SIGMA_MIN, SIGMA_MAX = 0.01, 10.0
BINS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]


# ------------------------------------------------------------------------------------------------
# Stage 1: autoencoder
# ------------------------------------------------------------------------------------------------

def train_ae(states: np.ndarray, iters: int, batch: int = 32, lr: float = 2e-3, seed: int = 0,
             ae_kw: dict | None = None, log=print, log_every: int = 100, max_seconds: float | None = None):
    """states (M,2,64,64) float32 (truth and background members). Loss: sum over the two layers of the
    MSE relative to the layer's climatological variance. Returns the EMA copy and a training record."""
    torch.manual_seed(seed)                     # the initial weights
    X = torch.from_numpy(states)
    model = AutoEncoder(**(ae_kw or {}))
    std = torch.tensor(PSI_STD).view(1, 2, 1, 1)

    def loss_fn(gen):
        idx = torch.randint(0, len(X), (batch,), generator=gen)
        dy, dx = (int(v) for v in torch.randint(0, 64, (2,), generator=gen))
        x = torch.roll(X[idx], shifts=(dy, dx), dims=(2, 3))
        err = (model(x) - x) / std
        return (err ** 2).mean(dim=(0, 2, 3)).sum()

    ema, info = fit(model, loss_fn, iters, lr=lr, warmup=100, ema_decay=0.998, loss_weight=0.03, seed=seed,
                    tag="ae", loss_name="rel-MSE(sum of layers)", log=log, log_every=log_every,
                    max_seconds=max_seconds)
    info["batch"] = batch
    return ema, info


def disc_filter(radius_km: float, n: int = 64, length_km: float = 1000.0) -> np.ndarray:
    """Periodic footprint-mean operator (disc of the given radius) as a Fourier multiplier (n, n)."""
    h = length_km / n
    d = (np.arange(n) + n // 2) % n - n // 2
    r = np.hypot(d[:, None] * h, d[None, :] * h)
    k = (r <= radius_km).astype(np.float64)
    k /= k.sum()
    return np.fft.fft2(k)


@torch.no_grad()
def eval_ae(ae, states: np.ndarray, batch: int = 128) -> dict:
    """Reconstruction errors on held-out states: RMSE per layer in m^2/s, relative to the climatological
    std and to the sample std, and in observed units (pressure, temperature, 60 km-footprint brightness
    temperature) against the observation errors."""
    se = np.zeros(2)
    se_p = se_t = se_bt = 0.0
    var = np.zeros(2)
    n = 0
    fp = disc_filter(30.0)
    for i in range(0, len(states), batch):
        x = torch.from_numpy(states[i:i + batch])
        e = (ae(x) - x).double().numpy()
        se += (e ** 2).sum(axis=(0, 2, 3))
        var += (x.double().numpy() ** 2).sum(axis=(0, 2, 3))
        se_p += ((CP_HPA * e[:, 1]) ** 2).sum()
        et = CT_K * (e[:, 0] - e[:, 1])
        se_t += (et ** 2).sum()
        ebt = np.real(np.fft.ifft2(np.fft.fft2(et) * fp))
        se_bt += (ebt ** 2).sum()
        n += e.shape[0] * 64 * 64
    rmse = np.sqrt(se / n)
    sd = np.sqrt(var / n)   # the climatological mean is 0
    out = {"states": int(len(states)),
           "rmse_psi1_m2s": float(rmse[0]), "rmse_psi2_m2s": float(rmse[1]),
           "rel_rmse_psi1_vs_clim_std": float(rmse[0] / PSI_STD[0]),
           "rel_rmse_psi2_vs_clim_std": float(rmse[1] / PSI_STD[1]),
           "rel_rmse_psi1_vs_sample_std": float(rmse[0] / sd[0]),
           "rel_rmse_psi2_vs_sample_std": float(rmse[1] / sd[1]),
           "rmse_pressure_hPa": float(np.sqrt(se_p / n)),
           "rmse_temperature_K": float(np.sqrt(se_t / n)),
           "rmse_brightness_temperature_K": float(np.sqrt(se_bt / n)),
           "obs_sigma": OBS_SIGMA}
    out["pressure_rmse_over_obs_sigma"] = out["rmse_pressure_hPa"] / OBS_SIGMA["pressure_hPa"]
    out["temperature_rmse_over_obs_sigma"] = out["rmse_temperature_K"] / OBS_SIGMA["temperature_K"]
    out["brightness_temperature_rmse_over_obs_sigma"] = (out["rmse_brightness_temperature_K"]
                                                         / OBS_SIGMA["brightness_temperature_K"])
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in out.items()}


@torch.no_grad()
def latent_scale(ae, states: np.ndarray, batch: int = 256) -> np.ndarray:
    """Per-channel std of z over the states (the climatological latent scale)."""
    s2, n = None, 0
    for i in range(0, len(states), batch):
        z = ae.enc(torch.from_numpy(states[i:i + batch])).double()
        v = (z ** 2).sum(dim=(0, 2, 3)) - 0.0
        s2 = v if s2 is None else s2 + v
        n += z.shape[0] * z.shape[2] * z.shape[3]
    # use the centred second moment (latent means are ~0 by symmetry, but be exact)
    return np.sqrt(s2.numpy() / n)


# ------------------------------------------------------------------------------------------------
# Stage 2: latent triples
# ------------------------------------------------------------------------------------------------

@torch.no_grad()
def encode_triples(ae, tr, batch: int = 264, log=print) -> dict:
    """Encode truth and members of every record with the frozen encoder. The conditioning statistics
    are those of the encoded members (mean, ddof-1 std), exactly what the Rust side computes."""
    K, N = tr.members.shape[:2]
    t0 = time.time()
    zt = torch.cat([ae.enc(torch.from_numpy(tr.truth[i:i + batch])) for i in range(0, K, batch)])
    flat = tr.members.reshape(K * N, 2, 64, 64)
    zm = torch.cat([ae.enc(torch.from_numpy(flat[i:i + batch])) for i in range(0, K * N, batch)])
    zm = zm.reshape(K, N, *zm.shape[1:])
    log(f"[latent] encoded {K} truths and {K * N} members in {time.time() - t0:.0f}s")
    return {"truth": zt.numpy(), "members": zm.numpy(), "mean": zm.mean(1).numpy(),
            "spread": zm.std(1, unbiased=True).numpy(), "run_id": tr.run_id}


# ------------------------------------------------------------------------------------------------
# Stage 3: latent score model
# ------------------------------------------------------------------------------------------------

class LatentBatcher:
    def __init__(self, lat: dict):
        self.truth = torch.from_numpy(lat["truth"])
        self.members = torch.from_numpy(lat["members"])
        self.mean = torch.from_numpy(lat["mean"])
        self.spread = torch.from_numpy(lat["spread"])
        self.K, self.N = self.members.shape[:2]

    def get(self, idx, shift=(0, 0), n_members=None, gen=None):
        """Triples idx rolled by `shift` latent cells; a random subset of n_members members (the
        conditioning statistics stay those of all members, as at inference)."""
        dims = (-2, -1)
        t = torch.roll(self.truth[idx], shift, dims)
        m = torch.roll(self.mean[idx], shift, dims)
        s = torch.roll(self.spread[idx], shift, dims)
        mem = self.members[idx]
        if n_members and n_members < self.N:
            sel = torch.randperm(self.N, generator=gen)[:n_members]
            mem = mem[:, sel]
        mem = torch.roll(mem, shift, dims)
        return t, m, s, mem


def edm_loss(model, t, m, s, feats, sigma, eps):
    x_sigma = t + sigma[:, None, None, None] * eps
    x0, (f, skip, c_out) = model.den(x_sigma, sigma, m, s, feats)
    target = ((t - m) - skip) / c_out
    return ((f - target) ** 2).mean(dim=(1, 2, 3)), x0


def rep(a, r):
    return a.repeat((r,) + (1,) * (a.dim() - 1)) if a is not None else None


def train_score(model: ScoreModel, lat: dict, iters: int, batch: int = 32, reps: int = 2,
                n_members: int = 16, lr: float = 2e-3, seed: int = 0, log=print, log_every: int = 100,
                max_seconds: float | None = None):
    """fit.fit on the EDM loss of `reps` sigma draws per latent triple, the conditioner seeing a random
    `n_members` of the members; returns the EMA copy and a training record."""
    data = LatentBatcher(lat)

    def loss_fn(gen):
        idx = torch.randint(0, data.K, (batch,), generator=gen)
        shift = tuple(int(v) for v in torch.randint(0, 16, (2,), generator=gen))
        t, m, s, mem = data.get(idx, shift, n_members, gen)
        feats = model.features(mem, m, s)
        t, m, s, feats = rep(t, reps), rep(m, reps), rep(s, reps), rep(feats, reps)
        sigma = torch.exp(torch.empty(batch * reps).uniform_(math.log(SIG_LO), math.log(SIG_HI), generator=gen))
        eps = torch.randn(t.shape, generator=gen)
        return edm_loss(model, t, m, s, feats, sigma, eps)[0].mean()

    ema, info = fit(model, loss_fn, iters, lr=lr, warmup=200, ema_decay=0.999, loss_weight=0.02, seed=seed,
                    tag="score", log=log, log_every=log_every, max_seconds=max_seconds)
    info.update({"batch_triples": batch, "sigma_draws_per_triple": reps,
                 "members_per_triple_in_training": n_members})
    return ema, info


@torch.no_grad()
def eval_bins(model, lat: dict, n: int = 512, seed: int = 123, chunk: int = 64):
    """Loss per sigma bin on held-out latent triples (all members): EDM loss, RMSE of z0_hat vs the
    encoded truth, and the diagonal-Gaussian baseline (F = 0: mean + c_skip r)."""
    gen = torch.Generator().manual_seed(seed)
    data = LatentBatcher(lat)
    idx = torch.randint(0, data.K, (n,), generator=gen)
    out = []
    feats_all = []
    for i in range(0, n, chunk):
        t, m, s, mem = data.get(idx[i:i + chunk])
        feats_all.append(model.features(mem, m, s))
    feats_all = torch.cat(feats_all) if feats_all[0] is not None else None
    t, m, s, _ = data.get(idx)
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sigma = torch.exp(torch.empty(n).uniform_(math.log(lo), math.log(hi), generator=gen))
        eps = torch.randn(t.shape, generator=gen)
        l, x0 = edm_loss(model, t, m, s, feats_all, sigma, eps)
        x_sigma = t + sigma[:, None, None, None] * eps
        c_skip = model.den.precond(sigma, s)[0]
        base = m + c_skip * (x_sigma - m)
        out.append({"sigma_lo": lo, "sigma_hi": hi, "edm_loss": l.mean().item(),
                    "rmse_z0": math.sqrt(((x0 - t) ** 2).mean().item()),
                    "rmse_z0_gaussian_baseline": math.sqrt(((base - t) ** 2).mean().item())})
    return out


@torch.no_grad()
def sample(model, m, s, feats, n_samples: int, steps: int = 24, gen=None):
    """Unguided EDM Heun sampler of p(z | background ensemble) for one triple (m, s: (1,C,H,W))."""
    M, S = m.expand(n_samples, -1, -1, -1), s.expand(n_samples, -1, -1, -1)
    Fe = feats.expand(n_samples, -1, -1, -1) if feats is not None else None
    D = lambda x, sg: model.den(x, torch.full((n_samples,), float(sg)), M, S, Fe)[0]
    return heun(D, M, steps, gen)


@torch.no_grad()
def calibration(model, ae, lat: dict, phys, run_names, n_per_run: int = 8, n_samples: int = 16, seed: int = 7,
                log=print):
    """Spread of unguided samples from p(z | background) vs the error of their mean, on held-out triples,
    in the latent (vs the encoded truth) and decoded to m^2/s (vs the true state), per validation run."""
    gen = torch.Generator().manual_seed(seed)
    data = LatentBatcher(lat)
    res, allrows = {}, []
    for rid, name in enumerate(run_names):
        cand = np.nonzero(lat["run_id"] == rid)[0]
        pick = cand[np.linspace(0, len(cand) - 1, n_per_run).astype(int)]
        rows = []
        for k in pick:
            t, m, s, mem = data.get(torch.tensor([int(k)]))
            feats = model.features(mem, m, s)
            zs = sample(model, m, s, feats, n_samples, gen=gen)
            pm = zs.mean(0)
            xs = ae.dec(zs).double()                                  # (n,2,64,64) m^2/s
            xt = torch.from_numpy(phys.truth[k]).double()
            xb = torch.from_numpy(phys.mean[k]).double()
            sb = torch.from_numpy(phys.spread[k]).double()
            xm = xs.mean(0)
            lay = lambda a: (a ** 2).mean(dim=(-2, -1))               # per layer mean square
            rows.append(np.concatenate([
                [((m[0] - t[0]) ** 2).mean().item(), (s[0] ** 2).mean().item(),
                 ((pm - t[0]) ** 2).mean().item(), zs.var(0, unbiased=True).mean().item()],
                lay(xb - xt).numpy(), lay(sb).numpy(), lay(xm - xt).numpy(), lay(xs.std(0, unbiased=True)).numpy()]))
        allrows += rows
        res[name] = _summary(np.array(rows), n_samples)
        log(f"[calib] {name}: {res[name]}")
    res["all"] = _summary(np.array(allrows), n_samples)
    res["all"].update({"triples": len(allrows), "samples_per_triple": n_samples,
                       "sampler": "Heun, 24 Karras steps 10 -> 0.01, unguided"})
    return res


def _summary(a, n):
    f = math.sqrt(1 + 1 / n)   # calibrated n-sample ensemble: E|mean - truth|^2 = (1 + 1/n) spread^2
    r = {"latent_rmse_background_mean": math.sqrt(a[:, 0].mean()),
         "latent_spread_background": math.sqrt(a[:, 1].mean()),
         "latent_rmse_sample_mean": math.sqrt(a[:, 2].mean()),
         "latent_spread_samples": math.sqrt(a[:, 3].mean())}
    r["latent_spread_over_rmse_samples"] = r["latent_spread_samples"] * f / r["latent_rmse_sample_mean"]
    r["latent_spread_over_rmse_background"] = r["latent_spread_background"] / r["latent_rmse_background_mean"]
    for j, L in enumerate(("psi1", "psi2")):
        r[f"{L}_rmse_background_mean"] = math.sqrt(a[:, 4 + j].mean())
        r[f"{L}_spread_background"] = math.sqrt(a[:, 6 + j].mean())
        r[f"{L}_rmse_sample_mean"] = math.sqrt(a[:, 8 + j].mean())
        r[f"{L}_spread_samples"] = math.sqrt(a[:, 10 + j].mean())
        r[f"{L}_spread_over_rmse_samples"] = r[f"{L}_spread_samples"] * f / r[f"{L}_rmse_sample_mean"]
    return {k: round(v, 5) for k, v in r.items()}
