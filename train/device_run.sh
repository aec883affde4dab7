#!/usr/bin/env bash
# The single GPU-device call that trained the committed weights (run from the repo root, with .whl carried):
# install the carried diffusers wheel, train with grounding plus a no-grounding ablation in a second process,
# and leave tars, logs and (if present) the GPU PyTorch timing under $OUT. Rehearse with OUT=/tmp/x PRESET=smoke.
set -o pipefail
OUT=${OUT:?set OUT}
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
timeout "${TRAIN_TIMEOUT:-520}" python3 -m train.tiny_scenes --out /tmp/ts/tiny-scenes --work /tmp/ts/work \
  --tar "$OUT/tiny-scenes.tar" --ablation-out /tmp/ts/tiny-scenes-nogrounding --time-limit "${TIME_LIMIT:-450}" \
  ${PRESET:+--preset $PRESET} 2>&1 | tee "$OUT/train.log"
cp /tmp/ts/work/ablation.log "$OUT/ablation.log" 2>/dev/null
if [ -f bench/gpu_torch.py ]; then timeout 75 python3 -m bench.gpu_torch --json > "$OUT/gpu_torch.json" 2>&1; fi
ls -la "$OUT"
