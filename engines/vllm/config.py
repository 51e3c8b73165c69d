"""`engine=vllm` options: every knob the vLLM engine reads, declared here (conf/engine/vllm.yaml sets them)."""

from __future__ import annotations

from dataclasses import dataclass

from engines.base import EngineOptions


@dataclass
class VllmOptions(EngineOptions):
    name: str = "vllm"
    max_num_seqs: int = 64  # vLLM --max-num-seqs: sequences scheduled per step
    max_num_batched_tokens: int = 2048  # vLLM --max-num-batched-tokens: token budget per step
    # tokens per KV block (vLLM --block-size); None = vLLM's default (128 on CPU, 16 on CUDA)
    block_size: int | None = None
    # longest sequence, prompt + output (vLLM --max-model-len); None = the model's context
    max_model_len: int | None = None
    # KV cache size in bytes (vLLM --kv-cache-memory-bytes). None: 2 GiB on CPU (unless VLLM_CPU_KVCACHE_SPACE is
    # set, in GiB), and on CUDA what gpu_memory_utilization leaves after the weights
    kv_cache_bytes: int | None = None
    gpu_memory_utilization: float = 0.9  # CUDA: fraction of GPU memory for weights + KV (vLLM's own knob)
    # CPU: VLLM_CPU_OMP_THREADS_BIND. "auto": the cell's thread count (threads=, else every usable core) as a core
    # list, e.g. "0-1". Any other value goes to vLLM as is ("nobind", "0-3", "0,2"); vLLM's own "auto" keeps one
    # core for its scheduler process, which on 2 cores leaves the model one thread.
    threads_bind: str = "auto"
    # vLLM's engine core in its own process (VLLM_ENABLE_V1_MULTIPROCESSING=1, vLLM's default); the model always
    # runs in a spawned worker process on CPU
    multiprocessing: bool = True
    # CPU: libraries preloaded into vLLM's processes (it spawns them, so setting LD_PRELOAD before start-up reaches
    # them). "auto": tcmalloc (libtcmalloc-minimal4) and the environment's Intel OpenMP (libiomp5.so), vLLM's CPU
    # recommendation, where found; "" = none (vLLM then preloads torch's libgomp itself); else a ':' list of paths
    ld_preload: str = "auto"
    seed: int = 0  # vLLM's engine seed (a request with its own seed samples with that)

    def __post_init__(self) -> None:
        self.check_positive("max_num_seqs", "max_num_batched_tokens", "block_size", "max_model_len", "kv_cache_bytes")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"engine.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
