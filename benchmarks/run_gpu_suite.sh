#!/usr/bin/env bash
# The GPU benchmark suite, sized for a short lease (one H100/H200, ~15 min of device time in all):
# prints the machine and library versions, then runs every benchmark of train_throughput.py in one
# process (402 s on an H200 on 2026-11-27, with the FlauBERT CUDA-graph and compiled image variants
# skipped by the budget; benchmarks and variants not started within --time-budget seconds are skipped, and a failing
# benchmark prints its traceback and the others still run). Results: $OUT (the device tool's
# return folder) or benchmarks/results/, as <device>-<date>.json plus suite.log.
#
#   bash benchmarks/run_gpu_suite.sh                  # defaults
#   bash benchmarks/run_gpu_suite.sh --compile        # extra flags go to train_throughput.py
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/suite.log"
PY="${PYTHON:-$(command -v python || command -v python3)}"

{
  echo "== $(date -Is)  host $(hostname)  repo $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi || echo "(nvidia-smi unavailable)"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null || true
  echo "== python: $PY"
  "$PY" - <<'PYEOF' || echo "(version probe failed)"
import importlib, os, platform, sys
print("python", platform.python_version(), "| cpus", os.cpu_count())
for m in ("torch", "transformers", "timm", "numpy", "PIL", "tqdm"):
    try:
        print(f"{m:13s}", importlib.import_module(m).__version__)
    except Exception as e:
        print(f"{m:13s} MISSING ({type(e).__name__}: {e})")
try:
    import torch
    print("cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version(),
          "| available", torch.cuda.is_available(),
          "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
          "| bf16", torch.cuda.is_bf16_supported() if torch.cuda.is_available() else "-")
except Exception as e:
    print("torch probe failed:", e)
PYEOF
} 2>&1 | tee "$LOG"

# --time-budget: the last benchmark must *start* by then; the outer timeout is the hard stop that
# keeps a hung run from eating the lease (partial results are saved after every benchmark).
# Variants: text at the thesis batch (32): eager, eager with in-process collation (no loader worker
# IPC), CUDA graphs (compile mode reduce-overhead, lengths padded to multiples of 32), and eager at
# batch 128 for reference; a 20-step profile of the eager loop. SE-ResNeXt-50 at batch 64 and 256,
# eager, and compiled at 256. Later flags override these.
timeout --signal=INT --kill-after=20 "${SUITE_TIMEOUT:-500}" \
  "$PY" benchmarks/train_throughput.py --all --out-dir "$OUT_DIR" --time-budget "${TIME_BUDGET:-400}" \
  --text-variants eager,eager-w0,cudagraphs,eager-b128 --profile-steps 20 --image-variants 64,256,256:default \
  "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "== train_throughput exit code $rc ($(date -Is))" | tee -a "$LOG"
ls -la "$OUT_DIR" | tee -a "$LOG"
exit "$rc"
