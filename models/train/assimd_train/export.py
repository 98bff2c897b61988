"""ONNX export of a score-model bundle (DESIGN §5, TOOLCHAIN "PyTorch and ONNX export"), its parity
checks and fixtures, for every testbed: pixel space (l96, identity codec) and latent space (qg2l, an
encoder/decoder pair).

Graphs (float32, opset 18, external_data=False; B dynamic batch, N dynamic ensemble size; `z` the
sampling space, the grid itself without a codec; conditioning has batch 1 and is broadcast over B):
  encoder.onnx       x (B, grid...) -> z (B, latent...)                      [codec only]
  decoder.onnx       z (B, latent...) -> x (B, grid...)                      [codec only]
  conditioner.onnx   members (1, N, latent...), mean, spread (1, latent...) -> features (1, F, ...)
                                                                             [set encoder only]
  denoiser.onnx      x_sigma (B, latent...), sigma (B,), conditioning inputs -> x0_hat / z0_hat
  denoiser_vjp.onnx  the same + v (B, grid...) -> x0_hat = decode(D) (B, grid...),
                     vjp = J^T v (B, latent...), J = d x0_hat / d x_sigma

The conditioning inputs are mean, spread, then features (set encoder) and any extra inputs of the
testbed (l96's ensemble Gaussian: basis, eigvals), in that order.

The VJP graph is traced with make_fx (symbolic) around torch.func.vjp with decompositions that keep it
to plain ops: aten.convolution_backward (stride 1, dilation 1, groups 1) becomes a convolution of the
output gradient with the weight transposed in its channel dims and flipped spatially, padding k-1-p;
optionally aten.slice_backward (the backward of periodic padding by concatenation) becomes a
concatenation with zeros, which the exporter would otherwise emit as Transpose + ScatterND.

Checks (the report's "checks", the manifest's [parity]): every graph in ONNX Runtime against torch, also
at a second batch size / ensemble size; conditioner permutation invariance; the VJP graph against torch
autograd; the VJP against central differences of the float64 torch graph (h = 1e-4) and of the exported
float32 forward graphs (h = 1e-2): sum(vjp * u) = sum(v * (x0(x + h u) - x0(x - h u))) / 2h per row.
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

aten = torch.ops.aten
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_backward(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed,
                   output_padding, groups, output_mask):
    """convolution_backward of a stride-1, dilation-1, groups-1 1-D/2-D/3-D conv, input gradient by a
    plain conv: grad_in = conv(grad_out, W transposed in channels and flipped, padding k-1-p)."""
    assert not transposed and groups == 1 and all(s == 1 for s in stride) and all(d == 1 for d in dilation)
    nd = weight.dim() - 2
    gi = gw = gb = None
    if output_mask[0]:
        w = weight.transpose(0, 1).flip(tuple(range(-nd, 0)))
        pad = tuple(k - 1 - p for k, p in zip(weight.shape[2:], padding))
        gi = CONV[nd](grad_out, w, None, 1, pad)
    if output_mask[1]:
        raise NotImplementedError("the weight gradient is not needed for the VJP graph")
    if output_mask[2]:
        gb = grad_out.sum(dim=(0, *range(2, grad_out.dim())))
    return gi, gw, gb


def _slice_backward(grad_out, input_sizes, dim, start, end, step):
    """slice_backward as a concatenation with zeros instead of slice_scatter."""
    assert step == 1
    d = dim % len(input_sizes)
    n = int(input_sizes[d])
    s = start + n if start < 0 else start
    e = end + n if end < 0 else end
    s, e = max(0, min(s, n)), max(0, min(e, n))
    zeros = lambda k: torch.zeros_like(grad_out.narrow(d, 0, 1)).expand(
        *[-1] * d, k, *[-1] * (len(input_sizes) - d - 1))
    parts = ([zeros(s)] if s > 0 else []) + [grad_out] + ([zeros(n - e)] if n - e > 0 else [])
    return torch.cat(parts, dim=d) if len(parts) > 1 else grad_out


def decompositions(slice_as_concat: bool) -> dict:
    """The make_fx decomposition table of the VJP graph (module docstring)."""
    table = {aten.convolution_backward.default: _conv_backward}
    if slice_as_concat:
        table[aten.slice_backward.default] = _slice_backward
    return table


class Wrap(nn.Module):
    """One module as a graph (the parameter names get the prefix "m.")."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)


class ConditionerGraph(nn.Module):
    """The set encoder; its parameters keep the names cond.* of the ScoreModel."""

    def __init__(self, cond):
        super().__init__()
        self.cond = cond

    def forward(self, members, mean, spread):
        return self.cond(members, mean, spread)


class DenoiserGraph(nn.Module):
    """den(x_sigma, sigma, **conditioning)[0] with the batch-1 conditioning broadcast over the batch.
    `names`: the conditioning inputs in order (keyword names of den.forward); up to five."""

    def __init__(self, den, names):
        super().__init__()
        self.den = den
        self.names = list(names)
        assert 1 <= len(self.names) <= 5

    def forward(self, x_sigma, sigma, c1, c2=None, c3=None, c4=None, c5=None):
        B = x_sigma.shape[0]
        cond = [c for c in (c1, c2, c3, c4, c5) if c is not None]
        kw = {n: c.expand(B, *[-1] * (c.dim() - 1)) for n, c in zip(self.names, cond)}
        return self.den(x_sigma, sigma, **kw)[0]


class DecodedDenoiser(nn.Module):
    """decoder(denoiser(...)), or the denoiser alone without a codec: what denoiser_vjp differentiates."""

    def __init__(self, dg: DenoiserGraph, dec=None):
        super().__init__()
        self.dg = dg
        self.dec = dec

    def forward(self, *args):
        z = self.dg(*args)
        return self.dec(z) if self.dec is not None else z


def ort_session(path, threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def save_npy(d, name, arr):
    """float32, little-endian, C order."""
    np.save(os.path.join(d, name + ".npy"), np.ascontiguousarray(np.asarray(arr), dtype=np.float32))


def max_err(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _shape(t, batch: str = "1"):
    return [batch] + [str(d) for d in t.shape[1:]]


def export_bundle(out_dir: str, den, example: dict, cond=None, codec=None, extra=None,
                  slice_as_concat: bool = False, grid_tolerance: float | None = None,
                  tolerance_note: str | None = None, v_scale=None, seed: int = 0) -> dict:
    """Export the graphs into out_dir, check them, save fixtures/ and fixtures/index.json.

    den: the denoiser, den(x_sigma, sigma, mean=, spread=[, features=][, <extra>=]) -> (x0_hat, ...).
    example: one held-out record, physical: members (N, grid...), optionally mean and spread (grid...,
      the recorded statistics; without a codec they are used as given, else the statistics of the encoded
      members are) and truth (grid..., needed with a codec).
    cond: the set encoder (conditioner.onnx) or None. codec: (encoder, decoder) or None (identity).
    extra: members (1, N, latent...) -> {name: tensor (1, ...)}, further conditioning inputs.
    slice_as_concat: decompose slice_backward too (decompositions). grid_tolerance: the fixture
      tolerance of the outputs in grid units (decoder x, denoiser_vjp x0_hat; codec only) when they cannot
      meet the global 1e-4 (other outputs fall back to it), with tolerance_note. v_scale: multiplies the N(0,1) cotangent v (broadcast on the grid).
    Returns {"graphs": signatures, "checks": ..., "fixture_index": ...}.
    """
    torch.manual_seed(seed)
    modules = [den] + ([cond] if cond is not None else []) + (list(codec) if codec else [])
    for mod in modules:
        mod.eval()
        for p in mod.parameters():
            p.requires_grad_(False)
    os.makedirs(out_dir, exist_ok=True)
    fx = os.path.join(out_dir, "fixtures")
    os.makedirs(fx, exist_ok=True)
    rep: dict = {"graphs": {}, "checks": {}}
    checks, graphs = rep["checks"], rep["graphs"]
    idx: dict = {"format": "npy float32 little-endian C order; names <graph>_in_<input> / <graph>_out_<output>",
                 "tolerance_max_abs": 1e-4}
    Bd = torch.export.Dim("batch", min=1, max=4096)
    Nd = torch.export.Dim("members", min=2, max=1024)

    def export(mod, args, name, inputs, outputs, dyn):
        path = os.path.join(out_dir, name + ".onnx")
        torch.onnx.export(mod, args, path, dynamo=True, opset_version=18, external_data=False,
                          input_names=inputs, output_names=outputs, dynamic_shapes=dyn)
        return ort_session(path)

    def fixtures(graph, inputs: dict, outputs: dict):
        """Save arrays (name -> (file stem, array or None if saved already)) and index them."""
        for group in (inputs, outputs):
            for stem, a in group.values():
                if a is not None:
                    save_npy(fx, stem, a)
        idx[graph] = {"inputs": {n: stem + ".npy" for n, (stem, _) in inputs.items()},
                      "outputs": {n: stem + ".npy" for n, (stem, _) in outputs.items()}}

    # --- codec: encoder / decoder
    members_x = torch.as_tensor(np.asarray(example["members"]))              # (N, grid...)
    if codec:
        enc, dec = Wrap(codec[0]).eval(), Wrap(codec[1]).eval()
        xt = torch.as_tensor(np.asarray(example["truth"]))[None]
        xe = torch.cat([xt, members_x[:2]])                                   # truth + 2 members
        s = export(enc, (xe,), "encoder", ["x"], ["z"], ({0: Bd},))
        ze = enc(xe)
        checks["encoder_ort_max_abs_err"] = max(max_err(s.run(None, {"x": xe.numpy()})[0], ze),
                                                max_err(s.run(None, {"x": members_x[:7].numpy()})[0], enc(members_x[:7])))
        fixtures("encoder", {"x": ("encoder_in_x", xe)}, {"z": ("encoder_out_z", ze)})
        graphs["encoder"] = {"file": "encoder.onnx", "inputs": {"x": _shape(xe, "B")}, "outputs": {"z": _shape(ze, "B")}}
        s = export(dec, (ze,), "decoder", ["z"], ["x"], ({0: Bd},))
        xd = dec(ze)
        zz = enc(members_x[:5])
        e = max(max_err(s.run(None, {"z": ze.numpy()})[0], xd), max_err(s.run(None, {"z": zz.numpy()})[0], dec(zz)))
        checks["decoder_ort_max_abs_err"] = e
        checks["decoder_ort_max_rel_err"] = e / float(xd.abs().max())
        fixtures("decoder", {"z": ("decoder_in_z", ze)}, {"x": ("decoder_out_x", xd)})
        graphs["decoder"] = {"file": "decoder.onnx", "inputs": {"z": _shape(ze, "B")}, "outputs": {"x": _shape(xd, "B")}}
        members = enc(members_x)[None]                                        # (1, N, latent...)
        mean, spread = members.mean(1), members.std(1, unbiased=True)
        dec_mod = codec[1]
    else:
        members = members_x[None]
        mean = (torch.as_tensor(np.asarray(example["mean"]))[None] if "mean" in example else members.mean(1))
        spread = (torch.as_tensor(np.asarray(example["spread"]))[None] if "spread" in example
                  else members.std(1, unbiased=True))
        dec_mod = None

    # --- the denoiser's example inputs: 5 noise levels around the example's statistics, the cotangent v
    Bx = 5
    sigma = torch.tensor([0.02, 0.1, 0.3, 1.0, 4.0], dtype=torch.float32)
    lat = tuple(mean.shape[1:])
    bshape = lambda t: t.view(-1, *[1] * len(lat))
    x_sigma = mean + bshape(sigma) * torch.randn(Bx, *lat) + spread * torch.randn(Bx, *lat)
    grid = tuple(members_x.shape[1:])
    v = torch.randn(Bx, *grid)
    if v_scale is not None:
        v = v * v_scale

    # --- conditioner (on the members in the sampling space)
    names, cargs = ["mean", "spread"], [mean, spread]
    if cond is not None:
        cg = ConditionerGraph(cond).eval()
        s = export(cg, (members, mean, spread), "conditioner", ["members", "mean", "spread"], ["features"],
                   ({1: Nd}, None, None))
        feats = cg(members, mean, spread)
        feed = lambda m, mu, sp: {"members": m.numpy(), "mean": mu.numpy(), "spread": sp.numpy()}
        m7 = members[:, :7]
        mu7, sp7 = m7.mean(1), m7.std(1, unbiased=True)
        checks["conditioner_ort_max_abs_err"] = max(max_err(s.run(None, feed(members, mean, spread))[0], feats),
                                                    max_err(s.run(None, feed(m7, mu7, sp7))[0], cg(m7, mu7, sp7)))
        perm = members[:, torch.randperm(members.shape[1])]
        checks["conditioner_permutation_max_abs_err"] = max_err(s.run(None, feed(perm, mean, spread))[0], feats)
        fixtures("conditioner", {n: (f"conditioner_in_{n}", a) for n, a in
                                 (("members", members), ("mean", mean), ("spread", spread))},
                 {"features": ("conditioner_out_features", feats)})
        graphs["conditioner"] = {"file": "conditioner.onnx",
                                 "inputs": {"members": ["1", "N"] + _shape(mean)[1:], "mean": _shape(mean),
                                            "spread": _shape(spread)},
                                 "outputs": {"features": _shape(feats)}}
        names.append("features")
        cargs.append(feats)
    for n, a in (extra(members) if extra else {}).items():
        names.append(n)
        cargs.append(a)

    # --- denoiser
    in_names = ["x_sigma", "sigma"] + names
    args = (x_sigma, sigma, *cargs)
    dyn = ({0: Bd}, {0: Bd}) + (None,) * len(cargs)
    dyn_named = dict(zip(["x_sigma", "sigma", "c1", "c2", "c3", "c4", "c5"], dyn))
    out_name = "z0_hat" if codec else "x0_hat"
    dg = DenoiserGraph(den, names).eval()
    sess = export(dg, args, "denoiser", in_names, [out_name], dyn_named)
    with torch.no_grad():
        ref = dg(*args)
    feed = {n: a.numpy() for n, a in zip(in_names, args)}
    a2 = (x_sigma[:2], sigma[:2]) + args[2:]
    feed2 = {n: a.numpy() for n, a in zip(in_names, a2)}
    checks["denoiser_ort_max_abs_err"] = max(max_err(sess.run(None, feed)[0], ref),
                                             max_err(sess.run(None, feed2)[0], ref[:2]))
    sig_in = {"x_sigma": _shape(x_sigma, "B"), "sigma": ["B"], **{n: _shape(a) for n, a in zip(names, cargs)}}
    graphs["denoiser"] = {"file": "denoiser.onnx", "inputs": sig_in, "outputs": {out_name: _shape(ref, "B")}}
    fixtures("denoiser", {n: (f"denoiser_in_{n}", a) for n, a in zip(in_names, args)},
             {out_name: (f"denoiser_out_{out_name}", ref)})

    # --- VJP of decode o denoiser
    dd = DecodedDenoiser(dg, dec_mod).eval()

    def vjp_fn(*a):
        *inputs, vv = a
        out, pull = torch.func.vjp(lambda x: dd(x, *inputs[1:]), inputs[0])
        return out, pull(vv)[0]

    vargs = args + (v,)
    gm = make_fx(vjp_fn, decomposition_table=decompositions(slice_as_concat), tracing_mode="symbolic",
                 _allow_non_fake_inputs=True)(*vargs)
    sv = export(gm, vargs, "denoiser_vjp", in_names + ["v"], ["x0_hat", "vjp"], dyn + ({0: Bd},))
    xs = x_sigma.clone().requires_grad_(True)
    with torch.enable_grad():
        x0_ref = dd(xs, *args[1:])
        (g_ref,) = torch.autograd.grad(x0_ref, xs, v)
    x0_ref = x0_ref.detach()
    o_ort, g_ort = sv.run(None, {**feed, "v": v.numpy()})
    checks["vjp_graph_x0_max_abs_err"] = max_err(o_ort, x0_ref)
    checks["vjp_graph_x0_max_rel_err"] = max_err(o_ort, x0_ref) / float(x0_ref.abs().max())
    checks["vjp_graph_vs_autograd_max_abs_err"] = max_err(g_ort, g_ref)
    checks["vjp_graph_vs_autograd_max_rel_err"] = max_err(g_ort, g_ref) / float(g_ref.abs().max())
    _, g2 = sv.run(None, {**feed2, "v": v[:2].numpy()})
    checks["vjp_graph_batch2_max_abs_err"] = max_err(g2, g_ref[:2])
    # central differences of the float64 torch graph ...
    dd64 = copy.deepcopy(dd).double().eval()
    a64 = tuple(a.double() for a in args)
    rows = lambda t: t.sum(dim=tuple(range(1, t.dim())))
    gen = torch.Generator().manual_seed(1)
    rel = []
    with torch.no_grad():
        for _ in range(4):
            u = torch.randn(Bx, *lat, generator=gen, dtype=torch.float64)
            h = 1e-4
            fd = rows((dd64(a64[0] + h * u, *a64[1:]) - dd64(a64[0] - h * u, *a64[1:])) / (2 * h) * v.double())
            an = rows(torch.from_numpy(g_ort).double() * u)
            rel.append(float((fd - an).abs().max() / fd.abs().max()))
    checks["vjp_vs_fd_float64_max_rel_err"] = max(rel)
    # ... and of the exported float32 forward graphs (denoiser.onnx, then decoder.onnx), coarser step
    sdec = ort_session(os.path.join(out_dir, "decoder.onnx")) if codec else None
    u = torch.randn(Bx, *lat, generator=gen)
    h = 1e-2

    def fwd(z):
        x0 = sess.run(None, {**feed, "x_sigma": z})[0]
        return (sdec.run(None, {"z": x0})[0] if sdec else x0).astype(np.float64)

    fd32 = rows(torch.from_numpy((fwd((x_sigma + h * u).numpy()) - fwd((x_sigma - h * u).numpy())) / (2 * h)
                                 * v.double().numpy()))
    an32 = rows(torch.from_numpy(g_ort.astype(np.float64) * u.double().numpy()))
    checks["vjp_vs_fd_onnx_forward_float32_max_rel_err"] = float((fd32 - an32).abs().max() / fd32.abs().max())
    # pixel space: x0_hat of the VJP graph is the denoiser's output and v lives on x_sigma's grid, so the
    # fixtures keep the denoiser's files (denoiser_in_v, denoiser_out_x0_hat)
    v_stem = "denoiser_vjp_in_v" if codec else "denoiser_in_v"
    x0_file = ("denoiser_vjp_out_x0_hat", x0_ref) if codec else ("denoiser_out_x0_hat", None)
    fixtures("denoiser_vjp", {**{n: (f"denoiser_in_{n}", None) for n in in_names}, "v": (v_stem, v)},
             {"x0_hat": x0_file, "vjp": ("denoiser_vjp_out_vjp", g_ref)})
    graphs["denoiser_vjp"] = {"file": "denoiser_vjp.onnx", "inputs": {**sig_in, "v": _shape(v, "B")},
                              "outputs": {"x0_hat": _shape(x0_ref, "B"), "vjp": _shape(g_ref, "B")}}
    idx["fd_check"] = ("for denoiser_vjp: sum(vjp * u) == sum(v * (x0(x+h u) - x0(x-h u)) / 2h) per batch row, "
                       + ("x0 = decoder(denoiser(x))" if codec else "x0 = denoiser(x)"))
    if grid_tolerance is not None:
        idx["decoder"]["tolerance_max_abs"] = {"x": grid_tolerance}
        idx["denoiser_vjp"]["tolerance_max_abs"] = {"x0_hat": grid_tolerance}
    if tolerance_note:
        idx["tolerance_note"] = tolerance_note
    with open(os.path.join(fx, "index.json"), "w") as f:
        json.dump(idx, f, indent=1)
    rep["fixture_index"] = idx
    return rep
