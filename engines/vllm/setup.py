"""What vLLM needs before it starts: environment variables (thread binding, preloads, KV space) and the
model folder (random weights become a config-only folder for vLLM's dummy loader)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from engines.base import ModelSpec
from engines.vllm.config import VllmOptions


def set_environment(options: VllmOptions, cuda: bool) -> dict[str, str | None]:
    """vLLM reads these when it is imported or starts its processes: set them first, record them."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if options.multiprocessing else "0"
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # no usage report to vLLM's servers
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not cuda:
        if options.kv_cache_bytes is not None:  # the option wins over the legacy variable
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = threads_bind(options.threads_bind)
        preload = ld_preload(options.ld_preload)
        if preload:
            current = os.environ.get("LD_PRELOAD", "")
            os.environ["LD_PRELOAD"] = ":".join(p for p in (current, preload) if p)
    return {
        name: os.environ.get(name)
        for name in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING",
                     "LD_PRELOAD", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")
    }  # fmt: skip


def threads_bind(bind: str) -> str:
    """`threads_bind="auto"`: the cell's torch thread count (set by the worker from `threads=`) as a list of
    usable cores, e.g. "0-1". vLLM's own "auto" keeps one core for its scheduler process: on 2 cores that
    leaves the model one thread."""
    if bind != "auto":
        return bind
    import torch

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    chosen = cores[: max(1, min(torch.get_num_threads(), len(cores)))]
    if chosen == list(range(chosen[0], chosen[-1] + 1)):
        return f"{chosen[0]}-{chosen[-1]}" if len(chosen) > 1 else str(chosen[0])
    return ",".join(str(c) for c in chosen)


def ld_preload(wanted: str) -> str:
    """What to add to LD_PRELOAD for vLLM's (spawned) processes; this process already runs without it."""
    if wanted != "auto":
        return wanted
    current = os.environ.get("LD_PRELOAD", "")
    found = []
    if "libtcmalloc" not in current:
        for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/lib/aarch64-linux-gnu"):
            if Path(folder, "libtcmalloc_minimal.so.4").is_file():
                found.append(str(Path(folder, "libtcmalloc_minimal.so.4")))
                break
    iomp = Path(sys.prefix, "lib", "libiomp5.so")
    if not any(name in current for name in ("libiomp", "libgomp", "libomp")) and iomp.is_file():
        found.append(str(iomp))
    return ":".join(found)


def model_source(model: ModelSpec) -> tuple[str, str, str | None]:
    """(folder, load_format, temporary folder to remove at close): the HF folder as is, or for random weights
    a folder holding only config.json, which vLLM fills with its dummy initializer (uniform noise;
    `model.seed` is not what seeds it)."""
    if not model.is_random:
        if model.path is None:
            raise ValueError(f"model '{model.name}' has neither a path nor a random_config")
        if str(model.path).endswith(".gguf"):
            raise ValueError("engine 'vllm' (0.32) has no GGUF loader: give it an HF safetensors folder")
        return str(model.path), "auto", None
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = dict(model.random_config)
    model_type = cfg.pop("model_type", "llama")
    config = AutoConfig.for_model(model_type, **cfg)
    if not getattr(config, "architectures", None):
        config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    folder = tempfile.mkdtemp(prefix="infermatrix-vllm-random-")
    config.save_pretrained(folder)
    return folder, "dummy", folder
