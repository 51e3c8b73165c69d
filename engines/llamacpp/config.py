"""`engine=llamacpp` options: llama.cpp (through llama-cpp-python) on the model's GGUF file."""

from __future__ import annotations

from dataclasses import dataclass

from engines.base import EngineOptions


@dataclass
class LlamaCppOptions(EngineOptions):
    name: str = "llamacpp"
    # longest sequence, prompt + output; llama.cpp's n_ctx (one contiguous KV buffer of this many tokens).
    # None = the GGUF's training context (llama.context_length: 8192 for SmolLM2).
    max_model_len: int | None = None
    n_batch: int = 512  # tokens per llama_decode call during prefill and scoring (llama.cpp's -b)
    n_ubatch: int = 512  # physical micro-batch inside one decode (llama.cpp's -ub)
    # CPU threads for decoding one token (llama.cpp's -t); None = the cell's `threads` (torch's thread count,
    # which the worker sets from it), else every core this process may use
    n_threads: int | None = None
    n_threads_batch: int | None = None  # threads for prefill/scoring batches (-tb); None = n_threads
    flash_attn: bool = False  # llama.cpp's own fused attention kernel (its CPU one too), not the flash-attn package
    use_mmap: bool = True  # map the GGUF instead of reading it into memory
    seed: int = 0  # seeds sampling for requests that bring no seed of their own
    # technique.quant=gguf: the GGUF type to run (Q8_0, Q4_K_M, Q5_K_M...), made once by llama.cpp's quantizer and
    # cached (engines/llamacpp/requantize.py); None = the file as it is (the embedded model: Q4_1)
    gguf_type: str | None = None

    def __post_init__(self) -> None:
        self.check_positive("max_model_len", "n_batch", "n_ubatch", "n_threads", "n_threads_batch")
