"""The engine contract: what every engine takes, returns and declares.

Engines run with torch alone (no Hydra, W&B or lm-eval). The harness hands an engine
tokenized requests; the engine returns generated token ids with a monotonic timestamp
(`time.perf_counter()`, seconds) for each token, taken after the token exists on the host.
"""

from __future__ import annotations

import enum
import json
import math
import numbers
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar


class KVCache(str, enum.Enum):
    paged = "paged"  # fixed-size blocks with block tables (vLLM's PagedAttention)
    contiguous = "contiguous"  # one max-length region per sequence (pre-vLLM)
    none = "none"  # no cache: recompute the whole prefix every step


class Batching(str, enum.Enum):
    continuous = "continuous"  # requests join and leave every step
    static = "static"  # fixed batches run to the end


class Attention(str, enum.Enum):
    torch = "torch"  # plain torch reference over the cache
    sdpa = "sdpa"  # torch.nn.functional.scaled_dot_product_attention
    cpp = "cpp"  # our C++ paged attention kernels on CPU (decode and prefill)
    triton = "triton"  # our Triton paged-attention kernels
    flash_attn = "flash_attn"  # the flash-attn package (GPU only)


class Graphs(str, enum.Enum):
    eager = "eager"
    cuda_graphs = "cuda_graphs"
    compile = "compile"  # torch.compile


class Spec(str, enum.Enum):
    """Speculative decoding: who proposes the tokens the target model then verifies in one pass."""

    none = "none"
    draft = "draft"  # a smaller model with the same tokenizer, with its own KV cache
    ngram = "ngram"  # prompt lookup: continue a repeat of the request's own latest n-gram
    early_exit = "early_exit"  # the target's first layers + its final norm and LM head (self-draft)


class Quant(str, enum.Enum):
    none = "none"  # the weights in model.dtype
    int8 = "int8"  # weight-only int8, one scale per output channel (our kernels)
    int4 = "int4"  # weight-only int4, one scale and offset per group of quant_group_size inputs (our kernels)
    gptq = "gptq"  # a GPTQ W4A16 checkpoint made from calibration text
    awq = "awq"  # an AWQ W4A16 checkpoint made from calibration text
    nf4 = "nf4"  # bitsandbytes 4-bit NormalFloat
    torchao_int8 = "torchao_int8"  # torchao int8 weight-only
    gguf = "gguf"  # the model's GGUF file as quantized (llama.cpp)


GROUPED_QUANTS = (Quant.int4, Quant.gptq, Quant.awq)  # the methods whose scales cover groups of inputs


@dataclass
class Technique:
    """Every optimization toggle. `None` means "the engine's default", which the engine
    resolves and reports, so a result always says what was actually applied."""

    kv_cache: KVCache | None = None
    batching: Batching | None = None
    chunked_prefill: bool | None = None
    prefix_cache: bool | None = None
    attention: Attention | None = None
    graphs: Graphs | None = None
    quant: Quant | None = None
    quant_group_size: int | None = None  # inputs per scale of a grouped quant (GROUPED_QUANTS); None = engine default
    spec: Spec | None = None
    # options of `spec` (None = the engine's default; cleared when spec is none)
    spec_k: int | None = None  # tokens proposed per step
    spec_draft_model: str | None = None  # draft: a conf/model config name (None = the target itself)
    spec_draft_layers: int | None = None  # draft: keep only the draft's first N layers (None = all)
    spec_ngram_min: int | None = None  # ngram: shortest suffix n-gram looked up
    spec_ngram_max: int | None = None  # ngram: longest suffix n-gram looked up (tried first)
    spec_exit_layer: int | None = None  # early_exit: layers of the target the self-draft runs

    # Option fields -> the toggle they belong to: not toggles themselves, so `supports` does not list their
    # values; the engine that honours the toggle checks them, and they resolve to None when it is off.
    OPTIONS: ClassVar[dict[str, str]] = {
        "spec_k": "spec", "spec_draft_model": "spec", "spec_draft_layers": "spec", "spec_ngram_min": "spec",
        "spec_ngram_max": "spec", "spec_exit_layer": "spec",
    }  # fmt: skip
    # What every engine honours without declaring it: running without speculation.
    UNIVERSAL: ClassVar[dict[str, tuple[Any, ...]]] = {"spec": (Spec.none,)}

    def __post_init__(self) -> None:
        for key in ("spec_k", "spec_draft_layers", "spec_ngram_min", "spec_ngram_max", "spec_exit_layer"):
            value = getattr(self, key)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"technique.{key} must be an int >= 1 or null, got {show(value)}")
        low, high = self.spec_ngram_min, self.spec_ngram_max
        if low is not None and high is not None and low > high:
            raise ValueError(f"technique.spec_ngram_min={low} is above technique.spec_ngram_max={high}")
        size = self.quant_group_size
        if size is not None and (not is_int(size) or size < 1 or size & (size - 1)):
            raise ValueError(f"technique.quant_group_size must be a power of two >= 1 or null, got {show(size)}")
        if size is not None and self.quant not in GROUPED_QUANTS:
            shown = getattr(self.quant, "value", self.quant)
            raise ValueError(f"technique.quant_group_size={size} needs a grouped quant "
                             f"({', '.join(q.value for q in GROUPED_QUANTS)}), not quant={shown}")  # fmt: skip


@dataclass
class EngineOptions:
    """What every engine's options hold. Each engine extends it with the options it honours, in
    `engines/<name>/config.py`; the harness registers that class as the engine's config schema."""

    name: str = ""
    python: str | None = None  # the interpreter that runs this engine's worker (its own venv); None = the harness's

    def __post_init__(self) -> None:
        """Range checks (types and enums are checked when the config is composed)."""

    def check_positive(self, *keys: str) -> None:
        """ValueError naming the first of `keys` that is neither None nor >= 1."""
        nullable = {f.name for f in fields(self) if f.default is None}
        for key in keys:
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"engine.{key} must be >= 1{' or null' if key in nullable else ''}, got {value}")


@dataclass(slots=True, frozen=True)
class ModelSpec:
    """A model an engine can load: a local HF folder or hub id, or random weights."""

    name: str
    path: str | None  # HF folder (config.json + safetensors) or hub id; None when random
    dtype: str = "float32"  # float32 | bfloat16 | float16
    random_config: dict[str, Any] | None = None  # HF config dict for random weights
    seed: int = 0
    gguf_path: str | None = None  # the .gguf file `path` was converted from, when the source is one (llamacpp loads it)
    draft: ModelSpec | None = None  # technique.spec=draft: the draft model, resolved by the harness

    @property
    def is_random(self) -> bool:
        return self.random_config is not None


def eos_token_ids(config_eos: Any, folder: str | None) -> tuple[int, ...]:
    """EOS ids from the model config's `eos_token_id` plus the folder's generation_config.json (Llama 3
    instruct lists several there), in order, without repeats."""
    found = list(config_eos) if isinstance(config_eos, (list, tuple)) else ([config_eos] if config_eos is not None else [])
    path = Path(folder, "generation_config.json") if folder else None
    if path is not None and path.is_file():
        generation = json.loads(path.read_text()).get("eos_token_id")
        found += generation if isinstance(generation, list) else ([generation] if generation is not None else [])
    return tuple(dict.fromkeys(int(i) for i in found))


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first bad field and its value (wrong types included)."""
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {show(self.max_tokens)}")
        if not is_finite_real(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {show(self.temperature)}")
        if 0 < self.temperature < MIN_TEMPERATURE:  # logits / temperature would overflow to inf and NaN the draw
            raise ValueError(f"temperature must be 0 (greedy) or >= {MIN_TEMPERATURE}, got {show(self.temperature)}")
        if not is_int(self.top_k) or not 0 <= self.top_k < 2**63:  # top_k becomes an int64 tensor
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {show(self.top_k)}")
        if not is_finite_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be a number in (0, 1], got {show(self.top_p)}")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed < 2**64):  # torch's seed range
            raise ValueError(f"seed must be None or an int in [0, 2**64), got {show(self.seed)}")
        stops = self.stop_token_ids
        if not isinstance(stops, (list, tuple)) or not all(is_int(t) and t >= 0 for t in stops):
            raise ValueError(f"stop_token_ids must be a list or tuple of ints >= 0, got {show(stops)}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {show(self.ignore_eos)}")


MIN_TEMPERATURE = 1e-5  # below this (but above 0) sampling overflows float32 logits


def is_int(value: Any) -> bool:
    """An integral number (numpy ints included) that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def show(value: Any, limit: int = 60) -> str:
    """`value` for an error message: its repr (shortened) and type; never raises."""
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not turn a clear error into a crash
        text = "<unprintable>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})"


@dataclass(slots=True)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_len: int
    token_ids: list[int]
    token_times: list[float]  # perf_counter() when each generated token reached the host
    arrival_time: float  # perf_counter() when the engine accepted the request
    finish_reason: str  # "length" | "stop" | "error"
    error: str | None = None


@dataclass(slots=True)
class Arrivals:
    """When requests reach the engine: set by the serving scenario, never by the engine."""

    offsets_s: list[float]  # per request, seconds after serve() starts, in request order
    max_concurrency: int | None = None  # at most this many in flight: a due request also waits for a free slot


@dataclass(slots=True)
class ScoredSequence:
    """log p(token[i] | token[:i]) for i >= 1 (score_tails: for its last t tokens only), and whether
    token[i] was the argmax."""

    logprobs: list[float]
    is_greedy: list[bool]


class UnsupportedTechnique(ValueError):
    """A technique value the engine does not honour; the harness records the cell as skipped."""


ProgressFn = Callable[[int], None]  # called with the number of requests just finished


class Engine(ABC):
    """Offline generation now; engines with a serving loop also offer add_request/step."""

    name: ClassVar[str]
    supports: ClassVar[dict[str, tuple[Any, ...]]]  # technique field -> honoured values
    defaults: ClassVar[dict[str, Any]]  # technique field -> value used when None

    @classmethod
    def device_defaults(cls, device: str) -> dict[str, Any]:
        """The defaults on `device` ("cpu", "cuda", "cuda:1"...); engines whose best choice differs by device
        override this."""
        return cls.defaults

    @classmethod
    def resolve_technique(cls, requested: Technique, device: str = "cpu") -> Technique:
        """Fill the device's defaults; raise UnsupportedTechnique naming every value not honoured."""
        defaults = cls.device_defaults(device)
        applied, problems = {}, []
        for f in fields(Technique):
            if f.name in Technique.OPTIONS:
                continue
            value = getattr(requested, f.name)
            if value is None:
                value = defaults.get(f.name)
            honoured = cls.supports.get(f.name, Technique.UNIVERSAL.get(f.name, ()))
            if value is not None and value not in honoured:
                shown = ", ".join(str(getattr(v, "value", v)) for v in honoured) or "none"
                problems.append(f"{f.name}={getattr(value, 'value', value)} (supports: {shown})")
            applied[f.name] = value
        for option, toggle in Technique.OPTIONS.items():
            off = applied[toggle] is None or getattr(applied[toggle], "value", applied[toggle]) == "none"
            applied[option] = None if off else getattr(requested, option)
        if problems:
            raise UnsupportedTechnique(f"engine '{cls.name}' does not support " + "; ".join(problems))
        return Technique(**applied)

    @abstractmethod
    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[RequestOutput]:
        """Run all requests to completion; outputs in request order. A bad request gets
        finish_reason="error" with a message, and the others still run."""

    def serve(
        self, requests: Sequence[Request], arrivals: Arrivals, progress: ProgressFn | None = None
    ) -> list[RequestOutput]:
        """Online serving: each request is submitted at its arrival time (or later, when it waited for a
        concurrency slot) and `arrival_time` records when; tokens that reach the host together (one
        engine step, one HTTP chunk) share one timestamp. Engines with a serving loop override this."""
        raise UnsupportedTechnique(f"engine '{self.name}' has no serving loop (scenario=serving needs one)")

    @abstractmethod
    def score(self, sequences: Sequence[Sequence[int]]) -> list[ScoredSequence]:
        """Teacher-forced log-probabilities of each sequence under the model."""

    def score_tails(self, sequences: Sequence[Sequence[int]], tails: Sequence[int]) -> list[ScoredSequence]:
        """Like `score`, but only the last `tails[i]` tokens of sequence i need a log-probability (an
        lm-eval continuation), so engines may skip the head over the context, share one forward among
        sequences that differ only in their last token, and serve shared prefixes from a cache.
        Returns exactly `tails[i]` entries per sequence. This default scores everything and cuts."""
        check_tails(sequences, tails)
        return [ScoredSequence(r.logprobs[-t:], r.is_greedy[-t:]) for r, t in zip(self.score(sequences), tails)]

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Engine statistics: peak memory, KV bytes allocated and used, cache hit rate..."""

    @property
    @abstractmethod
    def eos_token_id(self) -> int | None: ...

    def is_idle(self) -> bool:
        """Nothing queued or running and no KV held for a request: true between generate() calls,
        even after one that failed. Engines without a queue are always idle."""
        return True

    def close(self) -> None:
        """Release memory held by the engine."""

    def memory_monitor(self, device: str) -> Any:
        """A context manager that measures peak memory where this engine runs (`.result()` after)."""
        from engines.memory import MemoryMonitor

        return MemoryMonitor(device)


def check_tails(sequences: Sequence[Sequence[int]], tails: Sequence[int]) -> None:
    """ValueError unless there is one tail per sequence, each in [1, len(sequence) - 1]."""
    if not isinstance(tails, (list, tuple)) or len(tails) != len(sequences):
        raise ValueError(f"score_tails: need one tail per sequence ({len(sequences)}), got {show(tails)}")
    for index, (seq, tail) in enumerate(zip(sequences, tails)):
        if not is_int(tail) or not 1 <= tail <= len(seq) - 1:
            raise ValueError(f"score_tails: tail of sequence {index} must be an int in [1, {len(seq) - 1}], got {show(tail)}")


def now() -> float:
    return time.perf_counter()
