"""ONNX export of the qg2l latent bundle (DESIGN §5; TOOLCHAIN "PyTorch and ONNX export"), parity checks
and fixtures.

Graphs (float32, opset 18, external_data=False; B dynamic batch, N dynamic ensemble size; C latent
channels, F feature channels):
  encoder.onnx       x (B,2,64,64) m^2/s -> z (B,C,16,16)
  decoder.onnx       z (B,C,16,16) -> x (B,2,64,64) m^2/s
  conditioner.onnx   members (1,N,C,16,16) [encoded members], mean (1,C,16,16), spread (1,C,16,16)
                     -> features (1,F,16,16)
  denoiser.onnx      x_sigma (B,C,16,16), sigma (B,), mean, spread (1,C,16,16), features (1,F,16,16)
                     -> z0_hat (B,C,16,16)
  denoiser_vjp.onnx  same inputs + v (B,2,64,64) -> x0_hat (B,2,64,64) = decoder(denoiser(...)),
                     vjp (B,C,16,16) = J^T v with J = d x0_hat / d x_sigma
The VJP graph is traced with make_fx (symbolic) around torch.func.vjp, with aten.convolution_backward
replaced by a plain 2-D convolution (stride 1, no padding in the convs: the periodic padding is an
explicit concatenation whose backward is slicing and adding).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from .export import ConditionerGraph

aten = torch.ops.aten


def nets_std():
    from .qg2l_nets import PSI_STD
    return PSI_STD


def _conv_backward(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed,
                   output_padding, groups, output_mask):
    """convolution_backward of a stride-1, dilation-1, groups-1 2-D conv, input gradient by a plain conv:
    grad_in = conv2d(grad_out, W transposed in its channel dims and flipped spatially, padding k-1-p)."""
    assert not transposed and groups == 1 and all(s == 1 for s in stride) and all(d == 1 for d in dilation)
    gi = gw = gb = None
    if output_mask[0]:
        kh, kw = weight.shape[-2:]
        w = weight.transpose(0, 1).flip(-1, -2)
        gi = F.conv2d(grad_out, w, None, 1, (kh - 1 - padding[0], kw - 1 - padding[1]))
    if output_mask[1]:
        raise NotImplementedError("the weight gradient is not needed for the VJP graph")
    if output_mask[2]:
        gb = grad_out.sum(dim=(0, 2, 3))
    return gi, gw, gb


def _slice_backward(grad_out, input_sizes, dim, start, end, step):
    """slice_backward as a concatenation with zeros instead of slice_scatter (which the exporter turns
    into Transpose + ScatterND, slower than the convolutions themselves). The periodic padding's
    backward is made of these."""
    assert step == 1
    d = dim % len(input_sizes)
    n = int(input_sizes[d])
    s = start + n if start < 0 else start
    e = end + n if end < 0 else end
    s, e = max(0, min(s, n)), max(0, min(e, n))
    parts = []
    if s > 0:
        parts.append(torch.zeros_like(grad_out.narrow(d, 0, 1)).expand(*[-1] * d, s, *[-1] * (len(input_sizes) - d - 1)))
    parts.append(grad_out)
    if n - e > 0:
        parts.append(torch.zeros_like(grad_out.narrow(d, 0, 1)).expand(*[-1] * d, n - e, *[-1] * (len(input_sizes) - d - 1)))
    return torch.cat(parts, dim=d) if len(parts) > 1 else grad_out


DECOMP = {aten.convolution_backward.default: _conv_backward,
          aten.slice_backward.default: _slice_backward}


class DenoiserGraph(nn.Module):
    """Conditioning has batch 1 and is broadcast over the B samples."""

    def __init__(self, den):
        super().__init__()
        self.den = den

    def forward(self, x_sigma, sigma, mean, spread, features):
        B = x_sigma.shape[0]
        e = lambda a: a.expand(B, -1, -1, -1)
        return self.den(x_sigma, sigma, e(mean), e(spread), e(features))[0]


class DecodedDenoiser(nn.Module):
    def __init__(self, den, dec):
        super().__init__()
        self.dg = DenoiserGraph(den)
        self.dec = dec

    def forward(self, x_sigma, sigma, mean, spread, features):
        return self.dec(self.dg(x_sigma, sigma, mean, spread, features))


class Wrap(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)


def _ort(path, threads=1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _save(d, name, arr):
    np.save(os.path.join(d, name + ".npy"), np.ascontiguousarray(np.asarray(arr), dtype=np.float32))


def _maxerr(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def export_bundle(ae, model, out_dir: str, example: dict, seed: int = 0, log=print) -> dict:
    """Export encoder, decoder, conditioner, denoiser, denoiser_vjp into out_dir; check each with ONNX
    Runtime against torch (also at a second B / N), the VJP against autograd and finite differences;
    save fixtures. `example`: one held-out record, physical members (N,2,64,64), truth (2,64,64)."""
    torch.manual_seed(seed)
    ae, model = ae.eval(), model.eval()
    for p in list(ae.parameters()) + list(model.parameters()):
        p.requires_grad_(False)
    os.makedirs(out_dir, exist_ok=True)
    fx = os.path.join(out_dir, "fixtures")
    os.makedirs(fx, exist_ok=True)
    C, Fch = ae.C, model.den.feat_ch
    rep: dict = {"graphs": {}, "checks": {}}
    Bd = torch.export.Dim("batch", min=1, max=4096)
    Nd = torch.export.Dim("members", min=2, max=1024)
    idx: dict = {"format": "npy float32 little-endian C order; names <graph>_in_<input> / <graph>_out_<output>",
                 "tolerance_max_abs": 1e-4}

    def export(mod, args, name, inputs, outputs, dyn):
        path = os.path.join(out_dir, name + ".onnx")
        torch.onnx.export(mod, args, path, dynamo=True, opset_version=18, external_data=False,
                          input_names=inputs, output_names=outputs, dynamic_shapes=dyn)
        return path

    # --- encoder / decoder
    xm = torch.from_numpy(example["members"])                     # (N,2,64,64)
    xt = torch.from_numpy(example["truth"])[None]                  # (1,2,64,64)
    xe = torch.cat([xt, xm[:2]])                                   # (3,2,64,64): truth + 2 members
    enc, dec = Wrap(ae.enc).eval(), Wrap(ae.dec).eval()
    p = export(enc, (xe,), "encoder", ["x"], ["z"], ({0: Bd},))
    s = _ort(p)
    ze = enc(xe)
    e1 = _maxerr(s.run(None, {"x": xe.numpy()})[0], ze)
    e2 = _maxerr(s.run(None, {"x": xm[:7].numpy()})[0], enc(xm[:7]))
    rep["checks"]["encoder_ort_max_abs_err"] = max(e1, e2)
    _save(fx, "encoder_in_x", xe)
    _save(fx, "encoder_out_z", ze)
    idx["encoder"] = {"inputs": {"x": "encoder_in_x.npy"}, "outputs": {"z": "encoder_out_z.npy"}}
    rep["graphs"]["encoder"] = {"file": "encoder.onnx", "inputs": {"x": ["B", "2", "64", "64"]},
                                "outputs": {"z": ["B", str(C), "16", "16"]}}

    p = export(dec, (ze,), "decoder", ["z"], ["x"], ({0: Bd},))
    s = _ort(p)
    xd = dec(ze)
    zz = enc(xm[:5])
    e1 = _maxerr(s.run(None, {"z": ze.numpy()})[0], xd)
    e2 = _maxerr(s.run(None, {"z": zz.numpy()})[0], dec(zz))
    rep["checks"]["decoder_ort_max_abs_err_m2s"] = max(e1, e2)
    rep["checks"]["decoder_ort_max_rel_err"] = max(e1, e2) / float(xd.abs().max())
    _save(fx, "decoder_in_z", ze)
    _save(fx, "decoder_out_x", xd)
    idx["decoder"] = {"inputs": {"z": "decoder_in_z.npy"}, "outputs": {"x": "decoder_out_x.npy"}}
    rep["graphs"]["decoder"] = {"file": "decoder.onnx", "inputs": {"z": ["B", str(C), "16", "16"]},
                                "outputs": {"x": ["B", "2", "64", "64"]}}

    # --- conditioner (on the encoded members, as the Rust side does)
    members = enc(xm)[None]                                       # (1,N,C,16,16)
    mean = members.mean(1)
    spread = members.std(1, unbiased=True)
    cg = ConditionerGraph(model.cond).eval()
    p = export(cg, (members, mean, spread), "conditioner", ["members", "mean", "spread"], ["features"],
               ({1: Nd}, None, None))
    s = _ort(p)
    feats = cg(members, mean, spread)
    err = _maxerr(s.run(None, {"members": members.numpy(), "mean": mean.numpy(), "spread": spread.numpy()})[0], feats)
    mm = members[:, :7]
    mu7, sp7 = mm.mean(1), mm.std(1, unbiased=True)
    err = max(err, _maxerr(s.run(None, {"members": mm.numpy(), "mean": mu7.numpy(), "spread": sp7.numpy()})[0],
                           cg(mm, mu7, sp7)))
    perm = members[:, torch.randperm(members.shape[1])]
    rep["checks"]["conditioner_ort_max_abs_err"] = err
    rep["checks"]["conditioner_permutation_max_abs_err"] = _maxerr(
        s.run(None, {"members": perm.numpy(), "mean": mean.numpy(), "spread": spread.numpy()})[0], feats)
    for n, a in (("members", members), ("mean", mean), ("spread", spread)):
        _save(fx, "conditioner_in_" + n, a)
    _save(fx, "conditioner_out_features", feats)
    idx["conditioner"] = {"inputs": {n: f"conditioner_in_{n}.npy" for n in ("members", "mean", "spread")},
                          "outputs": {"features": "conditioner_out_features.npy"}}
    lat = [str(C), "16", "16"]
    rep["graphs"]["conditioner"] = {"file": "conditioner.onnx",
                                    "inputs": {"members": ["1", "N"] + lat, "mean": ["1"] + lat, "spread": ["1"] + lat},
                                    "outputs": {"features": ["1", str(Fch), "16", "16"]}}

    # --- denoiser
    Bx = 5
    sigma = torch.tensor([0.02, 0.1, 0.3, 1.0, 4.0])
    x_sigma = mean + sigma[:, None, None, None] * torch.randn(Bx, C, 16, 16) + spread * torch.randn(Bx, C, 16, 16)
    # v: the likelihood gradient the sampler passes (units 1/(m^2/s)); scaled per layer so that the
    # fixture's J^T v is O(0.1-1) and float32 rounding stays far below the 1e-4 tolerance
    v = 0.01 * torch.randn(Bx, 2, 64, 64) / torch.tensor(nets_std()).view(1, 2, 1, 1)
    names = ["x_sigma", "sigma", "mean", "spread", "features"]
    args = (x_sigma, sigma, mean, spread, feats)
    dyn = ({0: Bd}, {0: Bd}, None, None, None)
    dg = DenoiserGraph(model.den).eval()
    p = export(dg, args, "denoiser", names, ["z0_hat"], dyn)
    sess = _ort(p)
    ref = dg(*args)
    feed = {n: a.numpy() for n, a in zip(names, args)}
    err = _maxerr(sess.run(None, feed)[0], ref)
    a2 = (x_sigma[:2], sigma[:2]) + args[2:]
    err = max(err, _maxerr(sess.run(None, {n: a.numpy() for n, a in zip(names, a2)})[0], ref[:2]))
    rep["checks"]["denoiser_ort_max_abs_err"] = err
    sig_in = {"x_sigma": ["B"] + lat, "sigma": ["B"], "mean": ["1"] + lat, "spread": ["1"] + lat,
              "features": ["1", str(Fch), "16", "16"]}
    rep["graphs"]["denoiser"] = {"file": "denoiser.onnx", "inputs": sig_in, "outputs": {"z0_hat": ["B"] + lat}}
    for n, a in zip(names, args):
        _save(fx, "denoiser_in_" + n, a)
    _save(fx, "denoiser_out_z0_hat", ref)
    idx["denoiser"] = {"inputs": {n: f"denoiser_in_{n}.npy" for n in names},
                       "outputs": {"z0_hat": "denoiser_out_z0_hat.npy"}}

    # --- VJP of decoder o denoiser
    dd = DecodedDenoiser(model.den, ae.dec).eval()

    def fn(x_sigma, sigma, mean, spread, features, v):
        out, pull = torch.func.vjp(lambda z: dd(z, sigma, mean, spread, features), x_sigma)
        return out, pull(v)[0]

    vargs = args + (v,)
    gm = make_fx(fn, decomposition_table=DECOMP, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*vargs)
    p = export(gm, vargs, "denoiser_vjp", names + ["v"], ["x0_hat", "vjp"], dyn + ({0: Bd},))
    sv = _ort(p)
    xs = x_sigma.clone().requires_grad_(True)
    with torch.enable_grad():
        x0_ref = dd(xs, *args[1:])
        (g_ref,) = torch.autograd.grad(x0_ref, xs, v)
    x0_ref = x0_ref.detach()
    o_ort, g_ort = sv.run(None, {**feed, "v": v.numpy()})
    scale_x = float(x0_ref.abs().max())
    rep["checks"]["vjp_graph_x0_max_abs_err_m2s"] = _maxerr(o_ort, x0_ref)
    rep["checks"]["vjp_graph_x0_max_rel_err"] = _maxerr(o_ort, x0_ref) / scale_x
    rep["checks"]["vjp_graph_vs_autograd_max_abs_err"] = _maxerr(g_ort, g_ref)
    rep["checks"]["vjp_graph_vs_autograd_max_rel_err"] = _maxerr(g_ort, g_ref) / float(g_ref.abs().max())
    f2 = {n: a.numpy() for n, a in zip(names, a2)}
    f2["v"] = v[:2].numpy()
    o2, g2 = sv.run(None, f2)
    rep["checks"]["vjp_graph_batch2_max_abs_err"] = _maxerr(g2, g_ref[:2])
    # finite differences: float64 torch of the same graph, and the exported float32 graphs
    dd64 = DecodedDenoiser(model.den, ae.dec)
    import copy as _copy
    dd64 = _copy.deepcopy(dd64).double().eval()
    a64 = tuple(a.double() for a in args)
    gen = torch.Generator().manual_seed(1)
    rel = []
    with torch.no_grad():
        for _ in range(3):
            u = torch.randn(Bx, C, 16, 16, generator=gen, dtype=torch.float64)
            h = 1e-4
            fd = ((dd64(a64[0] + h * u, *a64[1:]) - dd64(a64[0] - h * u, *a64[1:])) / (2 * h) * v.double()).sum((1, 2, 3))
            an = (torch.from_numpy(g_ort).double() * u).sum((1, 2, 3))
            rel.append(float((fd - an).abs().max() / fd.abs().max()))
    rep["checks"]["vjp_vs_fd_float64_max_rel_err"] = max(rel)
    # FD of the exported float32 forward graphs (denoiser.onnx then decoder.onnx), coarser step
    sdec = _ort(os.path.join(out_dir, "decoder.onnx"))
    u = torch.randn(Bx, C, 16, 16, generator=gen)
    h = 1e-2
    fwd = lambda z: sdec.run(None, {"z": sess.run(None, {**feed, "x_sigma": z})[0]})[0].astype(np.float64)
    fp, fm = fwd((x_sigma + h * u).numpy()), fwd((x_sigma - h * u).numpy())
    fd32 = ((fp - fm) / (2 * h) * v.numpy()).sum((1, 2, 3))
    an32 = (g_ort.astype(np.float64) * u.numpy()).sum((1, 2, 3))
    rep["checks"]["vjp_vs_fd_onnx_forward_float32_max_rel_err"] = float(np.abs(fd32 - an32).max() / np.abs(fd32).max())
    _save(fx, "denoiser_vjp_in_v", v)
    _save(fx, "denoiser_vjp_out_x0_hat", x0_ref)
    _save(fx, "denoiser_vjp_out_vjp", g_ref)
    idx["denoiser_vjp"] = {"inputs": {**{n: f"denoiser_in_{n}.npy" for n in names}, "v": "denoiser_vjp_in_v.npy"},
                           "outputs": {"x0_hat": "denoiser_vjp_out_x0_hat.npy", "vjp": "denoiser_vjp_out_vjp.npy"}}
    rep["graphs"]["denoiser_vjp"] = {"file": "denoiser_vjp.onnx", "inputs": {**sig_in, "v": ["B", "2", "64", "64"]},
                                     "outputs": {"x0_hat": ["B", "2", "64", "64"], "vjp": ["B"] + lat}}
    idx["fd_check"] = ("for denoiser_vjp: sum(vjp * u) == sum(v * (x0(x+h u) - x0(x-h u)) / 2h) per batch row, "
                       "x0 = decoder(denoiser(x))")
    # Outputs in m^2/s (|x| up to ~6e3, float32 spacing there 4.9e-4) cannot meet 1e-4 absolute: those
    # graph entries carry their own tolerance (1e-2 m^2/s = 1e-5 hPa, 2e-6 K), the rest use the global 1e-4.
    for g in ("decoder", "denoiser_vjp"):
        idx[g]["tolerance_max_abs"] = {"x": 1e-2, "x0_hat": 1e-2, "vjp": 1e-4}
    idx["tolerance_note"] = ("global tolerance_max_abs 1e-4 applies to every output except those listed in a graph's "
                             "own tolerance_max_abs map (decoder x and denoiser_vjp x0_hat are in m^2/s, |x| up to "
                             "~6e3 where float32 spacing is 4.9e-4; 1e-2 m^2/s is 1e-5 hPa / 2e-6 K)")
    json.dump(idx, open(os.path.join(fx, "index.json"), "w"), indent=1)
    rep["fixture_index"] = idx
    return rep


def benchmark(out_dir: str, C: int, Fch: int, example_cond: dict, threads=(1, 2), batches=(1, 16, 32), reps: int = 20):
    """ORT wall time per call (ms) of denoiser, denoiser_vjp, conditioner, encoder, decoder."""
    import time
    out = {}
    for th in threads:
        for g in ("denoiser", "denoiser_vjp", "decoder"):
            s = _ort(os.path.join(out_dir, g + ".onnx"), th)
            for B in batches:
                if g == "decoder":
                    feed = {"z": np.random.randn(B, C, 16, 16).astype(np.float32)}
                else:
                    feed = {"x_sigma": np.random.randn(B, C, 16, 16).astype(np.float32),
                            "sigma": np.full(B, 0.5, np.float32), **example_cond}
                    if g == "denoiser_vjp":
                        feed["v"] = np.random.randn(B, 2, 64, 64).astype(np.float32)
                s.run(None, feed)
                t0 = time.perf_counter()
                for _ in range(reps):
                    s.run(None, feed)
                out[f"{g}_B{B}_threads{th}_ms"] = round((time.perf_counter() - t0) / reps * 1000, 2)
        s = _ort(os.path.join(out_dir, "conditioner.onnx"), th)
        feed = {k: example_cond[k] for k in ("mean", "spread")}
        feed["members"] = np.random.randn(1, 32, C, 16, 16).astype(np.float32)
        s.run(None, feed)
        t0 = time.perf_counter()
        for _ in range(reps):
            s.run(None, feed)
        out[f"conditioner_N32_threads{th}_ms"] = round((time.perf_counter() - t0) / reps * 1000, 2)
        s = _ort(os.path.join(out_dir, "encoder.onnx"), th)
        feed = {"x": np.random.randn(32, 2, 64, 64).astype(np.float32) * 1000}
        s.run(None, feed)
        t0 = time.perf_counter()
        for _ in range(5):
            s.run(None, feed)
        out[f"encoder_B32_threads{th}_ms"] = round((time.perf_counter() - t0) / 5 * 1000, 2)
    return out
