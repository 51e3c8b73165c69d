"""The model's linear layers: `y = x @ W.T (+ b)` with W kept as floats, int8 codes or packed int4 codes.

Each quantized layer runs a weight-only matmul that reads the integer codes directly: torch's own CPU kernels
(`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) on the CPU, our Triton kernels (kernels/triton_quant.py)
on CUDA. Backend "torch" or "triton" can also be chosen by hand (Triton on CPU under TRITON_INTERPRET=1).

torch's CPU kernels are vectorised for bfloat16/float16 activations only: with float32 ones they take a scalar
path about 8x slower than the float32 matmul they replace (measured on this AVX-512 CPU). So a float32 model's
quantized layers compute in bfloat16 on the CPU (`compute_dtype`), and cast the result back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engines.own.kernels import cpu_kernels
from engines.own.quant.formats import Int4Weight, Int8Weight, pack_nibbles

BACKENDS = ("torch", "triton")
INT4_ROW_MULTIPLE = 16  # torch's CPU int4 packing wants the output rows in multiples of 16
INT4_ZERO_CODE = 8  # torch's CPU int4 kernel decodes w = (q - 8) * scale + zero
INT8_COL_MULTIPLE = 16  # torch's bfloat16 int8 kernel crashes (segfault) on widths like 100 or 130: zero-pad


def default_backend(device: torch.device) -> str:
    return "torch" if device.type == "cpu" else "triton"


def compute_dtype(dtype: torch.dtype, backend: str) -> torch.dtype:
    """The activation dtype a quantized layer computes in (see the module docstring)."""
    return torch.bfloat16 if backend == "torch" and dtype == torch.float32 else dtype


def _tensor_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class Linear(nn.Module):
    """Float weights, as loaded."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def weight_bytes(self) -> int:
        return _tensor_bytes(self.weight, self.bias)


def onednn_packing_available(dtype: torch.dtype) -> bool:
    """Whether this torch packs `dtype` weights for oneDNN here: its bf16 packing needs AVX-512 (BW, VL, DQ) or
    AVX-NE-CONVERT, so an AVX2-only CPU (AMD Zen 3, say) packs fp32 but not bf16."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    return dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


class PackedLinear(nn.Module):
    """Float weights in oneDNN's blocked layout, for the CPU. In bfloat16, F.linear runs the same oneDNN matmul
    (bit-identical results) but re-lays out W on every call; in float32 it runs MKL's sgemm (same precision,
    another summation order). Measured here, 1 thread, SmolLM2's shapes: 15-35% faster at 32 rows, 0-20% at 256."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int) -> None:
        super().__init__()
        self.in_features = weight.shape[1]
        self.nbytes = _tensor_bytes(weight, bias)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed, self.bias,
                                                 "none", [], "")  # fmt: skip
        return out.view(*x.shape[:-1], -1)

    def weight_bytes(self) -> int:
        return self.nbytes


class TilePackedLinear(nn.Module):
    """Float weights packed in 16-row tiles for our C++ kernel (kernels/cpu_linear.cpp: AVX-512, bf16 on AMX
    tiles where the CPU has them; AVX2 + FMA): faster than oneDNN's packed matmul at decode sizes, level or a
    little slower at prefill sizes (the kernel's header has the numbers); on AVX2 bf16 is 5-8x F.linear's, which
    has no vector bf16 path there. fp32 sums in blocks of 64 k, closer to float64 than oneDNN or MKL. Each row's
    sum runs in the same order whatever the batch.

    `split` (fp32, AMX): W kept as three bf16 terms and x split likewise per call, their six leading products
    summed on AMX tiles (`packed_linear_split`): fp32-level error, 1.5x+ faster at 64 rows and more here but
    slower at a few rows (1.5x the weight bytes to read), so for prefill-heavy work such as scoring."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, split: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.nbytes = _tensor_bytes(weight, bias)
        self.split = split
        self.packed = (cpu_kernels.pack_for_linear_split if split else cpu_kernels.pack_for_linear)(weight.detach())
        padded = self.packed.shape[-4] * self.packed.shape[-2]
        self.bias = None if bias is None else F.pad(bias.detach().float(), (0, padded - self.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        rows = rows if rows.stride(-1) == 1 else rows.contiguous()
        run = cpu_kernels.packed_linear_split if self.split else cpu_kernels.packed_linear
        return run(rows, self.packed, self.bias, self.out_features).view(*x.shape[:-1], -1)

    def weight_bytes(self) -> int:
        return self.nbytes


def cpu_linear_layout(dtype: torch.dtype) -> str:
    """The fastest packed layout for float linears on this CPU: "cpp_tiles" (our kernel: AVX-512 with
    AVX512-BF16 for bf16, or AVX2 + FMA), else "onednn_packed" where this torch packs for oneDNN, else "plain"."""
    if cpu_kernels.packed_linear_available(dtype):
        return "cpp_tiles"
    return "onednn_packed" if onednn_packing_available(dtype) else "plain"


def split_fp32_unavailable(dtype: torch.dtype) -> str | None:
    """Why fp32 linears cannot run as bf16 splits on AMX tiles here (`TilePackedLinear(split=True)`), or None."""
    if dtype != torch.float32:
        return f"it is for float32 weights, these are {str(dtype).removeprefix('torch.')}"
    if not cpu_kernels.packed_linear_amx():
        return "this CPU (or this build, or the OS) gives no AMX-BF16 tiles"
    return None


def cpu_linear_instructions(dtype: torch.dtype, split: bool = False) -> str:
    """What our packed linear computes with here in `dtype` (the engine records it next to the layout)."""
    if split:
        return "AMX-BF16 tiles, fp32 as three bf16 terms (six products; the LM head: AVX-512 FMA)"
    if dtype == torch.bfloat16 and cpu_kernels.packed_linear_amx():
        return "AMX-BF16 tiles (K a multiple of 32; else AVX512-BF16)"
    if cpu_kernels.packed_linear_avx2():
        return "AVX2 FMA" + (" (bf16 widened to fp32)" if dtype == torch.bfloat16 else "")
    return "AVX512-BF16" if dtype == torch.bfloat16 else "AVX-512 FMA"


def cpu_packed_linear(weight: torch.Tensor, bias: torch.Tensor | None, batch_hint: int,
                      split: bool = False) -> tuple[nn.Module, str]:  # fmt: skip
    """The float linear in `cpu_linear_layout`'s layout, and that layout's name; `split`: see `TilePackedLinear`
    (fp32 on AMX, K a multiple of 32)."""
    layout = cpu_linear_layout(weight.dtype)
    if layout == "plain":
        raise RuntimeError("no packed float linear here: no AVX2 or AVX-512 for ours and no oneDNN packing in "
                           "this torch")
    if layout == "cpp_tiles":
        return TilePackedLinear(weight, bias, split and weight.shape[1] % 32 == 0), layout
    return PackedLinear(weight, bias, batch_hint), layout


class Int8Linear(nn.Module):
    """int8 codes `[N, K]`, one scale per output row."""

    def __init__(self, q: Int8Weight, bias: torch.Tensor | None, dtype: torch.dtype, backend: str) -> None:
        super().__init__()
        self.backend = _checked(backend)
        self.compute_dtype = compute_dtype(dtype, backend)
        self.in_features = q.codes.shape[1]
        width = -(-self.in_features // INT8_COL_MULTIPLE) * INT8_COL_MULTIPLE if backend == "torch" else self.in_features
        self.register_buffer("codes", F.pad(q.codes, (0, width - self.in_features)).contiguous())
        # torch's kernel wants scales in the activation dtype; ours reads float32
        self.register_buffer("scale", q.scale.to(self.compute_dtype if backend == "torch" else torch.float32))
        self.register_buffer("bias", None if bias is None else bias.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "torch":
            flat = x.reshape(-1, x.shape[-1]).to(self.compute_dtype)
            flat = F.pad(flat, (0, self.codes.shape[1] - self.in_features))
            out = torch.ops.aten._weight_int8pack_mm(flat, self.codes, self.scale)
            out = out.to(x.dtype).view(*x.shape[:-1], -1)
        else:
            from engines.own.kernels.triton_quant import int8_matmul

            out = int8_matmul(x, self.codes, self.scale)
        return out if self.bias is None else out + self.bias

    def weight_bytes(self) -> int:
        return _tensor_bytes(*self.buffers())


class Int4Linear(nn.Module):
    """int4 codes packed two per byte, a scale and an offset per row and group of `group_size` inputs."""

    def __init__(self, q: Int4Weight, bias: torch.Tensor | None, dtype: torch.dtype, backend: str) -> None:
        super().__init__()
        self.backend = _checked(backend)
        self.compute_dtype = compute_dtype(dtype, backend)
        self.out_features, self.in_features = q.codes.shape[0], q.in_features
        self.padded_in, self.group_size = q.codes.shape[1], q.group_size
        if backend == "torch":
            rows = -(-self.out_features // INT4_ROW_MULTIPLE) * INT4_ROW_MULTIPLE
            codes = F.pad(q.codes, (0, 0, 0, rows - self.out_features)).to(torch.int32)
            scale = F.pad(q.scale, (0, 0, 0, rows - self.out_features))
            zero = F.pad(q.low, (0, 0, 0, rows - self.out_features)) + INT4_ZERO_CODE * scale
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
            self.register_buffer("packed", packed)
            scale_zero = torch.stack([scale.T, zero.T], dim=-1).to(self.compute_dtype).contiguous()
            self.register_buffer("scale_zero", scale_zero)
        else:
            self.register_buffer("packed", pack_nibbles(q.codes).contiguous())
            self.register_buffer("scale", q.scale.contiguous())
            self.register_buffer("low", q.low.contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "torch":
            flat = F.pad(x.reshape(-1, x.shape[-1]).to(self.compute_dtype), (0, self.padded_in - self.in_features))
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scale_zero)
            out = out[:, : self.out_features].to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        else:
            from engines.own.kernels.triton_quant import int4_matmul

            out = int4_matmul(x, self.packed, self.scale, self.low, self.group_size)
        return out if self.bias is None else out + self.bias

    def weight_bytes(self) -> int:
        return _tensor_bytes(*self.buffers())


def _checked(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown quantized matmul backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    return backend
