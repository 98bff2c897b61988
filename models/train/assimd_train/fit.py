"""The training loop shared by every network of the package (l96 score models, the qg2l autoencoder
and the qg2l latent score model).

Per iteration it = 0 .. iters-1, with `loss_fn(gen)` the model's batch loss (it draws its batch from
the generator `gen`, seeded with `seed`):

  learning rate   lr_it = lr * min(1, (it + 1) / warmup) * (0.99 * (1 + cos(pi it / iters)) / 2 + 0.01)
                  (linear warm-up, then cosine decay to 1 % of lr; Loshchilov & Hutter 2017)
  step            Adam (Kingma & Ba 2015) on the loss, gradient norm clipped to `clip`
  weight EMA      theta_ema <- d theta_ema + (1 - d) theta,  d = min(ema_decay, (1 + it) / (10 + it))
                  (the returned model is this EMA copy, in eval mode, without gradients)
  loss EMA        l_ema <- (1 - w) l_ema + w loss (l_ema = loss at it = 0), logged and reported as
                  final_train_loss

`max_seconds` stops early after the first iteration past that wall time; the report's "iters" is the
number of iterations done, "iters_planned" the requested number.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch


def lr_at(it: int, iters: int, lr: float, warmup: int) -> float:
    """Learning rate of iteration `it` (module docstring)."""
    return lr * min(1.0, (it + 1) / warmup) * (0.5 * (1 + math.cos(math.pi * it / iters)) * 0.99 + 0.01)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, it: int, decay: float) -> None:
    d = min(decay, (1 + it) / (10 + it))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(d).add_(pm.detach(), alpha=1 - d)


def fit(model: torch.nn.Module, loss_fn: Callable[[torch.Generator], torch.Tensor], iters: int, *,
        lr: float = 2e-3, warmup: int = 200, ema_decay: float = 0.999, loss_weight: float = 0.02,
        clip: float = 1.0, seed: int = 0, tag: str = "train", loss_name: str = "loss",
        log: Callable[[str], None] = print, log_every: int = 250,
        max_seconds: float | None = None) -> tuple[torch.nn.Module, dict]:
    """Train `model` in place on `loss_fn` (a scalar batch loss) and return (EMA copy, report).

    The report holds iters, iters_planned, lr, ema_decay, final_train_loss, history (loss EMA and wall
    time every `log_every` iterations and at the last) and seconds; callers add their batch settings.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    keep = 1 - loss_weight
    t0, run, hist, it = time.time(), 0.0, [], 0
    for it in range(iters):
        for g in opt.param_groups:
            g["lr"] = lr_at(it, iters, lr, warmup)
        loss = loss_fn(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ema_update(ema, model, it, ema_decay)
        run = keep * run + loss_weight * loss.item() if it else loss.item()
        el = time.time() - t0
        if (it + 1) % log_every == 0 or it == iters - 1:
            hist.append({"iter": it + 1, "loss_ema": run, "seconds": el})
            log(f"[{tag}] it {it + 1:6d}/{iters} {loss_name} {run:.5f}  {el:6.0f}s ({el / (it + 1):.3f} s/it)")
        if max_seconds and el > max_seconds:
            log(f"[{tag}] stopping at {it + 1} iterations: time budget {max_seconds:.0f}s reached")
            break
    done = it + 1 if iters else 0
    return ema, {"iters": done, "iters_planned": iters, "lr": lr, "ema_decay": ema_decay,
                 "final_train_loss": run, "history": hist, "seconds": time.time() - t0}
