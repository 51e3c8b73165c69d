"""`OwnEngine`: our engine behind the project's contract (engines/base.py)."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import replace
from typing import Any, ClassVar

import torch

from engines.base import (
    Arrivals,
    Attention,
    Batching,
    Engine,
    Graphs,
    KVCache,
    ModelSpec,
    ProgressFn,
    Quant,
    Request,
    RequestOutput,
    ScoredSequence,
    Spec,
    Technique,
    UnsupportedTechnique,
    eos_token_ids,
)
from engines.own.attention import make_attention
from engines.own.config import OwnOptions
from engines.own.kv_pool import (
    allocate_kv_caches,
    default_kv_budget,
    gpu_kv_budget,
    kv_bytes_per_token,
    max_concurrent_sequences,
    profile_step_memory,
)
from engines.own.llm_engine import CoreConfig, LLMEngine
from engines.dtypes import torch_dtype
from engines.memory import release_memory
from engines.own.kernels import cpu_kernels
from engines.own.loader import checked_max_model_len, load_model
from engines.own.model_runner import ModelRunner
from engines.own.quant.apply import DEFAULT_INT4_GROUP, pack_float_linears, quantize_model
from engines.own.quant.linear import cpu_linear_instructions, split_fp32_unavailable
from engines.own.scheduler import SchedulerConfig
from engines.own.scoring import score_sequences, score_tails
from engines.own.speculative.setup import build_speculator, load_spec_draft, resolve_spec_options
from engines.own.technique_setup import apply_graphs, check_device_support
from engines.validation import check_arrivals


class OwnEngine(Engine):
    name: ClassVar[str] = "own"
    supports: ClassVar[dict[str, tuple[Any, ...]]] = {
        "kv_cache": (KVCache.paged, KVCache.contiguous, KVCache.none),
        "batching": (Batching.continuous, Batching.static),
        "chunked_prefill": (True, False),
        "prefix_cache": (True, False),
        "attention": (Attention.torch, Attention.sdpa, Attention.cpp, Attention.triton),
        "graphs": (Graphs.eager, Graphs.cuda_graphs),
        "quant": (Quant.none, Quant.int8, Quant.int4),
        "quant_group_size": (32, 64, 128, 256),  # what torch's CPU int4 kernel takes; the Triton kernel wants >= 32
        "spec": (Spec.none, Spec.draft, Spec.ngram, Spec.early_exit),
    }
    defaults: ClassVar[dict[str, Any]] = {
        "kv_cache": KVCache.paged,
        "batching": Batching.continuous,
        "chunked_prefill": True,
        "prefix_cache": True,
        "attention": Attention.sdpa,
        "graphs": Graphs.eager,
        "quant": Quant.none,
        "spec": Spec.none,
    }

    # CUDA: Triton kernels read the paged cache in place and decode steps replay as CUDA graphs
    cuda_defaults: ClassVar[dict[str, Any]] = {"attention": Attention.triton, "graphs": Graphs.cuda_graphs}

    @classmethod
    def device_defaults(cls, device: str) -> dict[str, Any]:
        if device.startswith("cuda"):
            return {**cls.defaults, **cls.cuda_defaults}
        # CPU: our C++ decode kernel where it builds (once per machine); otherwise sdpa, saying why
        return {**cls.defaults, "attention": Attention.cpp if cpu_kernels.builds() else Attention.sdpa}

    @classmethod
    def resolve_technique(cls, requested: Technique, device: str = "cpu") -> Technique:
        """Base resolution, except that defaults which need paged KV turn off when the KV mode cannot
        honour them (asking for them explicitly is still an error)."""
        kv = requested.kv_cache or cls.device_defaults(device)["kv_cache"]
        adjusted = replace(requested)
        if kv != KVCache.paged and requested.prefix_cache is None:
            adjusted.prefix_cache = False
        if kv == KVCache.none and requested.chunked_prefill is None:
            adjusted.chunked_prefill = False
        resolved = super().resolve_technique(adjusted, device)
        if resolved.quant == Quant.int4 and resolved.quant_group_size is None:
            resolved.quant_group_size = DEFAULT_INT4_GROUP
        if resolved.prefix_cache and resolved.kv_cache != KVCache.paged:
            raise UnsupportedTechnique(f"engine 'own': prefix_cache needs kv_cache=paged, not {resolved.kv_cache.value}")
        if resolved.chunked_prefill and resolved.kv_cache == KVCache.none:
            raise UnsupportedTechnique("engine 'own': chunked_prefill needs a KV cache (kv_cache=none recomputes all)")
        if resolved.spec != Spec.none and resolved.kv_cache != KVCache.paged:
            raise UnsupportedTechnique(f"engine 'own': spec={resolved.spec.value} needs kv_cache=paged (rejected "
                                       f"drafts are rolled back block by block), not {resolved.kv_cache.value}")  # fmt: skip
        resolve_spec_options(resolved)
        return resolved

    def __init__(self, model: ModelSpec, technique: Technique, options: OwnOptions, device: str) -> None:
        self.device = torch.device(device)
        self.technique = technique
        self.options = options
        self.spec = model
        check_device_support(technique, self.device)
        split = self._split_fp32(options, torch_dtype(model.dtype))
        self.model, hf_config = load_model(model, self.device, options.max_model_len)
        self.quantization = quantize_model(self.model, technique.quant.value, technique.quant_group_size)
        self.weight_layout = (pack_float_linears(self.model, options.max_num_seqs, split) if options.pack_weights
                              else "plain")  # fmt: skip
        self.linear_instructions = (cpu_linear_instructions(torch_dtype(model.dtype), split)
                                    if self.weight_layout == "cpp_tiles" else None)  # fmt: skip
        self.layer_ops = self._bind_layer_ops(options.cpp_layer_ops, torch_dtype(model.dtype))
        config = self.model.config
        try:
            attention = make_attention(technique.attention.value, self.device)
        except ValueError as exc:
            raise UnsupportedTechnique(f"engine 'own': attention={technique.attention.value}: {exc}") from exc
        dtype = torch_dtype(model.dtype)
        self.max_model_len = checked_max_model_len(options.max_model_len, config.max_position)
        draft, draft_dtype = load_spec_draft(technique, model, self.device, self.max_model_len, config.vocab_size)
        self.kv_bytes_per_token = kv_bytes_per_token(config, dtype)
        # a draft model's KV pool has as many blocks as the target's: the budget pays for both
        draft_kv = kv_bytes_per_token(draft.config, torch_dtype(draft_dtype)) if draft is not None else 0
        self.memory_plan: dict[str, int] = {}  # CUDA: what the KV budget was sized from
        if options.kv_cache_bytes:
            budget = options.kv_cache_bytes
        elif self.device.type == "cuda":
            budget = self._profiled_gpu_budget(attention, options)  # weights resident now include a draft's
        else:  # enough for max_num_seqs full-length target sequences, and the draft's KV beside them
            budget = default_kv_budget(config, dtype, options.max_num_seqs * self.max_model_len)
            budget = budget * (self.kv_bytes_per_token + draft_kv) // self.kv_bytes_per_token
        num_blocks = budget // ((self.kv_bytes_per_token + draft_kv) * options.block_size)
        if num_blocks < 1:
            raise ValueError(f"KV budget of {budget} bytes holds no block of {options.block_size} tokens")
        self.model.bind(attention, allocate_kv_caches(config, num_blocks, options.block_size, dtype, self.device),
                        options.block_size)
        self.runner = ModelRunner(self.model, options.block_size, self.device)
        apply_graphs(technique.graphs, self.runner, self.device, options.max_num_seqs)
        scheduler = SchedulerConfig(
            max_num_seqs=options.max_num_seqs,
            max_num_batched_tokens=options.max_num_batched_tokens,
            chunked_prefill=bool(technique.chunked_prefill),
            static_batching=technique.batching == Batching.static,
            static_batch_size=options.batch_size,
            recompute_every_step=technique.kv_cache == KVCache.none,
            lookahead_slots=technique.spec_k or 0,
        )
        self.llm = LLMEngine(
            self.runner,
            CoreConfig(
                kv_cache=technique.kv_cache.value,
                prefix_cache=bool(technique.prefix_cache),
                scheduler=scheduler,
                block_size=options.block_size,
                num_blocks=num_blocks,
                max_model_len=self.max_model_len,
                vocab_size=config.vocab_size,
                eos_token_ids=eos_token_ids(hf_config.get("eos_token_id"), model.path),
                kv_bytes_per_token=self.kv_bytes_per_token,
            ),
            build_speculator(technique, self.runner, draft, torch_dtype(draft_dtype), num_blocks, self.max_model_len),
        )
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _split_fp32(self, options: OwnOptions, dtype: torch.dtype) -> bool:
        """Whether fp32_on_amx is asked for, and can run: else a clear error before anything loads."""
        if not options.fp32_on_amx:
            return False
        reason = ("it is for the CPU" if self.device.type != "cpu"
                  else "it needs pack_weights=true" if not options.pack_weights
                  else split_fp32_unavailable(dtype))  # fmt: skip
        if reason:
            raise UnsupportedTechnique(f"engine 'own': fp32_on_amx=true cannot run here: {reason}")
        return True

    def _bind_layer_ops(self, wanted: bool, dtype: torch.dtype) -> str:
        """Our C++ layer ops on the CPU in fp32/bf16 where they build; else torch's. Returns which, and why."""
        if not wanted:
            return "torch (cpp_layer_ops=false)"
        if self.device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16):
            return "torch (the C++ layer ops are for float32 and bfloat16 on the CPU)"
        if not cpu_kernels.builds():
            return "torch (the C++ kernels do not build here)"
        self.model.ops = cpu_kernels.extension()
        return "cpp"

    def _profiled_gpu_budget(self, attention, options: OwnOptions) -> int:
        """KV bytes as vLLM sizes them: utilisation x total, less weights, the profiled peak of the largest
        step and memory outside torch's allocator."""
        device = self.device
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        weights = torch.cuda.memory_allocated(device)
        pool = profile_step_memory(self.model, options.max_num_batched_tokens, self.max_model_len,
                                   options.max_num_seqs, options.block_size, attention)  # fmt: skip
        torch.cuda.synchronize(device)
        activation_peak = torch.cuda.max_memory_allocated(device) - weights - pool
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        non_torch = max(total - free - torch.cuda.memory_reserved(device), 0)
        self.memory_plan = {"weights_bytes": weights, "activation_peak_bytes": activation_peak,
                            "non_torch_bytes": non_torch, "total_bytes": total}  # fmt: skip
        return gpu_kv_budget(total, options.gpu_memory_utilization, weights, activation_peak, non_torch)

    def generate(self, requests: Seq[Request], progress: ProgressFn | None = None) -> list[RequestOutput]:
        return self.llm.generate(requests, progress)

    def serve(self, requests: Seq[Request], arrivals: Arrivals, progress: ProgressFn | None = None) -> list[RequestOutput]:
        check_arrivals(arrivals, len(requests))
        return self.llm.serve(requests, arrivals.offsets_s, arrivals.max_concurrency, progress)

    def score(self, sequences: Seq[Seq[int]]) -> list[ScoredSequence]:
        return score_sequences(self.llm, self.runner, sequences, self.options.max_num_batched_tokens)

    def score_tails(self, sequences: Seq[Seq[int]], tails: Seq[int]) -> list[ScoredSequence]:
        return score_tails(self.llm, self.runner, sequences, tails, self.options.max_num_batched_tokens)

    def is_idle(self) -> bool:
        return self.llm.is_idle()

    @property
    def eos_token_id(self) -> int | None:
        ids = self.llm.config.eos_token_ids
        return ids[0] if ids else None

    def max_concurrent_sequences(self, seq_lens: list[int], kv_cache: str | None = None) -> int:
        """How many sequences of these final lengths this engine's KV pool holds at once."""
        kv = kv_cache or self.technique.kv_cache.value
        return max_concurrent_sequences(self.llm.kv.num_blocks, self.options.block_size, seq_lens, kv,
                                        self.max_model_len)

    def stats(self) -> dict[str, Any]:
        stats = self.llm.stats()
        stats.update(
            model_random_weights=self.spec.is_random,
            max_model_len=self.max_model_len,
            kv_bytes_per_token=self.kv_bytes_per_token,
            block_size=self.options.block_size,
            quantization=self.quantization,
            weight_layout=self.weight_layout,
            linear_instructions=self.linear_instructions,
            layer_ops=self.layer_ops,
        )
        if self.device.type == "cuda":
            stats["peak_memory_bytes"] = torch.cuda.max_memory_allocated(self.device)
            stats.update(self.memory_plan)
        else:
            import resource

            stats["peak_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        return stats

    def close(self) -> None:
        """Drop every reference to weights, KV blocks and graphs before returning cached memory
        to the device: emptying the cache while they live frees nothing, and the next cell's KV
        budget (sized from free memory) would depend on this one."""
        self.model = self.runner = self.llm = None
        release_memory(self.device)
