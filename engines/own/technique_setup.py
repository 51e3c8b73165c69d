"""Device checks for technique values, and wiring of the `graphs` technique into the model runner."""

from __future__ import annotations

import importlib.util
import os

import torch

from engines.base import Attention, Graphs, Quant, Technique, UnsupportedTechnique
from engines.own.model_runner import ModelRunner


def check_device_support(technique: Technique, device: torch.device) -> None:
    """Raise UnsupportedTechnique for values that cannot run on `device`, before any weights load."""
    on_cuda = device.type == "cuda"
    if technique.graphs == Graphs.cuda_graphs and not on_cuda:
        raise UnsupportedTechnique("engine 'own': graphs=cuda_graphs needs a CUDA device")
    if technique.attention == Attention.cpp and on_cuda:
        raise UnsupportedTechnique("engine 'own': attention=cpp is our CPU kernel; on CUDA use triton")
    if technique.attention == Attention.triton and not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise UnsupportedTechnique("engine 'own': attention=triton needs CUDA (or TRITON_INTERPRET=1 on CPU)")
    if technique.quant in (Quant.int8, Quant.int4) and on_cuda and importlib.util.find_spec("triton") is None:
        raise UnsupportedTechnique(f"engine 'own': quant={technique.quant.value} on CUDA runs our Triton kernels: "
                                   "pip install triton")  # fmt: skip


def apply_graphs(graphs: Graphs, runner: ModelRunner, device: torch.device, max_num_seqs: int) -> None:
    if graphs == Graphs.cuda_graphs:
        try:
            from engines.own.cuda_graphs import make_decode_runner
        except ImportError as exc:
            raise UnsupportedTechnique(f"engine 'own': graphs=cuda_graphs runner is not available: {exc}") from exc
        runner.decode_hook = make_decode_runner(runner.model, runner.block_size, device, max_num_seqs)
