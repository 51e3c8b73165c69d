"""What a cell that asked for technique.quant records beside its speed: the weights it ran with and their quality.

`quantization`: method, bits, group size, bytes of weights on the device, kernel, from the engine's stats (each
engine reports its own: a dict from engines that quantize, llama.cpp's GGUF type name, or parameter bytes).
`perplexity`: harness/perplexity.py on a fixed real text, so a faster cell that got worse shows it.
"""

from __future__ import annotations

from typing import Any

from engines.base import Engine, ModelSpec
from harness.perplexity import measure_perplexity


def quantization_record(applied: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    reported = stats.get("quantization")
    if isinstance(reported, dict):
        return {**reported, "method": applied.get("quant")}
    return {
        "method": applied.get("quant"),
        "format": reported,  # e.g. llama.cpp's "Q4_1"
        "group_size": applied.get("quant_group_size"),
        "weight_bytes": stats.get("weight_bytes", stats.get("param_bytes")),
    }


def quality_block(engine: Engine, spec: ModelSpec, applied: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    """{"quantization": ..., "perplexity": ...}; a perplexity that fails is recorded with its error, and the
    speed measured before it is kept."""
    block: dict[str, Any] = {"quantization": quantization_record(applied, engine.stats())}
    try:
        block["perplexity"] = measure_perplexity(engine, spec, data_dir)
    except Exception as exc:  # recorded in the result: the cell's speed stays valid
        block["perplexity"] = {"error": f"{type(exc).__name__}: {exc}"}
    return block
