#!/usr/bin/env python3
"""Issue 13's acceptance measurements of quality control, with `assimd experiment`.

Usage: scripts/qc_acceptance.py [--bin target/release/assimd] [--out qc-acceptance] [--seeds 1 2 3 4 5]

For l96 `full` (1,000 cycles) and qg2l stations+satellite (300 cycles, burn-in 50), tuned LETKF
files, on the given test seeds:
- clean, `--gross-errors 0.02`, and `--gross-errors 0.02 --qc off`: mean analysis RMSE, paired
  relative difference with its 95 % t-interval; the background check's rejections on the clean
  runs (all false) against the two-sided Gaussian rate 2Φ(−k);
- `--bias STATION:3:100`: cycles from 100 to the blacklisting, and cycles after it until the
  20-cycle running-mean RMSE is within 10 % of the clean run's;
- `--corrupt-at C`: the flagged cycle and the cycles until the 20-cycle running mean (of the cycles
  after the corruption) is within 10 % of the clean run's;
- blacklistings in clean 1,000-cycle runs.
Every run's JSON summary and per-cycle history are kept under --out; the tables go to
--out/tables.md. Runs one experiment at a time (they use both cores where they can).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys

T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

TESTBEDS = {
    "l96": dict(file="configs/experiments/l96-full-letkf.toml", cycles=1000, burn=100, bias="S04", corrupt=300, long=1000),
    "qg2l": dict(file="configs/experiments/qg2l-stations+satellite-letkf.toml", cycles=300, burn=50, bias="QS004", corrupt=150, long=1000),
}


def run(args, out, name, extra, cycles, burn, history=False):
    path = os.path.join(out, name + ".json")
    hist = os.path.join(out, name + ".history.jsonl")
    if os.path.exists(path) and (not history or os.path.exists(hist)):
        with open(path) as f:
            return json.load(f), (load_history(hist) if history else None)
    cmd = [args.bin, "experiment", "--config", extra[0], "--cycles", str(cycles), "--burn-in", str(burn), "--json"] + extra[1:]
    if history:
        cmd += ["--history", hist]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        res = {"error": p.stderr.strip().splitlines()[0] if p.stderr.strip() else f"exit {p.returncode}"}
    else:
        res = json.loads(p.stdout)
    with open(path, "w") as f:
        json.dump(res, f)
    print(name, res.get("rmse_a", res.get("error")), flush=True)
    return res, (load_history(hist) if history and os.path.exists(hist) else None)


def load_history(path):
    with open(path) as f:
        return [json.loads(l)["rmse_a_truth"] for l in f if l.strip()]


def ci(xs):
    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, T975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def window(h, end, start=0):
    """Mean of h over the 20 cycles ending at index `end` (0-based), not before `start`."""
    lo = max(start, end - 19)
    return statistics.mean(h[lo : end + 1])


def back_within(h, clean, first, start=None):
    """First index >= first at which the 20-cycle running mean of h (not before start) is within 10 % of clean's."""
    start = first if start is None else start
    for i in range(first, len(h)):
        if window(h, i, start) <= 1.1 * window(clean, i, start):
            return i
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/assimd")
    ap.add_argument("--out", default="qc-acceptance")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--qg2l-seeds", type=int, nargs="+", default=None, help="qg2l's seeds [default: --seeds]")
    ap.add_argument("--testbeds", nargs="+", default=["l96", "qg2l"])
    ap.add_argument("--qg2l-long", type=int, default=1, help="qg2l seeds with a clean 1,000-cycle run (0: none)")
    ap.add_argument("--k", type=float, default=5.0, help="the background check's k (qc.*.k) of the binary's defaults")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lines = []
    phik = math.erfc(args.k / math.sqrt(2))  # 2Φ(−k)
    for tb in args.testbeds:
        c = TESTBEDS[tb]
        f, n, b = c["file"], c["cycles"], c["burn"]
        seeds = args.qg2l_seeds if tb == "qg2l" and args.qg2l_seeds else args.seeds
        rows, screened, rejected = [], 0, 0
        for s in seeds:
            seed = ["--seed", str(s)]
            clean, hc = run(args, args.out, f"{tb}-s{s}-clean", [f] + seed, n, 0, history=True)
            gross, _ = run(args, args.out, f"{tb}-s{s}-gross", [f] + seed + ["--gross-errors", "0.02"], n, b)
            off, _ = run(args, args.out, f"{tb}-s{s}-gross-qcoff", [f] + seed + ["--gross-errors", "0.02", "--qc", "off"], n, b)
            rc = statistics.mean(hc[b:])
            for m in ("station", "satellite"):
                screened += clean["qc"][m]["screened"]
                rejected += clean["qc"][m]["background_check"]
            rows.append((s, rc, gross, off, clean))
        lines.append(f"\n### {tb}: gross errors 2 % ({n} cycles, burn-in {b}, seeds {seeds})\n")
        lines.append("| seed | clean RMSE | gross, QC on | Δ | gross, QC off | Δ | ingest rejections (QC on) | background-check rejections | blacklistings (QC on) |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        d_on, d_off = [], []
        for s, rc, g, o, clean in rows:
            don = (g["rmse_a"] - rc) / rc if "rmse_a" in g else float("nan")
            doff = (o["rmse_a"] - rc) / rc if "rmse_a" in o else float("nan")
            d_on.append(don)
            if "rmse_a" in o:
                d_off.append(doff)
            bg = sum(g["qc"][m]["background_check"] for m in ("station", "satellite")) if "qc" in g else "-"
            lines.append(
                f"| {s} | {rc:.4f} | {g.get('rmse_a', float('nan')):.4f} | {don:+.1%} | {o.get('rmse_a', o.get('error'))} | {doff:+.1%} | "
                f"{g.get('rejected_ingest')} | {bg} | {g.get('blacklistings')} |"
            )
        m, h = ci(d_on)
        lines.append(f"\nQC on: mean paired (gross − clean)/clean {m:+.2%} ± {h:.2%} (95 % t, n = {len(d_on)}).")
        if d_off:
            m, h = ci(d_off)
            lines.append(f"QC off: {m:+.2%} ± {h:.2%} (n = {len(d_off)} that finished).")
        rate = rejected / max(screened, 1)
        lines.append(f"False rejections on the clean runs: {rejected} of {screened} = {rate:.2e}; 2Φ(−{args.k:g}) = {phik:.2e} ({rate / phik:.2f}×; target ≤ 3×).")
        # Monitoring.
        lines.append(f"\n### {tb}: a +3 σ_o drift of {c['bias']} from cycle 100 ({n} cycles)\n")
        lines.append("| seed | blacklisted at | cycles from 100 | RMSE back within 10 % (cycles after the blacklisting) | worst 20-cycle ratio to clean | mean RMSE ratio from 100 cycles after the blacklisting to the end | other blacklistings |")
        lines.append("|---|---|---|---|---|---|---|")
        for s, rc, g, o, clean in rows:
            _, hc = run(args, args.out, f"{tb}-s{s}-clean", [f, "--seed", str(s)], n, 0, history=True)
            res, hb = run(args, args.out, f"{tb}-s{s}-bias", [f, "--seed", str(s), "--bias", f"{c['bias']}:3:100"], n, 0, history=True)
            bl = [x for x in res.get("blacklistings", []) if x[1] == c["bias"] and x[0] >= 100]
            others = [x for x in res.get("blacklistings", []) if x[1] != c["bias"]]
            if bl and hb:
                k = bl[0][0]
                back = back_within(hb, hc, k, start=0)
                worst = max(window(hb, i) / window(hc, i) for i in range(119, len(hb)))
                late = statistics.mean(hb[k + 100 :]) / statistics.mean(hc[k + 100 :]) if len(hb) > k + 120 else float("nan")
                lines.append(f"| {s} | {k} | {k - 100} | {None if back is None else back - k} | {worst:.2f} | {late:.3f} | {others} |")
            else:
                lines.append(f"| {s} | never | - | - | - | - | {others} |")
        # Divergence.
        lines.append(f"\n### {tb}: state corrupted after cycle {c['corrupt']}'s analysis\n")
        lines.append("| seed | flagged | RMSE at the corrupted cycle | RMSE the cycle after | clean RMSE there | cycles until the 20-cycle mean after the corruption is within 10 % of clean |")
        lines.append("|---|---|---|---|---|---|")
        for s, rc, g, o, clean in rows:
            _, hc = run(args, args.out, f"{tb}-s{s}-clean", [f, "--seed", str(s)], n, 0, history=True)
            res, hd = run(args, args.out, f"{tb}-s{s}-corrupt", [f, "--seed", str(s), "--corrupt-at", str(c["corrupt"])], n, 0, history=True)
            k = c["corrupt"]  # history index k-1 is cycle k
            if hd and len(hd) > k:
                back = back_within(hd, hc, k, start=k)
                lines.append(f"| {s} | {res.get('divergences')} | {hd[k - 1]:.1f} | {hd[k]:.3f} | {hc[k]:.3f} | {None if back is None else back - k + 1} |")
            else:
                lines.append(f"| {s} | {res.get('error', res.get('divergences'))} | - | - | - | - |")
        # Long clean runs.
        lines.append(f"\n### {tb}: clean runs of {c['long']} cycles\n")
        for s in seeds[: (5 if tb == "l96" else args.qg2l_long)]:
            res, _ = run(args, args.out, f"{tb}-s{s}-long", [f, "--seed", str(s)], c["long"], 100)
            lines.append(f"- seed {s}: blacklistings {res.get('blacklistings')}, divergences {res.get('divergences')}, RMSE {res.get('rmse_a')}")
        with open(os.path.join(args.out, "tables.md"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
