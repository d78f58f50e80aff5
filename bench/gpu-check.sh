#!/usr/bin/env bash
# The GPU checks of issue 12, as one script for a GPU machine that has Python and torch
# with CUDA but no package index (see ../shared/notes/gpu-here.md):
#
#   make gpu-wheels                          # here: py3.12 wheels into build/gpu-wheels
#   bash bench/gpu-check.sh                  # there (carry build/gpu-wheels along)
#
# It installs the carried wheels into build/gpu-site (nothing system-wide), puts them
# and this checkout on PYTHONPATH (Dask's worker processes inherit it), and runs
# `make test-gpu` (tests/gpu, then bench/bench_training.py --device cuda). With $OUT
# set, the output is also written to $OUT/gpu-check.log.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${GPU_PYTHON:-python3}
SITE=build/gpu-site
if [ -d build/gpu-wheels ]; then
  "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" build/gpu-wheels/*.whl
fi
export PYTHONPATH="$PWD:$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$PWD/$SITE/bin:$PATH"
log=${OUT:+$OUT/gpu-check.log}
{
  nvidia-smi -L || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())"
  make --no-print-directory test-gpu GPU_PYTHON="$PY" GPU_BENCH_ARGS="${GPU_BENCH_ARGS:-}"
} 2>&1 | tee ${log:-/dev/null}
exit "${PIPESTATUS[0]}"
