#!/usr/bin/env bash
# Create or refresh .venv with everything kdistill needs (the project's own dependency list).
#   scripts/setup.sh         what a run needs: kdistill, PyTorch, the `onnx` extra (the demo, `make setup`)
#   scripts/setup.sh text    + the `text` extra (transformers: the `arch: transformers` language-model configs)
#   scripts/setup.sh tests   + the `dev` and `text` extras (pytest, ruff, hypothesis, trl: `make test`)
# The demo's set-up leaves the test tools out: trl pulls in datasets, pyarrow and accelerate, ~15 s of a fresh
# set-up on 2 cores that a first run never uses.
# Idempotent: a second call with an unchanged pyproject.toml does nothing and takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") extras="" ;;
  text) extras="text" ;;
  tests) extras="dev,text" ;;
  *) echo "scripts/setup.sh: unknown profile '$1'; give nothing (a run), 'text' or 'tests'" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
stamp=.venv/.kdistill-setup
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # --no-compile: pip would byte-compile all ~16,000 files of the dependencies one by one (80 of the 120 s of a
  # fresh set-up on 2 cores); kdistill uses a few of them, compiled below.
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # Pin the version first: on machines with a local CPU wheel this takes it instead of pulling a
    # multi-GB CUDA build. Elsewhere, fall back to the range in pyproject.toml.
    .venv/bin/pip install -q --no-compile "torch==${KDISTILL_TORCH_VERSION:-2.13.0}" ||
      .venv/bin/pip install -q --no-compile "torch>=2.2"
  fi
  # Compile what a run imports, once, by importing it with bytecode writing on (Python would do the same at the
  # first run unless PYTHONDONTWRITEBYTECODE is set, as on some CI machines: then every process would compile
  # torch again, ~6 s each). PyTorch's part (~9 s) needs only torch: it runs on the second core while pip, which
  # uses one, installs the rest; best effort (pip may replace a file it reads), the full pass below redoes what
  # it missed.
  env -u PYTHONDONTWRITEBYTECODE .venv/bin/python scripts/precompile.py --torch >/dev/null 2>&1 &
  warm=$!
  .venv/bin/pip install -q --no-compile -e ".[onnx]"
  wait "$warm" || true
  env -u PYTHONDONTWRITEBYTECODE .venv/bin/python scripts/precompile.py
  rm -f .venv/.kdistill-setup-*  # the extras were installed against the previous dependency list
  echo "$want" > "$stamp"
fi
[ -n "$extras" ] || exit 0
stamp=.venv/.kdistill-setup-${1}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --no-compile -e ".[onnx,$extras]"
  # The libraries only these users load (transformers' models, onnxruntime, hypothesis: ~10 s once).
  env -u PYTHONDONTWRITEBYTECODE .venv/bin/python scripts/precompile.py --tests
  echo "$want" > "$stamp"
fi
