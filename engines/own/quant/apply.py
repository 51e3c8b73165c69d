"""Swap a loaded model's float linear layers for quantized ones, and measure the weights that remain.

The decoder layers' projections are quantized; the embedding (tied to the LM head in SmolLM2) and the norms
stay in the model dtype. GGUF files quantize the embedding too, so compare weight bytes, not method names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engines.own.quant.formats import quantize_int4, quantize_int8
from engines.own.quant.linear import (
    Int4Linear,
    Int8Linear,
    Linear,
    PackedLinear,
    TilePackedLinear,
    compute_dtype,
    cpu_linear_layout,
    cpu_packed_linear,
    default_backend,
)

METHODS = ("none", "int8", "int4")
BITS = {"none": None, "int8": 8, "int4": 4}
DEFAULT_INT4_GROUP = 64  # divides SmolLM2's 576 and 1536 and every Llama width; torchao's anchor uses it too


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and quantized-weight buffer (not the RoPE tables or the KV cache)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    modules = (Int8Linear, Int4Linear, PackedLinear, TilePackedLinear)
    return total + sum(m.weight_bytes() for m in model.modules() if isinstance(m, modules))


def quantize_model(
    model: nn.Module, method: str, group_size: int | None = None, backend: str | None = None
) -> dict[str, Any]:
    """Quantize every `Linear` of `model` in place; returns what was done (the result's `quantization`)."""
    if method not in METHODS:
        raise ValueError(f"own engine quant '{method}' is not one of: {', '.join(METHODS)}")
    before = weight_bytes(model)
    first = next(model.parameters())
    backend = backend or default_backend(first.device)
    if method == "int4":
        group_size = group_size or DEFAULT_INT4_GROUP
    layers = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if method == "none" or not isinstance(child, Linear):
                continue
            setattr(parent, name, _quantized(child, method, group_size, backend))
            layers += 1
    return {
        "method": method, "bits": BITS[method], "group_size": group_size if method == "int4" else None,
        "kernel": None if method == "none" else _kernel_name(backend, method), "quantized_layers": layers,
        "weight_bytes": weight_bytes(model), "weight_bytes_unquantized": before,
        "activation_dtype": None if method == "none" else str(compute_dtype(first.dtype, backend)).removeprefix("torch."),
        "float_parts": "embedding / LM head, norms",
    }  # fmt: skip


def pack_float_linears(model: nn.Module, batch_hint: int, split_fp32: bool = False) -> str:
    """On the CPU in float32 or bfloat16, put every float `Linear` and the LM head (but not in float32 through
    oneDNN) in a packed layout (`cpu_packed_linear`: ours in 16-row tiles where the CPU has AVX-512 (with
    AVX512-BF16 for bfloat16) or AVX2 + FMA; else oneDNN's blocked one); `split_fp32`: the layers' fp32 weights (not the LM head's) as bf16
    terms for AMX tiles (`TilePackedLinear`). Returns the weight layout the model now runs with ("cpp_tiles",
    "onednn_packed" or "plain", with the reason)."""
    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype not in (torch.float32, torch.bfloat16):
        return "plain (packing is for float32 and bfloat16 on the CPU)"
    layout = cpu_linear_layout(first.dtype)
    if layout == "plain":
        return (f"plain (no AVX2 or AVX-512 here for our kernel and no oneDNN packing of "
                f"{str(first.dtype).removeprefix('torch.')} weights in this torch on this CPU)")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Linear):
                setattr(parent, name, cpu_packed_linear(child.weight, child.bias, batch_hint, split_fp32)[0])
    # the LM head too (2x faster at one row here): a packed copy, since the embedding lookup reads the plain rows
    # (tied in SmolLM2); costs vocab x hidden more weight bytes. Not in fp32 through oneDNN: its summation order
    # there moved logits 1.03e-4 from HF's (tests/own/test_own_matches_hf.py allows 1e-4), so that case runs
    # torch's own linear on every thread instead (the C++ layer ops' lm_head: same bits, 2x at one row)
    if first.dtype == torch.bfloat16 or layout == "cpp_tiles":
        model.packed_lm_head = cpu_packed_linear(model.lm_head_weight(), None, batch_hint)[0]
    return layout


def _quantized(layer: Linear, method: str, group_size: int | None, backend: str) -> nn.Module:
    weight, bias, dtype = layer.weight.detach(), layer.bias, layer.weight.dtype
    with torch.no_grad():
        if method == "int8":
            return Int8Linear(quantize_int8(weight), bias, dtype, backend)
        return Int4Linear(quantize_int4(weight, group_size), bias, dtype, backend)


def _kernel_name(backend: str, method: str) -> str:
    if backend == "triton":
        return f"triton {method}_matmul (engines/own/kernels/triton_quant.py)"
    return "torch.ops.aten._weight_int8pack_mm" if method == "int8" else "torch.ops.aten._weight_int4pack_mm_for_cpu"
