"""Our C++ kernels for the CPU, built on first use: paged decode attention (`cpu_paged_attention.cpp`) and a
decoder layer's elementwise work (`cpu_layer_ops.cpp`: residual add + RMSNorm, RoPE, SwiGLU), bound in
`cpu_kernels.cpp`.

Decode over gathered K/V spent most of a CPU decode step in `index_select` and SDPA's flash kernel, which
is tuned for long queries, not 1-3 query rows per KV head. The attention kernel reads each K/V row once, in
place, for all query heads of its group, in fp32 (bf16 caches widen exactly); the softmax between its two
halves is torch's. At batch 1 a decode step is mostly small ops: residual add + RMSNorm in bf16 took 8 torch
ops (about 40 us per norm here), RoPE 4; the layer ops do each in one call, rounding as the torch reference
does. Built with `-march=native` into torch's extension cache, named by this CPU's flags so a home shared
across different machines never loads a build for another CPU.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import shutil
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name(name) for name in ("cpu_kernels.cpp", "cpu_paged_attention.cpp",
                                                        "cpu_layer_ops.cpp")]  # fmt: skip


def _cpu_tag() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]


def missing_toolchain() -> str | None:
    """Why the kernel cannot be built here (no C++ compiler or ninja), or None."""
    missing = [tool for tool in ("c++", "ninja") if shutil.which(tool) is None]
    return f"building the C++ kernels needs {' and '.join(missing)} on PATH" if missing else None


@functools.cache
def extension() -> ModuleType:
    """Build (once per machine and source version; torch caches it) and import the extension."""
    reason = missing_toolchain()
    if reason:
        raise ImportError(reason)
    from torch.utils.cpp_extension import load

    return load(
        name=f"infermatrix_cpu_{_cpu_tag()}",
        sources=[str(source) for source in SOURCES],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


@functools.cache
def builds() -> bool:
    """Whether the extension builds and loads here; the first call may build it (tens of seconds, once)."""
    try:
        extension()
    except (ImportError, OSError, RuntimeError) as exc:
        log.warning("own engine on CPU: attention=sdpa and torch layer ops, since the C++ kernels do not build "
                    "here: %s", exc)  # fmt: skip
        return False
    return True


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    new_k: torch.Tensor | None = None,
    new_v: torch.Tensor | None = None,
    slots: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, H, D]; caches [blocks, block_size, KVH, D]; tables [B, max_blocks] int32; lens [B] int32
    (including the new token). With new_k, new_v [B, KVH, D] and int64 slots [B], first stores each new row at
    its slot (-1: not stored). q, new_k and new_v may be views with any token stride. Returns [B, H, D] in the
    cache's dtype."""
    return extension().decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, new_k, new_v, slots)
