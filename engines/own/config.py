"""Options of engine=own (the techniques themselves are `technique.*`, shared by every engine)."""

from __future__ import annotations

from dataclasses import dataclass

from engines.base import EngineOptions


@dataclass
class OwnOptions(EngineOptions):
    name: str = "own"
    max_num_seqs: int = 64  # sequences running at once
    max_num_batched_tokens: int = 2048  # tokens per step (prefill chunks + decodes)
    block_size: int = 16  # tokens per KV block
    kv_cache_bytes: int | None = None  # KV pool size; None = sized from max_num_seqs and free memory
    gpu_memory_utilization: float = 0.9  # CUDA: share of total memory for weights + step peak + KV (as vLLM)
    batch_size: int | None = None  # batching=static: requests per batch (None = all)
    # longest sequence, prompt + output (vLLM's --max-model-len); None = the model's context. Contiguous KV
    # regions, CUDA-graph block tables and the default KV budget are sized from it.
    max_model_len: int | None = None
    pack_weights: bool = True  # CPU, fp32/bf16: float linears and an LM head copy packed (quant/apply.py)
    cpp_layer_ops: bool = True  # CPU, fp32/bf16: residual add + RMSNorm, RoPE, SwiGLU in C++ calls
    # CPU, fp32, AMX: the layers' linears as three-term bf16 splits on AMX tiles (fp32-level error; faster from
    # ~64 rows, slower below: for prefill-heavy work such as accuracy runs)
    fp32_on_amx: bool = False

    def __post_init__(self) -> None:
        self.check_positive("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_bytes", "batch_size",
                            "max_model_len")  # fmt: skip
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"engine.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
