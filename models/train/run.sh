#!/usr/bin/env bash
# Reproduce the score-model bundles of one testbed from scratch:
#   models/train/run.sh l96
#   models/train/run.sh qg2l          (python -m assimd_train.qg2l: the latent bundle models/zoo/qg2l)
# 1. creates the training venv if missing ($VENV, default /work/venv-train, else models/train/.venv),
# 2. builds the Rust binary (cargo build --release; skip with ASSIMD_BIN=/path/to/assimd),
# 3. records training triples with `assimd experiment --record` (models/train/data/<testbed>/, cached),
# 4. trains, evaluates, exports ONNX + fixtures and writes manifest.toml into models/zoo/<bundle>/.
# Extra arguments go to `python -m assimd_train` (e.g. --iters 5000 --bundles l96).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TESTBED="${1:?usage: run.sh l96|qg2l [python -m assimd_train options]}"; shift
if [ -z "${VENV:-}" ]; then
  if [ -x /work/venv-train/bin/python ]; then VENV=/work/venv-train; else VENV="$HERE/.venv"; fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -r "$HERE/requirements.txt"
fi
if [ -z "${ASSIMD_BIN:-}" ]; then
  (cd "$REPO" && cargo build --release)
  ASSIMD_BIN="$REPO/target/release/assimd"
fi
cd "$HERE"
if [ "$TESTBED" = qg2l ]; then   # the latent bundle models/zoo/qg2l (assimd_train/qg2l.py)
  exec nice -n 5 "$VENV/bin/python" -m assimd_train.qg2l --binary "$ASSIMD_BIN" "$@"
fi
exec "$VENV/bin/python" -m assimd_train "$TESTBED" --binary "$ASSIMD_BIN" "$@"
