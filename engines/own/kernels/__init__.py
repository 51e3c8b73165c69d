"""Paged-attention kernels behind one interface: `store_kv`, `paged_decode_attention`, `paged_prefill_attention`.

`reference` is plain torch (any device); `triton_attention` holds the Triton kernels (CUDA, or the CPU
interpreter with TRITON_INTERPRET=1). Both modules have the same function signatures.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = {"torch": "engines.own.kernels.reference", "triton": "engines.own.kernels.triton_attention"}


def load_backend(name: str) -> ModuleType:
    """The kernel module for an attention backend name ("torch" or "triton"); triton is imported only here."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend '{name}'; choose one of: {', '.join(sorted(BACKENDS))}")
    return importlib.import_module(BACKENDS[name])
