#!/usr/bin/env bash
# Install llama-cpp-python into a Python environment, building its wheel once and caching it.
#
#   engines/llamacpp/install.sh [PYTHON]
#
# PYTHON defaults to .venv/bin/python. llama-cpp-python ships no prebuilt wheel for this platform: the
# first run compiles llama.cpp from source (about 15 minutes on 2 cores) into
# ${INFERMATRIX_CACHE:-$HOME/.cache/infermatrix}/wheels/, and every later run installs that wheel offline.
# Set LLAMACPP_CMAKE_ARGS to override the CMake flags (default: a native CPU build, no GPU backends).
set -euo pipefail

PYTHON="${1:-.venv/bin/python}"
VERSION="0.3.36"
CACHE="${INFERMATRIX_CACHE:-$HOME/.cache/infermatrix}/wheels"
mkdir -p "$CACHE"

if [ ! -x "$PYTHON" ] && ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "install.sh: no python at $PYTHON" >&2
    exit 2
fi

# The wheel is tagged py3-none-<platform> (it loads llama.cpp's shared libraries through ctypes), so one wheel
# serves every Python 3 of this platform; pip refuses it below if the platform does not match.
shopt -s nullglob
matches=("$CACHE"/llama_cpp_python-"$VERSION"-*.whl)
shopt -u nullglob

if [ "${#matches[@]}" -eq 0 ]; then
    echo "install.sh: building llama-cpp-python==$VERSION (about 15 minutes on 2 cores)..." >&2
    start=$(date +%s)
    # no AMX code (explicit -mno-* win over -march=native): 0.3.36's native build segfaulted in llama_decode on a
    # Xeon with AMX (tests/peers/test_llamacpp.py, 2026-12-01)
    no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_ARGS="${LLAMACPP_CMAKE_ARGS:--DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx' -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$PYTHON" -m pip wheel --no-deps --no-cache-dir --wheel-dir "$CACHE" "llama-cpp-python==$VERSION"
    echo "install.sh: built in $(( $(date +%s) - start )) s: $(ls -l "$CACHE"/llama_cpp_python-"$VERSION"-*.whl)" >&2
else
    echo "install.sh: using cached ${matches[0]}" >&2
fi

# Its pure-Python dependencies come from the index as usual; the wheel itself only from the cache. The second
# line is its [server] extra: `python -m llama_cpp.server` (llama.cpp's OpenAI-compatible server, which
# tests/peers/test_openai.py drives through engine=openai whenever llama_cpp is importable) needs it.
"$PYTHON" -m pip install "numpy>=1.20.0" "typing-extensions>=4.5.0" "diskcache>=5.6.1" "jinja2>=2.11.3" \
    "uvicorn>=0.22.0" "fastapi>=0.100.0" "pydantic-settings>=2.0.1" "sse-starlette>=1.6.1" \
    "starlette-context>=0.3.6,<0.4" "PyYAML>=5.1"
"$PYTHON" -m pip install --no-index --find-links "$CACHE" "llama-cpp-python==$VERSION"
"$PYTHON" -c 'import llama_cpp; print("llama_cpp", llama_cpp.__version__)'
