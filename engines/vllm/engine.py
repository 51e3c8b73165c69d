"""`VllmEngine`: vLLM's own engine (its v1 `LLMEngine`) behind the project's contract (engines/base.py).

Runs in the vLLM environment's interpreter (engines/vllm/install.sh), which the harness starts as the cell's
worker process. We drive vLLM's step loop ourselves: `add_request` for every request, then `step()` until
none is unfinished; each step's outputs carry the request's new token ids, and all tokens of one step share
the `time.perf_counter()` stamp taken when that step returned. Token ids go in and come out (no tokenizer).

vLLM itself runs in child processes: by default (`multiprocessing=True`, vLLM's own default) an engine-core
process schedules and a spawned worker process runs the model with its OpenMP threads bound to
`VLLM_CPU_OMP_THREADS_BIND`. Peak memory is therefore measured over the whole process tree.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from engines.base import (
    Batching,
    Engine,
    Graphs,
    Quant,
    KVCache,
    ModelSpec,
    ProgressFn,
    Request,
    RequestOutput,
    ScoredSequence,
    Technique,
    UnsupportedTechnique,
    eos_token_ids,
    now,
)
from engines.memory import process_tree_rss
from engines.validation import checked_sequences, reject_bad, request_error
from engines.vllm.config import VllmOptions
from engines.vllm.setup import model_source, set_environment
from engines.vllm.stats import StatsRecorder, TreeMemoryMonitor

GiB = 1 << 30
DEFAULT_CPU_KV_BYTES = 2 * GiB  # VLLM_CPU_KVCACHE_SPACE=2, what vLLM's CPU docs suggest for small models
VLLM_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class VllmEngine(Engine):
    name: ClassVar[str] = "vllm"
    supports: ClassVar[dict[str, tuple[Any, ...]]] = {
        "kv_cache": (KVCache.paged,),
        "batching": (Batching.continuous,),
        "chunked_prefill": (True, False),
        "prefix_cache": (True, False),
        # vLLM picks its own attention backend (CPU_ATTN on CPU: its C++ paged-attention kernels; FlashAttention
        # or FlashInfer on CUDA). None of our values names it, so none is claimed: engine_stats records it.
        "attention": (),
        "graphs": (Graphs.eager, Graphs.compile, Graphs.cuda_graphs),
        "quant": (Quant.none,),  # vLLM's own quantization methods are not wired here yet
    }
    defaults: ClassVar[dict[str, Any]] = {
        "kv_cache": KVCache.paged,
        "batching": Batching.continuous,
        "chunked_prefill": True,
        "prefix_cache": True,
        "attention": None,
        "quant": Quant.none,
        "graphs": Graphs.compile,  # vLLM's default: torch.compile (Inductor) on CPU; + CUDA graphs use cuda_graphs
    }

    @classmethod
    def resolve_technique(cls, requested: Technique, device: str = "cpu") -> Technique:
        try:
            return super().resolve_technique(requested, device)
        except UnsupportedTechnique as exc:
            if requested.attention is not None:
                raise UnsupportedTechnique(
                    f"{exc}; vLLM chooses its own attention backend (CPU_ATTN on CPU), leave technique.attention "
                    "null"
                ) from exc
            raise

    def __init__(self, model: ModelSpec, technique: Technique, options: VllmOptions, device: str) -> None:
        started = time.perf_counter()
        self.spec, self.technique, self.options, self.device = model, technique, options, device
        self.cuda = device.startswith("cuda")
        if technique.graphs == Graphs.cuda_graphs and not self.cuda:
            raise UnsupportedTechnique("engine 'vllm': graphs=cuda_graphs needs a CUDA device")
        if model.dtype not in VLLM_DTYPES:
            raise ValueError(f"engine 'vllm': dtype {model.dtype!r} is not one of {sorted(VLLM_DTYPES)}")
        self.env_applied = set_environment(options, self.cuda)
        model_path, load_format, self.tmpdir = model_source(model)

        import vllm
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        self.vllm_version = vllm.__version__
        self.recorder = StatsRecorder()
        kv_bytes = options.kv_cache_bytes
        if kv_bytes is None and not self.cuda and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv_bytes = DEFAULT_CPU_KV_BYTES  # else vLLM sizes it from VLLM_CPU_KVCACHE_SPACE (GiB)
        self.engine_args: dict[str, Any] = {
            "model": model_path,
            "load_format": load_format,
            "skip_tokenizer_init": True,
            "dtype": VLLM_DTYPES[model.dtype],
            "seed": options.seed,
            "max_model_len": options.max_model_len,
            "max_num_seqs": options.max_num_seqs,
            "max_num_batched_tokens": options.max_num_batched_tokens,
            "block_size": options.block_size,
            "kv_cache_memory_bytes": kv_bytes,
            "gpu_memory_utilization": options.gpu_memory_utilization,
            "enable_prefix_caching": bool(technique.prefix_cache),
            "enable_chunked_prefill": bool(technique.chunked_prefill),
            "enforce_eager": technique.graphs == Graphs.eager,
            "generation_config": "vllm",  # no checkpoint sampling defaults: every request says what it wants
            "disable_log_stats": False,  # scheduler stats feed stats() (KV usage, prefix-cache hits)
            # CPU: the model in a spawned worker process, where vLLM's LD_PRELOAD (libgomp, tcmalloc) and thread
            # binding take effect; vLLM forces this itself when its engine core runs in a process of its own
            "distributed_executor_backend": None if self.cuda else "mp",
        }
        if technique.graphs == Graphs.compile and self.cuda:
            self.engine_args["compilation_config"] = {"cudagraph_mode": "NONE"}  # torch.compile without graphs
        args = EngineArgs(**{k: v for k, v in self.engine_args.items() if v is not None or k == "max_model_len"})
        self.llm = LLMEngine.from_engine_args(
            args, stat_loggers=[lambda vllm_config, engine_index=0: self.recorder],
            enable_multiprocessing=options.multiprocessing,
        )
        config = self.llm.vllm_config
        self.max_model_len: int = config.model_config.max_model_len
        self.vocab_size: int = config.model_config.get_vocab_size()
        self.block_size: int = config.cache_config.block_size
        self.num_blocks: int | None = config.cache_config.num_gpu_blocks
        self.compilation_mode = str(getattr(config.compilation_config.mode, "name", config.compilation_config.mode))
        self.eos_ids = eos_token_ids(getattr(config.model_config.hf_config, "eos_token_id", None), model_path)
        self.calls = 0
        self.startup_s = time.perf_counter() - started

    # --- set-up ------------------------------------------------------------------------------------------

    # --- the contract ------------------------------------------------------------------------------------

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_ids[0] if self.eos_ids else None

    def is_idle(self) -> bool:
        return not self.llm.has_unfinished_requests()

    def _max_kv_tokens(self) -> int | None:
        return self.num_blocks * self.block_size if self.num_blocks else None

    def _sampling(self, s: Any) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        stops = list(dict.fromkeys(list(s.stop_token_ids) + ([] if s.ignore_eos else list(self.eos_ids))))
        return SamplingParams(
            max_tokens=s.max_tokens,
            temperature=float(s.temperature),
            top_k=int(s.top_k),  # 0 = off in vLLM too
            top_p=float(s.top_p),
            seed=None if s.seed is None else int(s.seed),
            stop_token_ids=stops,
            ignore_eos=bool(s.ignore_eos),
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
        )

    def generate(self, requests: Sequence[Request], progress: ProgressFn | None = None) -> list[RequestOutput]:
        arrival = now()
        self.calls += 1
        outputs = reject_bad(requests, arrival,
                             lambda r: request_error(r, self.vocab_size, self.max_model_len, self._max_kv_tokens()))
        pending: dict[str, int] = {}
        tokens: dict[int, list[int]] = {}
        times: dict[int, list[float]] = {}
        failed = sum(output is not None for output in outputs)
        params: dict[int, Any] = {}
        for index, request in enumerate(requests):
            if outputs[index] is not None:
                continue
            try:
                params[index] = self._sampling(request.sampling)
            except Exception as exc:  # vLLM's own checks (e.g. a seed beyond its range)
                outputs[index] = RequestOutput(request.request_id, len(request.prompt_token_ids), [], [], arrival,
                                               "error", f"vLLM refused the request: {type(exc).__name__}: {exc}")
                failed += 1
        if progress and failed:
            progress(failed)
        try:
            for index, sampling in params.items():
                request = requests[index]
                key = f"im{self.calls}-{index}"
                try:
                    self.llm.add_request(key, {"prompt_token_ids": [int(t) for t in request.prompt_token_ids]},
                                         sampling)  # fmt: skip
                except Exception as exc:
                    outputs[index] = RequestOutput(request.request_id, len(request.prompt_token_ids), [], [],
                                                   arrival, "error",
                                                   f"vLLM refused the request: {type(exc).__name__}: {exc}")
                    if progress:
                        progress(1)
                    continue
                pending[key] = index
                tokens[index], times[index] = [], []
            while self.llm.has_unfinished_requests():
                step_outputs = self.llm.step()
                stamp = now()
                finished = 0
                for out in step_outputs:
                    index = pending.get(out.request_id)
                    if index is None:
                        continue
                    completion = out.outputs[0]
                    new = list(completion.token_ids)
                    tokens[index] += new
                    times[index] += [stamp] * len(new)
                    if out.finished:
                        request = requests[index]
                        reason = completion.finish_reason or "length"
                        outputs[index] = RequestOutput(request.request_id, len(request.prompt_token_ids),
                                                       tokens[index], times[index], arrival,
                                                       reason if reason in ("length", "stop") else "error",
                                                       None if reason in ("length", "stop") else f"vLLM: {reason}")
                        finished += 1
                if progress and finished:
                    progress(finished)
        except BaseException:
            self._abort([k for k, i in pending.items() if outputs[i] is None])
            raise
        for key, index in pending.items():  # should not happen: the loop ended with a request unfinished
            if outputs[index] is None:
                request = requests[index]
                outputs[index] = RequestOutput(request.request_id, len(request.prompt_token_ids), tokens[index],
                                               times[index], arrival, "error", "vLLM returned no final output")
        return outputs  # type: ignore[return-value]

    def score(self, sequences: Sequence[Sequence[int]]) -> list[ScoredSequence]:
        """Teacher-forced log-probs from vLLM's prompt_logprobs (raw log-softmax of the model's logits), with
        one extra top entry so the rank of every token is known: is_greedy = rank 1."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        checked = checked_sequences(sequences, self.vocab_size, self.max_model_len)
        self.calls += 1
        results: list[ScoredSequence | None] = [None] * len(checked)
        keys = {}
        for index, seq in enumerate(checked):
            if len(seq) < 2:
                results[index] = ScoredSequence([], [])
                continue
            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False,
                                    output_kind=RequestOutputKind.FINAL_ONLY)  # fmt: skip
            key = f"im{self.calls}-score-{index}"
            self.llm.add_request(key, {"prompt_token_ids": seq}, params)
            keys[key] = index
        try:
            while self.llm.has_unfinished_requests():
                for out in self.llm.step():
                    index = keys.get(out.request_id)
                    if index is None or not out.finished:
                        continue
                    seq = checked[index]
                    logprobs, greedy = [], []
                    for position, entry in enumerate(out.prompt_logprobs[1:], start=1):
                        chosen = entry[seq[position]]
                        logprobs.append(float(chosen.logprob))
                        greedy.append(chosen.rank == 1)
                    results[index] = ScoredSequence(logprobs, greedy)
        except BaseException:
            self._abort([k for k, i in keys.items() if results[i] is None])
            raise
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"score: vLLM returned no prompt log-probs for sequences {missing}")
        return results  # type: ignore[return-value]

    def _abort(self, request_ids: list[str]) -> None:
        """Drop what vLLM still holds of a call that failed, so the next call starts idle."""
        try:
            if request_ids:
                self.llm.abort_request(request_ids)
        except Exception:  # the original failure is what the caller must see
            pass

    def stats(self) -> dict[str, Any]:
        recorder = self.recorder
        queries, hits = recorder.prefix_queries, recorder.prefix_hits
        stats: dict[str, Any] = {
            "vllm_version": self.vllm_version,
            "startup_s": round(self.startup_s, 3),
            "model_random_weights": self.spec.is_random,
            "max_model_len": self.max_model_len,
            "block_size": self.block_size,
            "num_kv_blocks": self.num_blocks,
            "kv_capacity_tokens": self._max_kv_tokens(),
            "kv_cache_bytes": self.engine_args.get("kv_cache_memory_bytes"),
            "kv_cache_usage_last": recorder.kv_usage_last,
            "kv_cache_usage_peak": recorder.kv_usage_peak,
            "prefix_cache_queries_tokens": queries,
            "prefix_cache_hits_tokens": hits,
            "prefix_cache_hit_rate": hits / queries if queries else None,
            "num_preemptions": recorder.preemptions,
            "compilation_mode": self.compilation_mode,
            "attention_backend": "vLLM's choice (CPU_ATTN on CPU)" if not self.cuda else "vLLM's choice",
            "multiprocessing": self.options.multiprocessing,
            "env": self.env_applied,
            "engine_args": {k: v for k, v in self.engine_args.items() if k != "model"},
        }
        stats["peak_memory_bytes"] = process_tree_rss()
        return stats

    def memory_monitor(self, device: str) -> Any:
        return TreeMemoryMonitor(device)

    def close(self) -> None:
        """Shut vLLM down and make sure none of its processes outlive the engine."""
        import psutil

        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            children = psutil.Process().children(recursive=True)
            try:
                llm.engine_core.shutdown()
            finally:
                del llm
                _, alive = psutil.wait_procs(children, timeout=20)
                for proc in alive:  # vLLM's own processes, started by this engine
                    try:
                        proc.kill()
                    except psutil.NoSuchProcess:
                        pass
                psutil.wait_procs(alive, timeout=5)
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
