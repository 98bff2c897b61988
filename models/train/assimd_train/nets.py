"""Networks: a DeepSets set encoder over the background members (the conditioner) and an EDM-
preconditioned circular 1-D conv ResNet denoiser in pixel space (l96).

Everything is written with export in mind: circular padding is an explicit concat of slices (its
backward is slicing/padding, which the ONNX exporter handles), convolutions are stride 1 so that the
VJP graph can replace `convolution_backward` by a plain convolution (see export.py), and all EDM
coefficients are elementwise so that the per-point preconditioning lives inside the graph.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Climatological normalisation of the l96 state (F = 8): x ~ 2.35 +- 3.64.
L96_X_MEAN = 2.35
L96_X_STD = 3.64
# Floor of the per-point EDM data scale: s_d = sqrt(spread^2 + S0^2).
S0 = 0.05
SPREAD_EPS = 1e-4


class CircConv1d(nn.Module):
    """Stride-1 conv on a ring: circular padding by concat, then an unpadded conv."""

    def __init__(self, cin: int, cout: int, k: int = 5):
        super().__init__()
        assert k % 2 == 1
        self.p = k // 2
        self.conv = nn.Conv1d(cin, cout, k, padding=0)

    def forward(self, x):
        p = self.p
        x = torch.cat([x[..., -p:], x, x[..., :p]], dim=-1)
        return self.conv(x)


# The localised ensemble Gaussian of the background (filter/src/score/ensemble.rs, DESIGN §6):
# P = rho (L o C) + floor^2 I, L = Gaspari-Cohn of the ring distance / half-width. Same numbers as the
# manifest's [conditioning.ensemble_gaussian]; the Rust side computes U, lambda the same way.
EG_HALF_WIDTH_KM = 4500.0
EG_INFLATION = 1.1
EG_FLOOR = 0.01 * L96_X_STD
RING_SPACING_KM = 2 * math.pi * 6371.0088 * math.cos(math.radians(45.0)) / 40


def gaspari_cohn(r):
    r = r.abs()
    a = (((-0.25 * r + 0.5) * r + 0.625) * r - 5.0 / 3.0) * r * r + 1.0
    rs = torch.where(r < 1e-9, torch.ones_like(r), r)
    b = ((((r / 12.0 - 0.5) * r + 0.625) * r + 5.0 / 3.0) * r - 5.0) * r + 4.0 - 2.0 / (3.0 * rs)
    return torch.where(r < 1.0, a, torch.where(r < 2.0, b, torch.zeros_like(r)))


def ring_localisation(P: int, half_width_km: float = EG_HALF_WIDTH_KM):
    i = torch.arange(P, dtype=torch.float64)
    d = (i[:, None] - i[None, :]).abs()
    d = torch.minimum(d, P - d) * RING_SPACING_KM
    return gaspari_cohn(d / half_width_km)


def ensemble_spectrum(members, loc, rho: float = EG_INFLATION, floor: float = EG_FLOOR):
    """members (B,N,P) -> U (B,P,P) (columns = eigenvectors), lam (B,P) of rho (L o C) + floor^2 I."""
    m = members.double()
    a = m - m.mean(dim=1, keepdim=True)
    c = torch.einsum("bnp,bnq->bpq", a, a) / (m.shape[1] - 1)
    pm = rho * c * loc + floor * floor * torch.eye(m.shape[-1], dtype=torch.float64)
    lam, u = torch.linalg.eigh(pm)
    return u.float(), lam.clamp_min(0).float()


def gaussian_denoise(r, sigma, u, lam):
    """U diag(lam/(lam+sigma^2)) U^T r and the posterior sd sqrt(diag(U diag(lam sigma^2/(lam+sigma^2)) U^T))."""
    s2 = (sigma * sigma).unsqueeze(-1)                        # (B,1)
    coef = torch.einsum("bpk,bp->bk", u, r) * (lam / (lam + s2))
    g = torch.einsum("bpk,bk->bp", u, coef)
    post_var = torch.einsum("bpk,bk->bp", u * u, lam * s2 / (lam + s2))
    return g, torch.sqrt(post_var + 1e-12)


def data_scale(spread):
    return torch.sqrt(spread * spread + S0 * S0)


class SetEncoder(nn.Module):
    """DeepSets over members: phi = two shared circular convs on each member's anomaly divided by the
    per-point data scale, pooled by the mean and the mean square over members, then rho = a conv.
    Permutation invariant and defined for any N >= 2."""

    def __init__(self, hidden: int = 32, out: int = 16, k: int = 5):
        super().__init__()
        self.hidden, self.out = hidden, out
        self.phi1 = CircConv1d(1, hidden, k)
        self.phi2 = CircConv1d(hidden, hidden, k)
        self.rho1 = CircConv1d(2 * hidden, 2 * hidden, 3)
        self.rho2 = CircConv1d(2 * hidden, out, 3)

    def forward(self, members, mean, spread):
        # members (B, N, P), mean (B, P), spread (B, P) -> (B, C, P)
        B, N, P = members.shape
        a = (members - mean.unsqueeze(1)) / data_scale(spread).unsqueeze(1)
        h = a.reshape(B * N, 1, P)
        h = F.silu(self.phi1(h))
        h = F.silu(self.phi2(h))
        h = h.reshape(B, N, self.hidden, P)
        pooled = torch.cat([h.mean(dim=1), (h * h).mean(dim=1)], dim=1)
        return self.rho2(F.silu(self.rho1(pooled)))


class Block(nn.Module):
    def __init__(self, width: int, k: int, emb: int):
        super().__init__()
        self.c1 = CircConv1d(width, width, k)
        self.c2 = CircConv1d(width, width, k)
        self.film = nn.Linear(emb, 2 * width)

    def forward(self, h, e):
        s, b = self.film(e).unsqueeze(-1).chunk(2, dim=1)
        y = self.c1(F.silu(h))
        y = y * (1 + s) + b
        y = self.c2(F.silu(y))
        return h + y


class Denoiser(nn.Module):
    """D(x_sigma; sigma, mean, spread, features) -> x0_hat, pixel space, EDM preconditioned per point.

    r = x_sigma - mean,  s_d = sqrt(spread^2 + S0^2)  (per point, the prior's error scale)
    c_skip = s_d^2/(sigma^2+s_d^2), c_out = sigma s_d/sqrt(sigma^2+s_d^2), c_in = 1/sqrt(sigma^2+s_d^2),
    c_noise = log(sigma)/4;  x0_hat = mean + c_skip r + c_out F(c_in r, cond, c_noise).
    With F = 0 this is the exact denoiser of the diagonal Gaussian prior N(mean, diag(s_d^2)).
    """

    def __init__(self, feat_ch: int = 16, width: int = 48, blocks: int = 4, k: int = 5, emb: int = 64,
                 gauss: bool = False):
        super().__init__()
        self.feat_ch = feat_ch
        self.gauss = gauss
        cin = 4 + feat_ch + (2 if gauss else 0)
        self.inp = CircConv1d(cin, width, k)
        self.emb = nn.Sequential(nn.Linear(8, emb), nn.SiLU(), nn.Linear(emb, emb), nn.SiLU())
        self.blocks = nn.ModuleList([Block(width, k, emb) for _ in range(blocks)])
        self.out = CircConv1d(width, 1, k)
        nn.init.zeros_(self.out.conv.weight)
        nn.init.zeros_(self.out.conv.bias)
        self.register_buffer("freqs", torch.tensor([1.0, 2.0, 4.0, 8.0]) * math.pi / 4)

    def precond(self, sigma, spread):
        sd = data_scale(spread)                       # (B, P)
        sig = sigma.unsqueeze(-1)                     # (B, 1)
        den = torch.sqrt(sig * sig + sd * sd)
        return sd * sd / (den * den), sig * sd / den, 1.0 / den, sd

    def forward(self, x_sigma, sigma, mean, spread, features=None, basis=None, eigvals=None):
        # x_sigma (B,P), sigma (B,), mean/spread (B,P), features (B,C,P) or None, basis (B,P,P), eigvals (B,P)
        c_skip, c_out, c_in, sd = self.precond(sigma, spread)
        r = x_sigma - mean
        lsig = torch.log(sigma).unsqueeze(-1)        # (B,1)
        chans = [
            (c_in * r).unsqueeze(1),
            ((mean - L96_X_MEAN) / L96_X_STD).unsqueeze(1),
            torch.log(sd).unsqueeze(1),
            ((lsig - torch.log(sd)) / 4).unsqueeze(1),
        ]
        if self.gauss:
            g, post_sd = gaussian_denoise(r, sigma, basis, eigvals)
            chans += [(g / sd).unsqueeze(1), torch.log(post_sd / sd).unsqueeze(1)]
        if self.feat_ch:
            chans.append(features)
        h = self.inp(torch.cat(chans, dim=1))
        cn = lsig / 4                                   # c_noise, (B,1)
        e = self.emb(torch.cat([torch.sin(cn * self.freqs), torch.cos(cn * self.freqs)], dim=-1))
        for blk in self.blocks:
            h = blk(h, e)
        f = self.out(F.silu(h)).squeeze(1)
        if self.gauss:
            # skip = the exact denoiser of the localised ensemble Gaussian; the network corrects it on
            # the scale of that Gaussian's own posterior sd
            return mean + g + post_sd * f, (f, g, post_sd)
        return mean + c_skip * r + c_out * f, (f, c_skip * r, c_out)


class ScoreModel(nn.Module):
    """Conditioner (optional) + denoiser, trained jointly."""

    def __init__(self, set_encoder: bool = True, feat_ch: int = 16, gauss: bool = False, **kw):
        super().__init__()
        self.cond = SetEncoder(out=feat_ch) if set_encoder else None
        self.den = Denoiser(feat_ch=feat_ch if set_encoder else 0, gauss=gauss, **kw)
        self.gauss = gauss
        if gauss:
            self.register_buffer("loc", ring_localisation(40))

    def spectrum(self, members):
        if not self.gauss:
            return None, None
        with torch.no_grad():
            return ensemble_spectrum(members, self.loc)

    def features(self, members, mean, spread):
        return self.cond(members, mean, spread) if self.cond is not None else None


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
