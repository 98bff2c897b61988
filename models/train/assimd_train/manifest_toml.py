"""Writing a bundle's manifest.toml (read by models/src/bundle/manifest.rs) with tomli_w, and the commit
of the training code recorded in it.

TOML has no null: a key whose value is None is left out (e.g. a run without --localization-km has no
`localization_km`); the Rust `Manifest` reads none of the keys that may be None. numpy scalars become
Python numbers and tuples lists; a None inside a list is an error.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import tomli_w

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


def plain(v):
    """`v` with only the types tomli_w writes (module docstring)."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        if any(x is None for x in v):
            raise ValueError(f"None in a list cannot be written to TOML: {v!r}")
        return [plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return plain(v.tolist())
    return v


def dumps(table: dict, header: str = "") -> str:
    """The TOML text of `table`, after a comment line `# <header>` when given."""
    return (f"# {header}\n" if header else "") + tomli_w.dumps(plain(table))
