"""Model dtype names (as configs spell them) to torch dtypes, for every engine."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype '{name}' is not supported ({', '.join(DTYPES)})")
    return DTYPES[name]
