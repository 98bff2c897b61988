"""python -m assimd_train.qg2l_verify [BUNDLE_DIR]: check a latent bundle the way the Rust loader does
(models/src/bundle.rs: Manifest::validate, check_session, check_fixtures), with onnxruntime in Python.

- manifest: testbed, grid dims vs n_points, 0 < sigma_min < sigma_max, a non-identity codec with both
  encoder and decoder, the denoiser's inputs = x_sigma, sigma + [conditioning.inputs] with their shapes,
  one output [B, latent...]; denoiser_vjp = the same + v [B, grid...] -> x0_hat [B, grid...], vjp [B, latent...];
  the conditioner's outputs are conditioning inputs, its inputs "members" or conditioning inputs;
- every graph: ORT opens it; input/output names equal the manifest's, float32, same rank, fixed dims equal,
  symbolic dims dynamic;
- fixtures: each graph on its fixture inputs vs the saved outputs, max abs error <= tolerance (the index's
  global tolerance_max_abs, or the graph entry's own per-output map when present).
Exit status 1 on any failure.
"""
from __future__ import annotations

import json
import os
import sys
import tomllib

import numpy as np


def _dims(shape):
    return [d if isinstance(d, int) else (int(d) if str(d).isdigit() else str(d)) for d in shape]


def _match(got, want):
    return len(got) == len(want) and all((isinstance(a, str) and isinstance(b, str)) or a == b
                                         for a, b in zip(got, want))


def verify(bundle: str, log=print) -> dict:
    import onnxruntime as ort
    errs: list[str] = []
    m = tomllib.load(open(os.path.join(bundle, "manifest.toml"), "rb"))
    grid, lat = m["grid"]["dims"], m["latent"]["shape"]
    if m["testbed"] not in ("l96", "qg2l"):
        errs.append("testbed")
    if int(np.prod(grid)) != m["grid"]["n_points"]:
        errs.append("grid dims vs n_points")
    if not (0 < m["noise"]["sigma_min"] < m["noise"]["sigma_max"]):
        errs.append("noise range")
    if m["normalisation"]["codec"].lstrip().startswith("identity"):
        errs.append("codec must not be identity for a latent bundle")
    g = m["graphs"]
    for k in ("encoder", "decoder", "denoiser", "denoiser_vjp", "conditioner"):
        if k not in g:
            errs.append(f"no graph {k}")
    cond = m["conditioning"]["inputs"]
    B = "B"
    latent_b, grid_b = [B] + lat, [B] + grid
    den = g["denoiser"]
    if set(den["inputs"]) != {"x_sigma", "sigma", *cond}:
        errs.append("denoiser inputs")
    if not _match(_dims(den["input_shapes"]["x_sigma"]), latent_b) or not _match(_dims(den["input_shapes"]["sigma"]), [B]):
        errs.append("denoiser x_sigma/sigma shapes")
    for n, c in cond.items():
        if _dims(den["input_shapes"][n]) != c["shape"]:
            errs.append(f"denoiser {n} shape vs [conditioning.inputs]")
    if len(den["outputs"]) != 1 or not _match(_dims(den["output_shapes"][den["outputs"][0]]), latent_b):
        errs.append("denoiser output")
    vjp = g["denoiser_vjp"]
    if set(vjp["inputs"]) != {"x_sigma", "sigma", "v", *cond}:
        errs.append("denoiser_vjp inputs")
    if not _match(_dims(vjp["input_shapes"]["v"]), grid_b):
        errs.append("denoiser_vjp v shape")
    if set(vjp["outputs"]) != {"x0_hat", "vjp"} or not _match(_dims(vjp["output_shapes"]["x0_hat"]), grid_b) \
            or not _match(_dims(vjp["output_shapes"]["vjp"]), latent_b):
        errs.append("denoiser_vjp outputs")
    c = g["conditioner"]
    for o in c["outputs"]:
        if o not in cond or _dims(c["output_shapes"][o]) != cond[o]["shape"]:
            errs.append(f"conditioner output {o}")
    for i in c["inputs"]:
        if i != "members" and i not in cond:
            errs.append(f"conditioner input {i}")
    if cond["features"]["shape"][1] != m["conditioning"]["feature_channels"]:
        errs.append("feature_channels")
    # sessions
    sessions = {}
    for name, spec in g.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        s = ort.InferenceSession(os.path.join(bundle, spec["file"]), so, providers=["CPUExecutionProvider"])
        sessions[name] = s
        for kind, outlets, names, shapes in (("input", s.get_inputs(), spec["inputs"], spec["input_shapes"]),
                                             ("output", s.get_outputs(), spec["outputs"], spec["output_shapes"])):
            if {o.name for o in outlets} != set(names):
                errs.append(f"{name}: {kind} names {[o.name for o in outlets]} vs manifest {names}")
                continue
            for o in outlets:
                if o.type != "tensor(float)":
                    errs.append(f"{name}: {kind} {o.name} is {o.type}")
                want = _dims(shapes[o.name])
                if len(o.shape) != len(want):
                    errs.append(f"{name}: {kind} {o.name} rank {o.shape} vs {want}")
                    continue
                for gd, wd in zip(o.shape, want):
                    dyn = not isinstance(gd, int)
                    if isinstance(wd, str) and not dyn:
                        errs.append(f"{name}: {kind} {o.name} dim {gd} fixed, manifest says {wd}")
                    if isinstance(wd, int) and not dyn and gd != wd:
                        errs.append(f"{name}: {kind} {o.name} dim {gd} vs {wd}")
    # fixtures
    fx = os.path.join(bundle, m["fixtures"]["dir"])
    idx = json.load(open(os.path.join(bundle, m["fixtures"]["index"])))
    tol = idx.get("tolerance_max_abs", m["fixtures"]["tolerance_max_abs"])
    results = {}
    for name, s in sessions.items():
        e = idx.get(name)
        if not e:
            continue
        feed = {k: np.load(os.path.join(fx, f)) for k, f in e["inputs"].items()}
        outs = dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))
        for o, f in e["outputs"].items():
            want = np.load(os.path.join(fx, f))
            err = float(np.abs(outs[o].astype(np.float64) - want).max())
            t = e.get("tolerance_max_abs", {}).get(o, tol) if isinstance(e.get("tolerance_max_abs"), dict) else tol
            results[f"{name}.{o}"] = {"max_abs_err": err, "tolerance": t, "shape": list(want.shape), "passed": err <= t}
            if err > t:
                errs.append(f"fixture {name}.{o}: {err:.3g} > {t:g}")
    # the VJP against central differences of the forward graphs (denoiser then decoder), as the Rust test
    e = idx["denoiser_vjp"]
    feed = {k: np.load(os.path.join(fx, f)) for k, f in e["inputs"].items()}
    x0, jtv = sessions["denoiser_vjp"].run(None, feed)
    rng = np.random.default_rng(0)
    u = rng.standard_normal(feed["x_sigma"].shape).astype(np.float32)
    h = 1e-2
    f = lambda z: sessions["decoder"].run(None, {"z": sessions["denoiser"].run(
        None, {**{k: v for k, v in feed.items() if k != "v"}, "x_sigma": z})[0]})[0].astype(np.float64)
    fd = ((f(feed["x_sigma"] + h * u) - f(feed["x_sigma"] - h * u)) / (2 * h) * feed["v"]).sum(axis=(1, 2, 3))
    an = (jtv.astype(np.float64) * u).sum(axis=(1, 2, 3))
    results["vjp_vs_fd_rel_err"] = float(np.abs(fd - an).max() / np.abs(fd).max())
    if results["vjp_vs_fd_rel_err"] > 1e-2:
        errs.append(f"VJP vs finite differences {results['vjp_vs_fd_rel_err']:.3g}")
    for k, v in results.items():
        log(f"[verify] {k}: {v}")
    log(f"[verify] {'OK' if not errs else 'FAILED: ' + '; '.join(errs)}")
    return {"errors": errs, "results": results}


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "zoo", "qg2l")
    sys.exit(1 if verify(d)["errors"] else 0)
