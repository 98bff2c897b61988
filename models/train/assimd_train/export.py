"""ONNX export (DESIGN §5, TOOLCHAIN "PyTorch and ONNX export") and parity checks.

Graphs (opset 18, external_data=False, float32):
  conditioner.onnx   members (1,N,P), mean (1,P), spread (1,P) -> features (1,C,P)       [N dynamic]
  denoiser.onnx      x_sigma (B,P), sigma (B,), mean (1,P), spread (1,P)[, features (1,C,P)]
                     -> x0_hat (B,P)                                                     [B dynamic]
  denoiser_vjp.onnx  same inputs + v (B,P) -> x0_hat (B,P), vjp (B,P) = J^T v,  J = d x0_hat / d x_sigma
The conditioning (mean, spread, features) is shared by the whole batch (batch dim 1): all members of a
cycle share it (DESIGN §6). The VJP graph is traced with make_fx (symbolic) around torch.func.vjp with a
decomposition of aten.convolution_backward into a plain convolution.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten


def _conv_backward(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed,
                   output_padding, groups, output_mask):
    """convolution_backward for stride-1, dilation-1, groups-1, 1-D convs, input gradient only via a
    plain conv: grad_in = conv(grad_out, W transposed in channels and flipped, padding k-1-p)."""
    assert not transposed and groups == 1 and all(s == 1 for s in stride) and all(d == 1 for d in dilation)
    gi = gw = gb = None
    if output_mask[0]:
        k = weight.shape[-1]
        w = weight.transpose(0, 1).flip(-1)
        gi = F.conv1d(grad_out, w, None, 1, k - 1 - padding[0])
    if output_mask[1]:
        raise NotImplementedError("weight gradient not needed for the VJP graph")
    if output_mask[2]:
        gb = grad_out.sum(dim=(0, 2))
    return gi, gw, gb


DECOMP = {aten.convolution_backward.default: _conv_backward}


class DenoiserGraph(nn.Module):
    def __init__(self, den):
        super().__init__()
        self.den = den
        self.has_feat = den.feat_ch > 0
        self.gauss = den.gauss

    def forward(self, x_sigma, sigma, mean, spread, c1=None, c2=None, c3=None):
        B = x_sigma.shape[0]
        m = mean.expand(B, -1)
        s = spread.expand(B, -1)
        rest = [c for c in (c1, c2, c3) if c is not None]
        f = rest.pop(0).expand(B, -1, -1) if self.has_feat else None
        u = rest.pop(0).expand(B, -1, -1) if self.gauss else None
        lam = rest.pop(0).expand(B, -1) if self.gauss else None
        return self.den(x_sigma, sigma, m, s, f, u, lam)[0]


class ConditionerGraph(nn.Module):
    def __init__(self, cond):
        super().__init__()
        self.cond = cond

    def forward(self, members, mean, spread):
        return self.cond(members, mean, spread)


def _vjp_fn(graph: DenoiserGraph):
    n_cond = int(graph.has_feat) + 2 * int(graph.gauss)
    if n_cond == 0:
        def f(x_sigma, sigma, mean, spread, v):
            out, pull = torch.func.vjp(lambda x: graph(x, sigma, mean, spread), x_sigma)
            return out, pull(v)[0]
    elif n_cond == 1:
        def f(x_sigma, sigma, mean, spread, c1, v):
            out, pull = torch.func.vjp(lambda x: graph(x, sigma, mean, spread, c1), x_sigma)
            return out, pull(v)[0]
    elif n_cond == 2:
        def f(x_sigma, sigma, mean, spread, c1, c2, v):
            out, pull = torch.func.vjp(lambda x: graph(x, sigma, mean, spread, c1, c2), x_sigma)
            return out, pull(v)[0]
    else:
        def f(x_sigma, sigma, mean, spread, c1, c2, c3, v):
            out, pull = torch.func.vjp(lambda x: graph(x, sigma, mean, spread, c1, c2, c3), x_sigma)
            return out, pull(v)[0]
    return f


def _ort(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _save_npy(d, name, arr):
    np.save(os.path.join(d, name + ".npy"), np.ascontiguousarray(arr, dtype=np.float32))


def export_bundle(model, out_dir: str, P: int, example: dict, seed: int = 0) -> dict:
    """Export the graphs of `model` (ScoreModel, eval mode) into out_dir, check them with ORT against
    torch and the VJP against finite differences, save fixtures. `example` holds one held-out triple:
    members (N,P), mean (P,), spread (P,), truth (P,). Returns the checks and graph signatures."""
    torch.manual_seed(seed)
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    os.makedirs(out_dir, exist_ok=True)
    fx_dir = os.path.join(out_dir, "fixtures")
    os.makedirs(fx_dir, exist_ok=True)
    has_feat = model.cond is not None
    C = model.den.feat_ch
    report: dict = {"graphs": {}, "checks": {}}

    members = torch.tensor(example["members"])[None]           # (1,N,P)
    mean = torch.tensor(example["mean"])[None]                 # (1,P)
    spread = torch.tensor(example["spread"])[None]             # (1,P)
    Bx = 5
    sigma = torch.tensor([0.02, 0.1, 0.3, 1.0, 4.0], dtype=torch.float32)
    x_sigma = mean + sigma[:, None] * torch.randn(Bx, P) + spread * torch.randn(Bx, P)
    v = torch.randn(Bx, P)

    B = torch.export.Dim("batch", min=1, max=4096)
    # --- conditioner
    if has_feat:
        cg = ConditionerGraph(model.cond).eval()
        N = torch.export.Dim("members", min=2, max=1024)
        path = os.path.join(out_dir, "conditioner.onnx")
        torch.onnx.export(cg, (members, mean, spread), path, dynamo=True, opset_version=18,
                          external_data=False, input_names=["members", "mean", "spread"],
                          output_names=["features"],
                          dynamic_shapes=({1: N}, None, None))
        with torch.no_grad():
            feats = cg(members, mean, spread)
        sess = _ort(path)
        err = 0.0
        for n in (members.shape[1], 7):   # the recorded N and another N (dynamic)
            mm = members[:, :n]
            mu_n, sp_n = mm.mean(1), mm.std(1)
            ref = cg(mm, mu_n, sp_n).numpy()
            got = sess.run(None, {"members": mm.numpy(), "mean": mu_n.numpy(), "spread": sp_n.numpy()})[0]
            err = max(err, float(np.abs(ref - got).max()))
        # permutation invariance
        perm = members[:, torch.randperm(members.shape[1])]
        got_p = sess.run(None, {"members": perm.numpy(), "mean": mean.numpy(), "spread": spread.numpy()})[0]
        report["checks"]["conditioner_ort_max_abs_err"] = err
        report["checks"]["conditioner_permutation_max_abs_err"] = float(np.abs(got_p - feats.numpy()).max())
        report["graphs"]["conditioner"] = {
            "file": "conditioner.onnx",
            "inputs": {"members": ["1", "N", str(P)], "mean": ["1", str(P)], "spread": ["1", str(P)]},
            "outputs": {"features": ["1", str(C), str(P)]}}
        _save_npy(fx_dir, "conditioner_in_members", members.numpy())
        _save_npy(fx_dir, "conditioner_out_features", feats.numpy())
    else:
        feats = None

    # --- denoiser
    dg = DenoiserGraph(model.den).eval()
    gauss = model.den.gauss
    names = ["x_sigma", "sigma", "mean", "spread"] + (["features"] if has_feat else []) + (["basis", "eigvals"] if gauss else [])
    spec = ()
    if gauss:
        u, lam = model.spectrum(members)
        spec = (u, lam)
    args = (x_sigma, sigma, mean, spread) + ((feats,) if has_feat else ()) + spec
    dyn = ({0: B}, {0: B}, None, None) + ((None,) if has_feat else ()) + ((None, None) if gauss else ())
    dyn_named = dict(zip(["x_sigma", "sigma", "mean", "spread", "c1", "c2", "c3"], dyn))
    path = os.path.join(out_dir, "denoiser.onnx")
    torch.onnx.export(dg, args, path, dynamo=True, opset_version=18, external_data=False,
                      input_names=names, output_names=["x0_hat"], dynamic_shapes=dyn_named)
    with torch.no_grad():
        ref = dg(*args).numpy()
    sess = _ort(path)
    feed = {n: a.numpy() for n, a in zip(names, args)}
    got = sess.run(None, feed)[0]
    err = float(np.abs(ref - got).max())
    # another batch size (dynamic batch)
    a1 = (x_sigma[:2], sigma[:2]) + args[2:]
    got1 = sess.run(None, {n: a.numpy() for n, a in zip(names, a1)})[0]
    err = max(err, float(np.abs(got1 - ref[:2]).max()))
    report["checks"]["denoiser_ort_max_abs_err"] = err
    sig_in = {"x_sigma": ["B", str(P)], "sigma": ["B"], "mean": ["1", str(P)], "spread": ["1", str(P)]}
    if has_feat:
        sig_in["features"] = ["1", str(C), str(P)]
    if gauss:
        sig_in["basis"] = ["1", str(P), str(P)]
        sig_in["eigvals"] = ["1", str(P)]
    report["graphs"]["denoiser"] = {"file": "denoiser.onnx", "inputs": sig_in,
                                    "outputs": {"x0_hat": ["B", str(P)]}}

    # --- VJP
    fn = _vjp_fn(dg)
    vargs = args + (v,)
    gm = make_fx(fn, decomposition_table=DECOMP, tracing_mode="symbolic",
                 _allow_non_fake_inputs=True)(*vargs)
    path = os.path.join(out_dir, "denoiser_vjp.onnx")
    torch.onnx.export(gm, vargs, path, dynamo=True, opset_version=18, external_data=False,
                      input_names=names + ["v"], output_names=["x0_hat", "vjp"],
                      dynamic_shapes=dyn + ({0: B},))
    # reference VJP by torch autograd (no decomposition)
    xs = x_sigma.clone().requires_grad_(True)
    out = dg(xs, *args[1:])
    (g_ref,) = torch.autograd.grad(out, xs, v)
    sess_v = _ort(path)
    feed_v = {**feed, "v": v.numpy()}
    o_ort, g_ort = sess_v.run(None, feed_v)
    report["checks"]["vjp_graph_x0_max_abs_err"] = float(np.abs(o_ort - ref).max())
    report["checks"]["vjp_graph_vs_autograd_max_abs_err"] = float(np.abs(g_ort - g_ref.numpy()).max())
    # dynamic batch for the VJP graph
    feed_v1 = {n: a.numpy() for n, a in zip(names, a1)}
    feed_v1["v"] = v[:2].numpy()
    _, g1 = sess_v.run(None, feed_v1)
    report["checks"]["vjp_graph_batch2_max_abs_err"] = float(np.abs(g1 - g_ref.numpy()[:2]).max())
    # finite differences of the forward ONNX graph in float64 torch: <v, D(x + h u) - D(x - h u)>/2h
    dg64 = DenoiserGraph(model.den).double().eval()
    a64 = tuple(a.double() for a in args)
    fd_rel = []
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            u = torch.randn(Bx, P, generator=gen, dtype=torch.float64)
            h = 1e-4
            dp = dg64(a64[0] + h * u, *a64[1:])
            dm = dg64(a64[0] - h * u, *a64[1:])
            fd = ((dp - dm) / (2 * h) * v.double()).sum(-1)          # (B,)  v^T J u per sample
            an = (torch.tensor(g_ort).double() * u).sum(-1)           # (J^T v)^T u
            fd_rel.append(float((fd - an).abs().max() / fd.abs().max()))
    # and FD of the exported float32 forward graph itself (coarser step, float32 noise)
    u = torch.randn(Bx, P, generator=gen)
    h = 1e-2
    fp = sess.run(None, {**feed, "x_sigma": (x_sigma + h * u).numpy()})[0]
    fm = sess.run(None, {**feed, "x_sigma": (x_sigma - h * u).numpy()})[0]
    fd32 = ((fp - fm) / (2 * h) * v.numpy()).sum(-1)
    an32 = (g_ort * u.numpy()).sum(-1)
    report["checks"]["vjp_vs_fd_float64_max_rel_err"] = max(fd_rel)
    report["checks"]["vjp_vs_fd_onnx_forward_float32_max_rel_err"] = float(
        np.abs(fd32 - an32).max() / np.abs(fd32).max())
    report["graphs"]["denoiser_vjp"] = {"file": "denoiser_vjp.onnx", "inputs": {**sig_in, "v": ["B", str(P)]},
                                        "outputs": {"x0_hat": ["B", str(P)], "vjp": ["B", str(P)]}}

    # --- fixtures (npy, float32, little-endian, C order)
    for n, a in zip(names, args):
        _save_npy(fx_dir, "denoiser_in_" + n, a.numpy())
    _save_npy(fx_dir, "denoiser_in_v", v.numpy())
    _save_npy(fx_dir, "denoiser_out_x0_hat", ref)
    _save_npy(fx_dir, "denoiser_vjp_out_vjp", g_ref.numpy())
    if has_feat:
        _save_npy(fx_dir, "conditioner_in_mean", mean.numpy())
        _save_npy(fx_dir, "conditioner_in_spread", spread.numpy())
    index = {
        "format": "npy float32 little-endian C order; names <graph>_in_<input> / <graph>_out_<output>",
        "tolerance_max_abs": 1e-4,
        "conditioner": ({"inputs": {"members": "conditioner_in_members.npy", "mean": "conditioner_in_mean.npy",
                                    "spread": "conditioner_in_spread.npy"},
                         "outputs": {"features": "conditioner_out_features.npy"}} if has_feat else None),
        "denoiser": {"inputs": {n: f"denoiser_in_{n}.npy" for n in names},
                     "outputs": {"x0_hat": "denoiser_out_x0_hat.npy"}},
        "denoiser_vjp": {"inputs": {**{n: f"denoiser_in_{n}.npy" for n in names}, "v": "denoiser_in_v.npy"},
                         "outputs": {"x0_hat": "denoiser_out_x0_hat.npy", "vjp": "denoiser_vjp_out_vjp.npy"}},
        "fd_check": "for the VJP graph: sum(vjp * u) == sum(v * (D(x+h u) - D(x-h u)) / 2h) per batch row",
    }
    if not has_feat:
        index.pop("conditioner")
    json.dump(index, open(os.path.join(fx_dir, "index.json"), "w"), indent=1)
    return report
