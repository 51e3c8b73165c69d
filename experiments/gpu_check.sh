#!/usr/bin/env bash
# The GPU check of engines/own, one command, under 8 minutes on an H100/H200:
#   1. the GPU tests (pytest -m gpu: CUDA graphs, Triton kernels, max_model_len on CUDA)
#   2. experiments/bench_gpu_own.py: Triton kernel errors in bf16 (and fp32), the decode-attention
#      microbenchmark, copy bandwidth (the roofline), batch-1 decode tok/s on a Llama-3.1-8B-shaped model with
#      its bandwidth utilisation, CUDA graphs vs eager, own vs HF offline
# Needs only torch, triton and transformers (the GPU image); pytest too, or a folder holding it in
# $GPU_CHECK_PYLIBS (default .gpu_deps, made with `pip install --target .gpu_deps pytest`).
# Without CUDA it runs what a CPU can (Triton kernels in the interpreter, the benchmark at a tiny shape)
# and prints SKIPPED for each GPU part, so the script itself is tested anywhere.
#
#   bash experiments/gpu_check.sh [extra bench_gpu_own.py arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
pylibs=${GPU_CHECK_PYLIBS:-.gpu_deps}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE
started=$(date +%s)
status=0
cuda=$("$py" -c "import torch; print(int(torch.cuda.is_available()))") || { echo "gpu_check: torch is not importable with $py (set PYTHON)"; exit 1; }
"$py" - <<'PY'
import torch, transformers
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = "not installed"
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"gpu_check: torch {torch.__version__}  triton {tv}  transformers {transformers.__version__}  device {gpu}")
PY

echo "== GPU tests"
"$py" -c "import pytest" 2>/dev/null || export PYTHONPATH="$PYTHONPATH:$PWD/$pylibs"  # only when the image lacks it
if ! "$py" -c "import pytest" 2>/dev/null; then
    echo "pytest is not importable (not in the image nor in $pylibs): GPU tests NOT RUN"
    status=1
elif [ "$cuda" = 1 ]; then
    timeout 120 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/own tests/test_max_model_len.py || status=1
else
    echo "SKIPPED (no CUDA device): GPU tests; running the Triton kernel tests in the interpreter instead"
    TRITON_INTERPRET=1 timeout 600 "$py" -m pytest -q -p no:cacheprovider \
        "tests/own/test_kernels.py::TestTritonMatchesReference" || status=1
fi

echo "== benchmark"
if [ "$cuda" = 1 ]; then
    timeout 330 "$py" -u experiments/bench_gpu_own.py "$@" || status=1
else
    TRITON_INTERPRET=1 timeout 600 "$py" -u experiments/bench_gpu_own.py "$@" || status=1
fi
echo "gpu_check: done in $(( $(date +%s) - started )) s, status $status"
exit $status
