"""Our C++ paged decode attention for CPU (`cpu_paged_attention.cpp`), built on first use.

Decode over gathered K/V spent most of a CPU decode step in `index_select` and SDPA's flash kernel, which
is tuned for long queries, not 1-3 query rows per KV head. This kernel reads each K/V row once, in place,
for all query heads of its group, in fp32 (bf16 caches widen exactly); the softmax between its two halves
is torch's. Built with `-march=native` into torch's extension cache, named by this CPU's flags so a home
shared across different machines never loads a build for another CPU.
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
from torch.profiler import record_function

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("cpu_paged_attention.cpp")


def _cpu_tag() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]


def missing_toolchain() -> str | None:
    """Why the kernel cannot be built here (no C++ compiler or ninja), or None."""
    missing = [tool for tool in ("c++", "ninja") if shutil.which(tool) is None]
    return f"building the C++ attention kernel needs {' and '.join(missing)} on PATH" if missing else None


@functools.cache
def extension() -> ModuleType:
    """Build (once per machine and source version; torch caches it) and import the extension."""
    reason = missing_toolchain()
    if reason:
        raise ImportError(reason)
    from torch.utils.cpp_extension import load

    return load(
        name=f"infermatrix_cpu_paged_{_cpu_tag()}",
        sources=[str(SOURCE)],
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
        log.warning("own engine on CPU: attention=sdpa, since the C++ kernel does not build here: %s", exc)
        return False
    return True


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [B, H, D]; caches [blocks, block_size, KVH, D]; tables [B, max_blocks] int32; lens [B] int32
    (including the new token). Returns [B, H, D] in the cache's dtype."""
    ext = extension()
    with record_function("infermatrix::cpp_decode_scores"):  # named in profiles (not an aten op)
        scores = ext.decode_scores(q, k_cache, block_tables, context_lens, scale)
    probs = scores.softmax(dim=-1)
    with record_function("infermatrix::cpp_decode_values"):
        return ext.decode_values(probs, v_cache, block_tables, context_lens)
