"""technique.quant for engine=hf: which library quantizes the HF model, and how many bytes its weights take.

- torchao_int8: torchao's int8 weight-only (`Int8WeightOnlyConfig`) on every decoder Linear, after loading;
- nf4 / int8: bitsandbytes (`Linear4bit` NormalFloat4 / `Linear8bitLt`), quantized while loading;
- gptq / awq: a W4A16 checkpoint made once by `python -m engines.hf.quantize_checkpoint` (gptqmodel for GPTQ,
  llm-compressor for AWQ) and cached; a missing checkpoint skips the cell and names that command.
The libraries live in their own venv (engines/hf/install_quant.sh; engine.python points at it): a library that
is missing there, or fails on this device, skips the cell with its error text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engines.base import ModelSpec, Quant, UnsupportedTechnique

LIBRARY = {Quant.torchao_int8: "torchao", Quant.nf4: "bitsandbytes", Quant.int8: "bitsandbytes",
           Quant.gptq: "gptqmodel", Quant.awq: "llmcompressor"}  # fmt: skip
DEFAULT_GROUP = 64  # divides SmolLM2's 576 (128 does not) and every Llama width
BITS = {Quant.none: None, Quant.torchao_int8: 8, Quant.int8: 8, Quant.nf4: 4, Quant.gptq: 4, Quant.awq: 4}
INSTALL = "bash engines/hf/install_quant.sh (then engine.python=<the python it prints>)"


def require(quant: Quant) -> None:
    """UnsupportedTechnique with the import error when the method's library is missing here."""
    library = LIBRARY[quant]
    try:
        __import__(library)
    except Exception as exc:  # ImportError, or a library that fails while importing (CUDA-only builds)
        raise UnsupportedTechnique(f"engine 'hf': quant={quant.value} needs {library}, which does not import "
                                   f"here ({type(exc).__name__}: {exc}); {INSTALL}") from None  # fmt: skip


def load_kwargs(quant: Quant, dtype: torch.dtype) -> dict[str, Any]:
    """Extra from_pretrained arguments for methods that quantize while loading."""
    if quant not in (Quant.nf4, Quant.int8):
        return {}
    from transformers import BitsAndBytesConfig

    if quant == Quant.nf4:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config}


def quantize_loaded(model: torch.nn.Module, quant: Quant) -> None:
    """Methods applied to a loaded float model (torchao); the LM head stays float, as in the own engine."""
    if quant != Quant.torchao_int8:
        return
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and "lm_head" not in name)


def checkpoint_path(spec: ModelSpec, quant: Quant, group_size: int) -> Path:
    """The cached GPTQ/AWQ checkpoint of this model, or UnsupportedTechnique naming the command that makes it."""
    from engines.hf.quantize_checkpoint import cached_checkpoint, command_line

    if spec.path is None or not Path(spec.path).is_dir():
        raise UnsupportedTechnique(f"engine 'hf': quant={quant.value} quantizes a local model folder; "
                                   f"model '{spec.name}' has none")  # fmt: skip
    path = cached_checkpoint(Path(spec.path), quant.value, group_size)
    if path is None:
        raise UnsupportedTechnique(f"engine 'hf': no {quant.value} checkpoint of {spec.path} with group size "
                                   f"{group_size} is cached; make it with: {command_line(spec.path, quant.value, group_size)}")  # fmt: skip
    return path


def storage_bytes(tensor: torch.Tensor) -> int:
    """Bytes a (possibly tensor-subclass) weight really stores: torchao's subclasses report the logical float
    size through numel/element_size, so count their inner tensors instead."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(storage_bytes(getattr(tensor, name)) for name in names)
    total = tensor.numel() * tensor.element_size()
    state = getattr(tensor, "quant_state", None)  # bitsandbytes keeps 4-bit block scales beside the codes
    absmax = getattr(state, "absmax", None)
    return total + (absmax.numel() * absmax.element_size() if isinstance(absmax, torch.Tensor) else 0)


def weight_bytes(model: torch.nn.Module) -> int:
    """Parameters and buffers, each shared tensor once (tied embeddings), RoPE tables left out."""
    seen, total = set(), 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) not in seen and "rotary_emb" not in name:
            seen.add(id(tensor))
            total += storage_bytes(tensor)
    return total


def describe(model: torch.nn.Module, technique: Any) -> dict[str, Any]:
    """The result's `quantization` block for an HF model."""
    quant = technique.quant or Quant.none
    return {"method": quant.value, "bits": BITS[quant], "group_size": technique.quant_group_size,
            "library": LIBRARY.get(quant), "weight_bytes": weight_bytes(model)}  # fmt: skip
