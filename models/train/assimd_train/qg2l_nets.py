"""qg2l networks: a periodic convolutional autoencoder (2x64x64 -> C x16x16) and the latent EDM score model
(a DeepSets conditioner over the encoded members and a periodic 2-D conv ResNet denoiser).

Export constraints (TOOLCHAIN "PyTorch and ONNX export"): periodic padding is an explicit concatenation
of slices, every convolution is stride 1 with no implicit padding (so that the VJP graph can replace
`convolution_backward` by a plain convolution, see export.py), down-sampling is pixel-unshuffle
(space-to-depth, a reshape/permute) or average pooling written as reshape + mean, up-sampling is
pixel-shuffle (reshape/permute). All of these differentiate into reshapes, slices and sums.

Units: the encoder takes and the decoder returns physical streamfunction (m^2/s); the per-layer
climatological std and the latent's per-channel scale live inside the graphs, so z is O(1) per channel.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Climatology of the qg2l state (models/src/testbed.rs, Testbed::climatology): mean 0 per layer.
PSI_STD = (1532.2, 322.1)          # m^2/s, upper (psi1) and lower (psi2) layer
# Observed quantities (models/src/testbed.rs qg_units, Qg2lParams::default()):
#   pressure (hPa) = rho0 f0 psi2 / 100;  temperature (K) = Gamma f0 (psi1 - psi2) / g',  g' = f0^2/(F1 H1)
F0, RHO0, GAMMA, RD, DELTA, H1 = 1.0e-4, 1025.0, 0.01, 15_000.0, 0.25, 500.0
CP_HPA = RHO0 * F0 / 100.0                                    # hPa per m^2/s of psi2
CT_K = GAMMA * F0 / (F0 * F0 / ((1.0 / (RD * RD * (1.0 + DELTA))) * H1))   # K per m^2/s of psi1 - psi2
OBS_SIGMA = {"pressure_hPa": 0.05, "temperature_K": 0.04, "brightness_temperature_K": 0.05}
# Floor of the per-point EDM data scale in latent units: s_d = sqrt(spread^2 + S0^2).
S0 = 0.02


def circ_pad(x, p: int):
    """Periodic padding of the last two dims by concatenation (exportable, differentiable)."""
    if p == 0:
        return x
    x = torch.cat([x[..., -p:, :], x, x[..., :p, :]], dim=-2)
    return torch.cat([x[..., -p:], x, x[..., :p]], dim=-1)


class CConv(nn.Module):
    """Stride-1 2-D conv on the torus: periodic padding by concat, then an unpadded conv."""

    def __init__(self, cin: int, cout: int, k: int = 3):
        super().__init__()
        assert k % 2 == 1
        self.p = k // 2
        self.conv = nn.Conv2d(cin, cout, k, padding=0)

    def forward(self, x):
        return self.conv(circ_pad(x, self.p))


def unshuffle(x, r: int):
    """(B, C, H, W) -> (B, C r^2, H/r, W/r) (space-to-depth) with reshape/permute only."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // r, r, W // r, r).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(B, C * r * r, H // r, W // r)


def shuffle(x, r: int):
    """(B, C r^2, H, W) -> (B, C, H r, W r) (depth-to-space), the inverse of unshuffle."""
    B, Cr, H, W = x.shape
    C = Cr // (r * r)
    x = x.reshape(B, C, r, r, H, W).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(B, C, H * r, W * r)


class Res(nn.Module):
    def __init__(self, w: int, k: int = 3):
        super().__init__()
        self.c1 = CConv(w, w, k)
        self.c2 = CConv(w, w, k)

    def forward(self, h):
        return h + self.c2(F.silu(self.c1(F.silu(h))))


class Encoder(nn.Module):
    """x (B,2,64,64) m^2/s -> z (B,C,16,16), O(1) per channel.

    x / std per layer -> space-to-depth by 4 (lossless: 32 channels @16x16, one 4x4x2 patch per latent
    cell) -> periodic conv to width w -> residual blocks -> periodic conv to C -> / z_scale.
    Everything runs at 16x16, where convolutions are cheap on a CPU.
    """

    def __init__(self, C: int = 12, w: int = 64, blocks: int = 2):
        super().__init__()
        self.register_buffer("std", torch.tensor(PSI_STD).view(1, 2, 1, 1))
        self.register_buffer("z_scale", torch.ones(1, C, 1, 1))
        self.inp = CConv(32, w)
        self.rs = nn.Sequential(*[Res(w) for _ in range(blocks)])
        self.out = CConv(w, C)

    def forward(self, x):
        h = self.inp(unshuffle(x / self.std, 4))
        h = self.out(F.silu(self.rs(h)))
        return h / self.z_scale


class Decoder(nn.Module):
    """z (B,C,16,16) -> x (B,2,64,64) m^2/s: periodic conv to width w -> residual blocks -> periodic
    conv to 32 channels -> depth-to-space by 4 -> * std per layer. It sits inside the VJP graph the
    sampler calls at every step, so it stays at 16x16."""

    def __init__(self, C: int = 12, w: int = 64, blocks: int = 2):
        super().__init__()
        self.register_buffer("std", torch.tensor(PSI_STD).view(1, 2, 1, 1))
        self.register_buffer("z_scale", torch.ones(1, C, 1, 1))
        self.inp = CConv(C, w)
        self.rs = nn.Sequential(*[Res(w) for _ in range(blocks)])
        self.out = CConv(w, 32)

    def forward(self, z):
        h = self.rs(self.inp(z * self.z_scale))
        return shuffle(self.out(F.silu(h)), 4) * self.std


class AutoEncoder(nn.Module):
    def __init__(self, C: int = 12, enc_w: int = 64, enc_blocks: int = 2, dec_w: int = 48, dec_blocks: int = 1):
        super().__init__()
        self.C = C
        self.cfg = {"C": C, "enc_w": enc_w, "enc_blocks": enc_blocks, "dec_w": dec_w, "dec_blocks": dec_blocks}
        self.enc = Encoder(C, enc_w, enc_blocks)
        self.dec = Decoder(C, dec_w, dec_blocks)

    def forward(self, x):
        return self.dec(self.enc(x))

    @torch.no_grad()
    def set_latent_scale(self, s):
        """Fold a per-channel latent scale in (z_new = z_old / s) without changing decoder(encoder(x))."""
        s = torch.as_tensor(s, dtype=torch.float32).view(1, -1, 1, 1)
        self.enc.z_scale.mul_(s)
        self.dec.z_scale.mul_(s)


# ------------------------------------------------------------------------------------------------
# Latent score model
# ------------------------------------------------------------------------------------------------

def data_scale(spread):
    return torch.sqrt(spread * spread + S0 * S0)


class SetEncoder(nn.Module):
    """DeepSets over the encoded members: phi = two shared periodic convs on each member's latent
    anomaly divided by the per-point data scale s_d, pooled by the mean and the mean square over members
    (permutation invariant, any N >= 2), then rho = two periodic convs to F channels.
    Input: members (B,N,C,H,W), mean (B,C,H,W), spread (B,C,H,W) -> features (B,F,H,W)."""

    def __init__(self, C: int, hidden: int = 16, out: int = 16):
        super().__init__()
        self.hidden, self.out = hidden, out
        self.phi1 = CConv(C, hidden)
        self.phi2 = CConv(hidden, hidden)
        self.rho1 = CConv(2 * hidden, 2 * hidden)
        self.rho2 = CConv(2 * hidden, out)

    def forward(self, members, mean, spread):
        B, N, C, H, W = members.shape
        a = (members - mean.unsqueeze(1)) / data_scale(spread).unsqueeze(1)
        h = a.reshape(B * N, C, H, W)
        h = F.silu(self.phi1(h))
        h = F.silu(self.phi2(h))
        h = h.reshape(B, N, self.hidden, H, W)
        pooled = torch.cat([h.mean(dim=1), (h * h).mean(dim=1)], dim=1)
        return self.rho2(F.silu(self.rho1(pooled)))


class Block(nn.Module):
    def __init__(self, width: int, emb: int):
        super().__init__()
        self.c1 = CConv(width, width)
        self.c2 = CConv(width, width)
        self.film = nn.Linear(emb, 2 * width)

    def forward(self, h, e):
        s, b = self.film(e)[:, :, None, None].chunk(2, dim=1)
        y = self.c1(F.silu(h))
        y = y * (1 + s) + b
        y = self.c2(F.silu(y))
        return h + y


class Denoiser(nn.Module):
    """D(z_sigma; sigma, mean, spread, features) -> z0_hat in the latent, EDM-preconditioned per point.

    r = z_sigma - mean,  s_d = sqrt(spread^2 + S0^2)  (per latent point: the prior's error scale)
    c_skip = s_d^2/(sigma^2+s_d^2), c_out = sigma s_d/sqrt(sigma^2+s_d^2), c_in = 1/sqrt(sigma^2+s_d^2),
    c_noise = log(sigma)/4;  z0_hat = mean + c_skip r + c_out F(c_in r, cond, c_noise).
    With F = 0 this is the exact denoiser of the diagonal Gaussian N(mean, diag(s_d^2)).
    """

    def __init__(self, C: int, feat_ch: int = 16, width: int = 32, blocks: int = 3, emb: int = 64):
        super().__init__()
        self.C, self.feat_ch = C, feat_ch
        cin = 3 * C + 1 + feat_ch     # c_in r, mean, log s_d, log(sigma)/4 map, features
        self.inp = CConv(cin, width)
        self.emb = nn.Sequential(nn.Linear(8, emb), nn.SiLU(), nn.Linear(emb, emb), nn.SiLU())
        self.blocks = nn.ModuleList([Block(width, emb) for _ in range(blocks)])
        self.out = CConv(width, C)
        nn.init.zeros_(self.out.conv.weight)
        nn.init.zeros_(self.out.conv.bias)
        self.register_buffer("freqs", torch.tensor([1.0, 2.0, 4.0, 8.0]) * math.pi / 4)

    def precond(self, sigma, spread):
        sd = data_scale(spread)                        # (B,C,H,W)
        sig = sigma[:, None, None, None]
        den = torch.sqrt(sig * sig + sd * sd)
        return sd * sd / (den * den), sig * sd / den, 1.0 / den, sd

    def forward(self, z_sigma, sigma, mean, spread, features=None):
        c_skip, c_out, c_in, sd = self.precond(sigma, spread)
        r = z_sigma - mean
        lsig = torch.log(sigma)                         # (B,)
        B, C, H, W = z_sigma.shape
        chans = [c_in * r, mean, torch.log(sd), (lsig[:, None, None, None] / 4).expand(B, 1, H, W)]
        if self.feat_ch:
            chans.append(features)
        h = self.inp(torch.cat(chans, dim=1))
        cn = lsig[:, None] / 4
        e = self.emb(torch.cat([torch.sin(cn * self.freqs), torch.cos(cn * self.freqs)], dim=-1))
        for blk in self.blocks:
            h = blk(h, e)
        f = self.out(F.silu(h))
        return mean + c_skip * r + c_out * f, (f, c_skip * r, c_out)


class ScoreModel(nn.Module):
    def __init__(self, C: int, set_encoder: bool = True, feat_ch: int = 16, **kw):
        super().__init__()
        self.cond = SetEncoder(C, out=feat_ch) if set_encoder else None
        self.den = Denoiser(C, feat_ch=feat_ch if set_encoder else 0, **kw)

    def features(self, members, mean, spread):
        return self.cond(members, mean, spread) if self.cond is not None else None


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
