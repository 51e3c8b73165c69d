"""Other GGUF quantizations of a model (engine.gguf_type): llama.cpp's own quantizer, run once and cached.

The embedded SmolLM2 GGUF is Q4_1, so any other type made from it is a requantization (`allow_requantize`):
its speed and size are those of the new type, but its quality can be no better than Q4_1's, since the
weights it starts from already carry Q4_1's rounding. Say so beside any accuracy it is given.
"""

from __future__ import annotations

import os
from pathlib import Path

from engines.base import UnsupportedTechnique


def ftype_of(name: str) -> int:
    import llama_cpp

    attr = f"LLAMA_FTYPE_MOSTLY_{name.upper()}" if name.upper() not in ("F32", "ALL_F32") else "LLAMA_FTYPE_ALL_F32"
    if not hasattr(llama_cpp, attr):
        known = sorted(a.removeprefix("LLAMA_FTYPE_MOSTLY_") for a in dir(llama_cpp) if a.startswith("LLAMA_FTYPE_MOSTLY_"))
        raise UnsupportedTechnique(f"engine 'llamacpp': gguf_type={name} is not a llama.cpp type; known: {', '.join(known)}")
    return int(getattr(llama_cpp, attr))


def requantized(source: Path, name: str, threads: int) -> Path:
    """`source` requantized to type `name`, cached beside the other converted models."""
    import llama_cpp

    from harness.models import cache_root, file_sha256  # noqa: PLC0415 (harness helpers; no harness config needed)

    target = cache_root() / "models" / f"{source.stem}-{file_sha256(source)[:12]}-{name.upper()}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype_of(name)
    params.allow_requantize = True
    params.nthread = threads
    staging = target.with_suffix(f".partial-{os.getpid()}")
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(staging).encode(), params)
    if code != 0 or not staging.is_file():
        staging.unlink(missing_ok=True)
        raise UnsupportedTechnique(f"engine 'llamacpp': llama.cpp could not quantize {source.name} to {name} (code {code})")
    os.replace(staging, target)
    return target
