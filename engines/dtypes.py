"""Model dtype names (as configs spell them) to torch dtypes, for every engine."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype '{name}' is not supported ({', '.join(DTYPES)})")
    return DTYPES[name]


def native_dtype(device: str) -> tuple[str, str]:
    """The dtype `auto` means on `device`, and why: bfloat16 where the hardware computes in it natively
    (CUDA compute capability 8+, or a CPU with AVX512-BF16 / AMX), else float16 on older GPUs and float32 on CPUs."""
    import torch

    if device.startswith("cuda"):
        if torch.cuda.is_bf16_supported():
            return "bfloat16", "CUDA device with native bfloat16"
        return "float16", "CUDA device without native bfloat16"
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return "bfloat16", "CPU with native bfloat16 (AVX512-BF16 or AMX)"
    return "float32", "CPU without native bfloat16 instructions"


def resolve_dtype(name: str, device: str) -> tuple[str, str]:
    """A configured dtype name as applied on `device`, and why (`auto` -> `native_dtype`)."""
    if name == "auto":
        return native_dtype(device)
    torch_dtype(name)  # a clear error for an unknown name
    return name, "requested"
