#!/usr/bin/env bash
# CI: the light runtime. A fresh venv from requirements.txt alone (no torch, diffusers or transformers), then the
# tests marked `light`: the app, CLI and engine on the built-in model's shipped ONNX graphs, and the clear
# messages for what needs PyTorch. Called from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ATTUNE_LIGHT_VENV:-/tmp/attune-light-venv}"
python3 -m venv --clear "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt pytest pytest-timeout
for heavy in torch diffusers transformers; do
  if "$VENV/bin/python" -c "import $heavy" 2>/dev/null; then
    echo "light venv: $heavy is installed, but requirements.txt must not pull it in" >&2
    exit 1
  fi
done
"$VENV/bin/python" -m pytest -q -m light tests/test_light.py tests/test_shipped_onnx.py tests/test_ort_cache.py
