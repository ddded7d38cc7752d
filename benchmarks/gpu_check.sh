#!/usr/bin/env bash
# GPU check for ncstudy's Trainer: epochs/s for MLP-5 (MNIST size) and ResNet-20 (CIFAR-10 size)
# with the full evaluation cadence, bf16 autocast, channels-last, torch.compile, benchmark 1 on
# the GPU, and how many MLP trials share one GPU. Needs only torch and numpy; finishes in under
# 8 minutes (hard cap below); prints a table and writes gpu_check.json into $OUT when set.
#
#   benchmarks/gpu_check.sh                      # on the GPU machine
#   GPU_CHECK_SMOKE=1 benchmarks/gpu_check.sh    # tiny sizes on CPU: proves the script runs
#   GPU_CHECK_SMOKE=1 GPU_CHECK_TORCH_ONLY=1 benchmarks/gpu_check.sh   # ... with pydantic, Ray,
#                                                  MLflow etc. made unimportable
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
# The script keeps to GPU_CHECK_BUDGET_S (default 440 s) by skipping sections; this cap is the
# guarantee. Partial results are in the JSON after every section.
exec timeout --signal=TERM --kill-after=10 470 "$PYTHON" benchmarks/gpu_check.py "$@"
