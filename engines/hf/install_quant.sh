#!/usr/bin/env bash
# Installs the quantization libraries of engine=hf (technique.quant = torchao_int8 | nf4 | int8 | gptq | awq) into
# their own virtual environment, cached outside the repository: they pin torch and transformers ranges of their
# own. Prints the environment's python at the end (the value for engine.python).
#   bash engines/hf/install_quant.sh
# What is installed and why (see engines/hf/README_quant.md):
#   torchao        int8 weight-only on CPU (no CPU int4 path in 0.18)
#   bitsandbytes   nf4 Linear4bit and Linear8bitLt; 0.50 has a CPU backend
#   gptqmodel      GPTQ quantization and loading (AutoGPTQ fails to import with transformers 5, needs CUDA)
#   llmcompressor  AWQ and W8A8 (AutoAWQ is deprecated by its authors, adopted into llm-compressor)
set -euo pipefail

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
CACHE="${INFERMATRIX_CACHE:-$HOME/.cache/infermatrix}"
VENV="$CACHE/venvs/hf-quant"
PY="$VENV/bin/python"
BASE_PYTHON="${BASE_PYTHON:-python3}"

if [ -x "$PY" ] && "$PY" -c "import torchao, bitsandbytes, gptqmodel, optimum, llmcompressor" >/dev/null 2>&1; then
    echo "quantization libraries already installed in $VENV" >&2
    echo "$PY"
    exit 0
fi
start=$(date +%s)
mkdir -p "$CACHE/venvs"
[ -x "$PY" ] || "$BASE_PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
# torch first, the CPU wheel: the libraries below would otherwise pull a CUDA build
"$PY" -m pip install -q "torch==$TORCH_VERSION"
"$PY" -m pip install -q "transformers>=5,<6" safetensors accelerate psutil
# each library alone, so one that fails to install does not take the others with it
# optimum: transformers 5.17 asks for it to load a GPTQ checkpoint ("Loading a GPTQ quantized model requires optimum")
for pkg in torchao bitsandbytes "gptqmodel==7.6.0" optimum llmcompressor; do
    "$PY" -m pip install -q "$pkg" "torch==$TORCH_VERSION" || echo "note: $pkg did not install" >&2
done
"$PY" - <<'PY' >&2 || true
import importlib
for name in ("torch", "transformers", "torchao", "bitsandbytes", "gptqmodel", "llmcompressor"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "FAILED:", type(exc).__name__, exc)
PY
echo "installed in $(( $(date +%s) - start )) s" >&2
echo "$PY"
