"""Manifest helpers shared by the l96 and qg2l pipelines: a minimal TOML writer (scalars, lists,
nested tables, arrays of tables; every key quoted unless bare) and the training code's commit."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))


def git_commit(paths: str, tag: str) -> str:
    """HEAD, with "-dirty(<tag>)" when `paths` (a git pathspec) has uncommitted changes."""
    try:
        c = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", paths], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return c + (f"-dirty({tag})" if dirty else "")
    except Exception:
        return "unknown"


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if v is None:
        return '"none"'
    raise TypeError(type(v))


def _key(k):
    """One key, quoted unless bare (names like "val-sat-rtps0.3" contain a dot)."""
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def toml_dump(d: dict, prefix: str = "") -> str:
    lines, tables, arrays = [], [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            arrays.append((k, v))
        else:
            lines.append(f"{_key(k)} = {toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        out += f"\n[{name}]\n" + toml_dump(v, name).lstrip("\n")
    for k, v in arrays:
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        for item in v:
            out += f"\n[[{name}]]\n" + toml_dump(item, name).lstrip("\n")
    return out
