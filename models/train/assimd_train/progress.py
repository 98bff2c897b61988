"""Progress bars for the pipeline's long loops (training-data generation: one `assimd experiment`
run per item, minutes each).

tqdm when it is installed (requirements.txt), drawn on stderr only when stderr is a terminal
(tqdm's ``disable=None``), so logs and CI see plain lines. ``write`` prints a log line through the
bar (or plainly without tqdm)."""
from __future__ import annotations

import sys

try:
    from tqdm import tqdm
except ImportError:  # the pipeline runs without it, only without bars
    tqdm = None


def bar(items, desc: str, unit: str = "run"):
    """Iterate over ``items`` with a progress bar when stderr is a terminal."""
    items = list(items)
    if tqdm is None:
        return items
    return tqdm(items, desc=desc, unit=unit, disable=None, file=sys.stderr, dynamic_ncols=True)


def write(msg: str) -> None:
    """Print a log line to stdout without breaking a bar."""
    if tqdm is None:
        print(msg, flush=True)
    else:
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()
