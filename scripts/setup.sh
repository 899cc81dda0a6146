#!/usr/bin/env bash
# Create or refresh .venv with everything kdistill needs (the project's own dependency list).
# Idempotent: a second call with an unchanged pyproject.toml does nothing and takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.kdistill-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # --no-compile: pip would byte-compile all ~16,000 files of the dependencies one by one (80 of the 120 s of a
  # fresh set-up on 2 cores); kdistill uses a few of them, compiled below.
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # Pin the version first: on machines with a local CPU wheel this takes it instead of pulling a
    # multi-GB CUDA build. Elsewhere, fall back to the range in pyproject.toml.
    .venv/bin/pip install -q --no-compile "torch==${KDISTILL_TORCH_VERSION:-2.13.0}" ||
      .venv/bin/pip install -q --no-compile "torch>=2.2"
  fi
  .venv/bin/pip install -q --no-compile -e ".[dev,onnx,text]"
  # Compile what a run imports, once, by importing it with bytecode writing on (Python would do the same at the
  # first run unless PYTHONDONTWRITEBYTECODE is set, as on some CI machines: then every process would compile
  # torch again, ~6 s each).
  env -u PYTHONDONTWRITEBYTECODE .venv/bin/python scripts/precompile.py
  rm -f .venv/.kdistill-setup-tests
  echo "$want" > "$stamp"
fi
# `scripts/setup.sh tests` (make test): the libraries only the tests load too (transformers' models, onnxruntime,
# hypothesis: ~10 s once), left out of the demo's set-up.
if [ "${1:-}" = tests ] && [ ! -f .venv/.kdistill-setup-tests ]; then
  env -u PYTHONDONTWRITEBYTECODE .venv/bin/python scripts/precompile.py --tests
  touch .venv/.kdistill-setup-tests
fi
