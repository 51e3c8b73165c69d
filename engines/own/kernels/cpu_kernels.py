"""Our C++ kernels for the CPU, built on first use: paged attention for decodes (`cpu_decode_attention.cpp`)
and for prefill chunks (`cpu_prefill_attention.cpp`), and a decoder layer's elementwise work
(`cpu_layer_ops.cpp`: residual add + RMSNorm, RoPE, SwiGLU), and a float linear layer over weights
packed in 16-row tiles (`cpu_linear.cpp`; fp32 also as three-term bf16 splits on AMX tiles), bound in
`cpu_kernels.cpp`.

Decode over gathered K/V spent most of a CPU decode step in `index_select` and SDPA's flash kernel, which
is tuned for long queries, not 1-3 query rows per KV head; prefill through SDPA gathered every context and ran
at about 46 GFLOP/s where the linears ran at 400 (bf16, 2 threads). Both kernels read K/V in place from the
paged cache, each row once for all query heads of its group, in fp32 (bf16 caches widen exactly). At batch 1 a
decode step is mostly small ops: residual add + RMSNorm in bf16 took 8 torch ops (about 40 us per norm here),
RoPE 4; the layer ops do each in one call, rounding as the torch reference does. Built with `-march=native`
into torch's extension cache, named by this CPU's flags and the sources, so a home shared across different
machines never loads a build for another CPU and two versions of the sources never share a build folder.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import shutil
import time
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name(name) for name in ("cpu_kernels.cpp", "cpu_decode_attention.cpp",
                                                        "cpu_prefill_attention.cpp", "cpu_layer_ops.cpp",
                                                        "cpu_linear.cpp")]  # fmt: skip
STALE_LOCK_S = 20 * 60


def _build_tag() -> str:
    """This CPU's flags and the sources' bytes, hashed: each build has its own folder, so checkouts at different
    versions (a CI clone beside a working tree) never rebuild over one another."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    digest = hashlib.sha256(f"{platform.machine()} {flags}".encode())
    for source in [*SOURCES, *SOURCES[0].parent.glob("*.h")]:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:10]


def _clear_stale_lock(name: str) -> None:
    """torch waits forever on the lock file of a build that was killed (Ctrl-C during the first build); builds
    take minutes here, so a lock older than STALE_LOCK_S is taken as such a leftover and removed."""
    from torch.utils.cpp_extension import _get_build_directory

    lock = Path(_get_build_directory(name, verbose=False)) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_S:
        log.warning("removing %s, left %.0f s ago by a build that did not finish", lock, age)
        lock.unlink(missing_ok=True)


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

    name = f"infermatrix_cpu_{_build_tag()}"
    _clear_stale_lock(name)
    return load(
        name=name,
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


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal attention of packed new tokens q [T, H, D] (any token stride) over their sequences' contexts,
    cached tokens first: sequence b's rows are q[cu_seqlens_q[b]:cu_seqlens_q[b + 1]], its context
    context_lens[b] tokens, their K/V already in the caches. int32 tables, offsets and lens. Returns [T, H, D]
    in the cache's dtype."""
    return extension().prefill_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale)


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write k, v [T, KVH, D] at their cache slots (our CPU runner never pads, so no slot is -1)."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def packed_linear_available(dtype: torch.dtype) -> bool:
    """Whether `packed_linear` runs here in `dtype`: the extension builds, with AVX-512 (fp32) or AVX512-BF16
    (bf16), or AVX2 + FMA (both), in this CPU (the build's -march)."""
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(dtype)
    return name is not None and builds() and extension().packed_linear_supports(name)


def packed_linear_amx() -> bool:
    """Whether bf16 `packed_linear` runs on AMX tiles here (K a multiple of 32): a CPU with AMX-BF16, a build
    for it, and the OS's leave to use the tile state."""
    return builds() and extension().packed_linear_amx()


def packed_linear_avx2() -> bool:
    """Whether `packed_linear` runs on AVX2 + FMA here (a CPU without AVX-512, such as AMD Zen 2/3)."""
    return builds() and extension().packed_linear_avx2()


def pack_for_linear(weight: torch.Tensor) -> torch.Tensor:
    """W [N, K] (fp32 or bf16) in `packed_linear`'s layout [Np/16, Kp/s, 16, s], s = k per step (bf16: 2,
    fp32: 1): 16 output rows per tile, zero rows up to a multiple of 32 (Np), a zero column for odd K in bf16."""
    n, k = weight.shape
    per = 2 if weight.dtype == torch.bfloat16 else 1
    padded = torch.nn.functional.pad(weight, (0, -k % per, 0, -n % 32))
    return padded.view(padded.shape[0] // 16, 16, padded.shape[1] // per, per).permute(0, 2, 1, 3).contiguous()


def split_in_three(x: torch.Tensor) -> torch.Tensor:
    """fp32 rows [M, K] (K a multiple of 32) as three bf16 terms [3, M, K], x = x0 + x1 + x2, each the
    round-to-nearest of what the terms before left: the split `packed_linear_split` applies to its input."""
    return extension().split_fp32_in_three(x)


def pack_for_linear_split(weight: torch.Tensor) -> torch.Tensor:
    """fp32 W [N, K] (K a multiple of 32) as `packed_linear_split` reads it: its three bf16 terms (split as the
    kernel splits x), each packed by `pack_for_linear`: [3, Np/16, K/2, 16, 2]."""
    if weight.shape[1] % 32:
        raise ValueError(f"the split fp32 linear needs K a multiple of 32, got {weight.shape[1]}")
    return torch.stack([pack_for_linear(term) for term in split_in_three(weight.detach().float().contiguous())])


def packed_linear_split(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """fp32 x [M, K] @ W^T (+ bias) on AMX tiles: x split into three bf16 terms as W was, the six products
    x_i . W_j with i + j <= 2 summed in fp32 (those left out are below 2^-26 of each product). W packed by
    `pack_for_linear_split`; bias fp32, zero-padded as W's rows."""
    return extension().packed_linear_split(x, packed, bias, out_features)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int) -> torch.Tensor:
    """x [M, K] @ W^T (+ bias) -> [M, out_features] in x's dtype, W packed by `pack_for_linear` in that dtype;
    bias fp32, zero-padded as W's rows."""
    return extension().packed_linear(x, packed, bias, out_features)
