"""The plain-PyTorch baseline: Hugging Face transformers `generate` with static batching.

What HF cannot do per request inside one batch, and how this engine copes:
- sampling parameters: requests are grouped by (temperature, top_k, top_p) before batching,
  so every request is sampled with its own parameters;
- seeds: one torch generator state serves the whole batch, seeded from the batch's first
  request that has a seed; other requests' seeds are not honoured individually;
- max_tokens / stop tokens / EOS: HF is told about none of them (so ignore_eos cannot change
  which tokens come out); a stopping criterion applies them per row, time-stamps every step
  and ends the batch once every row is finished. A stop or EOS token is kept as the request's
  last token (finish_reason "stop"); a request also ends at max_model_len (default: the model's context).
"""

from __future__ import annotations

import resource
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from engines.base import (
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
    Technique,
    check_tails,
    now,
)
from engines.context_groups import group_by_context, read_tails, score_whole
from engines.dtypes import torch_dtype
from engines.hf.config import HfOptions
from engines.memory import release_memory
from engines.hf.steps import StepRecorder
from engines.hf import quant as hf_quant
from engines.padding import pad_batch, token_budget_batches
from engines.validation import checked_sequences, reject_bad, request_error


def load_model(model: ModelSpec, device: str, quant: Quant = Quant.none, group_size: int | None = None) -> torch.nn.Module:
    """HF causal LM from a folder / hub id, or seeded random weights from a config dict; quantized by the library
    technique.quant names (engines/hf/quant.py)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch_dtype(model.dtype)
    if model.is_random:
        cfg = dict(model.random_config)
        config = AutoConfig.for_model(cfg.pop("model_type", "llama"), **cfg)
        torch.manual_seed(model.seed)
        lm = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    elif quant != Quant.none:
        path = hf_quant.checkpoint_path(model, quant, group_size) if quant in (Quant.gptq, Quant.awq) else model.path
        extra = hf_quant.load_kwargs(quant, dtype)
        placed = {"device_map": device} if extra else {}  # bitsandbytes places weights while quantizing them
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa", **extra, **placed)
        if not placed:
            lm = lm.to(device)
        hf_quant.quantize_loaded(lm, quant)
        return lm.eval()
    else:
        if model.path is None:
            raise ValueError(f"model '{model.name}' has neither a path nor a random_config")
        lm = AutoModelForCausalLM.from_pretrained(model.path, dtype=dtype, attn_implementation="sdpa")
    return lm.to(device).eval()


def max_model_len(requested: int | None, context: int | None) -> int | None:
    """The longest sequence to serve: `requested`, or the model's context when None; beyond the context is an
    error, as in vLLM (those positions were never trained)."""
    if requested is not None and context is not None and requested > context:
        raise ValueError(f"max_model_len={requested} exceeds the model's context (max_position_embeddings={context})")
    return requested or context


def cache_bytes(cache: Any) -> int:
    """Bytes held by the key/value tensors of an HF cache object (0 when there is none)."""
    total = 0
    for layer in getattr(cache, "layers", ()) or ():
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
    return total


class HFEngine(Engine):
    name: ClassVar[str] = "hf"
    supports: ClassVar[dict[str, tuple[Any, ...]]] = {
        "kv_cache": (KVCache.contiguous, KVCache.none),
        "batching": (Batching.static,),
        "chunked_prefill": (False,),
        "prefix_cache": (False,),
        "attention": (Attention.sdpa,),
        "graphs": (Graphs.eager,),
        "quant": (Quant.none, Quant.torchao_int8, Quant.nf4, Quant.int8, Quant.gptq, Quant.awq),
        "quant_group_size": (32, 64, 128),  # gptq / awq checkpoints (64 or 32 for SmolLM2's 576-wide layers)
    }
    defaults: ClassVar[dict[str, Any]] = {
        "kv_cache": KVCache.contiguous,
        "batching": Batching.static,
        "chunked_prefill": False,
        "prefix_cache": False,
        "attention": Attention.sdpa,
        "graphs": Graphs.eager,
        "quant": Quant.none,
    }

    @classmethod
    def resolve_technique(cls, requested: Technique, device: str = "cpu") -> Technique:
        resolved = super().resolve_technique(requested, device)
        if resolved.quant in (Quant.gptq, Quant.awq) and resolved.quant_group_size is None:
            resolved.quant_group_size = hf_quant.DEFAULT_GROUP
        return resolved

    def __init__(self, model: ModelSpec, technique: Technique, options: HfOptions, device: str):
        from transformers import GenerationConfig

        self.spec = model
        self.technique = technique
        self.options = options
        self.device = device
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        if technique.quant not in (None, Quant.none):
            hf_quant.require(technique.quant)
        self.model = load_model(model, device, technique.quant or Quant.none, technique.quant_group_size)
        config = self.model.config
        eos = self.model.generation_config.eos_token_id
        self.eos_ids: tuple[int, ...] = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        pad = self.model.generation_config.pad_token_id
        self.pad_id: int = pad if isinstance(pad, int) else (self.eos_ids[0] if self.eos_ids else 0)
        # A neutral generation config: HF must not stop at EOS or apply a checkpoint's sampling defaults.
        self.model.generation_config = GenerationConfig(pad_token_id=self.pad_id)
        self.vocab_size: int = self.model.get_input_embeddings().num_embeddings
        context = getattr(config, "max_position_embeddings", None)
        self.context_len: int | None = max_model_len(options.max_model_len, context)
        self.kv_bytes_peak = 0

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_ids[0] if self.eos_ids else None

    def batches(self, requests: Sequence[Request]) -> list[list[int]]:
        """Request indices in static batches; requests sharing sampling parameters batch together."""
        groups: dict[tuple[float, int, float], list[int]] = {}
        for index, request in enumerate(requests):
            s = request.sampling
            groups.setdefault((s.temperature, s.top_k, s.top_p), []).append(index)
        size = self.options.batch_size
        out = []
        for members in groups.values():
            step = size or len(members)
            out += [members[i : i + step] for i in range(0, len(members), step)]
        return out

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[RequestOutput]:
        arrival = now()
        outputs = reject_bad(requests, arrival, lambda r: request_error(r, self.vocab_size, self.context_len), progress)
        runnable = [index for index, output in enumerate(outputs) if output is None]
        batches = self.batches([requests[i] for i in runnable])
        for batch in batches:
            members = [runnable[i] for i in batch]
            for index, output in zip(members, self.run_batch([requests[i] for i in members], arrival, progress)):
                outputs[index] = output
        return outputs  # type: ignore[return-value]

    def run_batch(
        self, batch: list[Request], arrival: float, progress: ProgressFn | None = None
    ) -> list[RequestOutput]:
        from transformers import GenerationConfig, StoppingCriteriaList

        limits = []
        for request in batch:
            room = self.context_len - len(request.prompt_token_ids) if self.context_len else request.sampling.max_tokens
            limits.append(min(request.sampling.max_tokens, room))
        stop_sets = [
            frozenset(r.sampling.stop_token_ids) | (frozenset() if r.sampling.ignore_eos else frozenset(self.eos_ids))
            for r in batch
        ]
        recorder = StepRecorder(limits, stop_sets, progress)
        first = batch[0].sampling
        sampled = first.temperature > 0
        gen_config = GenerationConfig(
            max_new_tokens=max(limits),
            do_sample=sampled,
            use_cache=self.technique.kv_cache == KVCache.contiguous,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            **({"temperature": first.temperature, "top_k": first.top_k, "top_p": first.top_p} if sampled else {}),
        )
        seed = next((r.sampling.seed for r in batch if r.sampling.seed is not None), None)
        if sampled and seed is not None:
            torch.manual_seed(seed)
        ids, mask = pad_batch([r.prompt_token_ids for r in batch], self.pad_id, self.device, left=True)
        with torch.inference_mode():
            result = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=gen_config,
                stopping_criteria=StoppingCriteriaList([recorder]),
            )
        self.kv_bytes_peak = max(self.kv_bytes_peak, cache_bytes(getattr(result, "past_key_values", None)))
        if progress is not None and recorder.num_finished < len(batch):  # rows HF ended before they finished
            progress(len(batch) - recorder.num_finished)
        del result
        return [
            RequestOutput(
                r.request_id, len(r.prompt_token_ids), recorder.tokens[row], recorder.times[row], arrival,
                recorder.reasons[row] or "length",
            )
            for row, r in enumerate(batch)
        ]

    def score(self, sequences: Sequence[Sequence[int]]) -> list[ScoredSequence]:
        return score_whole(checked_sequences(sequences, self.vocab_size, self.context_len), self.score_tails)

    def score_tails(self, sequences: Sequence[Sequence[int]], tails: Sequence[int]) -> list[ScoredSequence]:
        """One forward per shared context (engines/context_groups.py), batches of similar length padded on the
        right with no mask (causal attention never looks right, as in lm-eval), and the LM head only over
        the last columns that hold a needed row."""
        checked = checked_sequences(sequences, self.vocab_size, self.context_len)
        check_tails(checked, tails)
        groups = group_by_context(checked, tails)
        results: dict[int, ScoredSequence] = {}
        for batch in self.score_batches([g.context for g in groups]):
            members = [groups[i] for i in batch]
            ids, _ = pad_batch([g.context for g in members], self.pad_id, self.device, left=False)
            width = ids.shape[1]
            keep = max(width - len(g.context) + g.tail for g in members)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=keep).logits
                for row, group in enumerate(members):
                    end = keep - (width - len(group.context))
                    logprobs = logits[row, end - group.tail : end].float().log_softmax(dim=-1)
                    results.update(read_tails(group, logprobs))
        return [results[i] for i in range(len(checked))]

    def score_batches(self, sequences: Sequence[Sequence[int]]) -> list[list[int]]:
        """Scoring batches: padded tokens within max_num_batched_tokens, rows within batch_size."""
        cap = self.options.batch_size or max(len(sequences), 1)
        return token_budget_batches([len(s) for s in sequences], self.options.max_num_batched_tokens, cap)

    def stats(self) -> dict[str, Any]:
        params = sum(p.numel() * p.element_size() for p in self.model.parameters())
        out: dict[str, Any] = {
            "device": self.device,
            "dtype": self.spec.dtype,
            "param_bytes": params,
            "random_weights": self.spec.is_random,
            "max_model_len": self.context_len,
            "quantization": hf_quant.describe(self.model, self.technique),
        }
        if self.technique.kv_cache == KVCache.contiguous:
            out["kv_bytes_allocated"] = self.kv_bytes_peak  # largest batch cache seen so far
        if self.device.startswith("cuda"):
            out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        else:
            out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return out

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        release_memory(torch.device(self.device))
