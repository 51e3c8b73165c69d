"""The decoder-only transformer (Llama family) over packed tokens and a paged KV cache.

Projections are fused on load (q|k|v and gate|up) so each layer runs two big matmuls instead of five.
All math follows HF's Llama: RMSNorm in float32, rotate-half RoPE, SwiGLU, residual adds in model dtype.
"""

from __future__ import annotations

from itertools import islice

import torch
import torch.nn.functional as F
from torch import nn

from engines.own.attn_metadata import AttnMetadata
from engines.own.architecture import ModelConfig
from engines.own.quant.linear import Linear
from engines.own.rope import apply_rope, cos_sin_table, signed_sin


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's Llama RMSNorm: normalise in float32, round to the model dtype, then scale (one fused op in fp32)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)


class TorchLayerOps:
    """A decoder layer's elementwise work, and the LM head, in torch ops (any device). The C++ extension of the
    CPU (kernels/cpu_kernels.py) offers the same functions, one call each, rounding the same way."""

    @staticmethod
    def add_rms_norm(
        x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rms_norm(x + residual), x + residual), the sum in the model dtype as HF's residual adds."""
        if residual is not None:
            x = residual + x
        return rms_norm(x, weight, eps), x

    rope = staticmethod(apply_rope)

    @staticmethod
    def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
        """SwiGLU's silu(gate) * up over the fused projection's [gate | up] halves."""
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    lm_head = staticmethod(F.linear)  # hidden rows [M, K] x weight [vocab, K] -> [M, vocab]

    @staticmethod
    def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
        """Each row's greedy token (int64 [N]): the first of equal maxima, a NaN before any number."""
        return logits.argmax(dim=-1)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.eps = c.rms_norm_eps
        qkv_rows = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        self.input_norm = nn.Parameter(torch.ones(c.hidden_size))
        # Linear layers, so technique.quant can swap them for quantized ones (engines/own/quant)
        self.qkv = Linear(c.hidden_size, qkv_rows, bias=c.qkv_bias)
        self.q_norm = nn.Parameter(torch.ones(c.head_dim)) if c.qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(c.head_dim)) if c.qk_norm else None
        self.o = Linear(c.num_heads * c.head_dim, c.hidden_size)
        self.post_attn_norm = nn.Parameter(torch.ones(c.hidden_size))
        self.gate_up = Linear(c.hidden_size, 2 * c.intermediate_size)
        self.down = Linear(c.intermediate_size, c.hidden_size)

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttnMetadata,
        attention,
        ops,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it): the next layer (or the final norm)
        adds the two, fused with its norm."""
        tokens = hidden.shape[0]
        hidden, residual = ops.add_rms_norm(hidden, residual, self.input_norm, self.eps)
        qkv = self.qkv(hidden)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        qk, v = qkv.split((q_size + kv_size, kv_size), dim=-1)
        qk = qk.view(tokens, self.num_heads + self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            qk = torch.cat([rms_norm(qk[:, : self.num_heads], self.q_norm, self.eps),
                            rms_norm(qk[:, self.num_heads :], self.k_norm, self.eps)], dim=1)  # fmt: skip
        qk = ops.rope(qk, cos, sin)  # q and k heads rotate together: one set of ops for both
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        attn = attention.forward(q, k, v, kv_cache[0], kv_cache[1], meta, self.head_dim**-0.5)
        hidden, residual = ops.add_rms_norm(self.o(attn.reshape(tokens, q_size)), residual, self.post_attn_norm,
                                            self.eps)  # fmt: skip
        return self.down(ops.silu_mul(self.gate_up(hidden))), residual


class CausalLM(nn.Module):
    """Token ids + positions + attention metadata -> hidden states; `logits` maps chosen rows to the vocab."""

    def __init__(self, config: ModelConfig, max_position: int) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Parameter(torch.empty(config.vocab_size, config.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.Parameter(torch.ones(config.hidden_size))
        self.lm_head = None if config.tie_word_embeddings else nn.Parameter(torch.empty_like(self.embed))
        self.packed_lm_head: nn.Module | None = None  # CPU: a packed copy (quant/apply.py)
        self.set_rope_tables(*cos_sin_table(config.rope, config.head_dim, max_position))
        self.attention = None  # set by the engine: an attention backend (engines/own/attention.py)
        self.ops = TorchLayerOps  # or, set by the engine on the CPU, the C++ extension (same functions)
        self.kv_caches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.block_size = 16

    def set_rope_tables(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """float32 tables by position; sin is stored with rotate-half's sign folded in (see `apply_rope`)."""
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin_signed", signed_sin(sin), persistent=False)

    def bind(self, attention, kv_caches: list[tuple[torch.Tensor, torch.Tensor]], block_size: int) -> None:
        self.attention, self.kv_caches, self.block_size = attention, kv_caches, block_size

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata) -> torch.Tensor:
        meta.backend_state = self.attention.prepare(meta, self.block_size)
        return self.forward_prepared(input_ids, positions, meta)

    def forward_prepared(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata, num_layers: int | None = None
    ) -> torch.Tensor:
        """The layers alone (metadata already prepared): the part a CUDA graph captures.
        `num_layers` runs only the first layers before the final norm (the early-exit self-draft)."""
        hidden = F.embedding(input_ids, self.embed)
        dtype = hidden.dtype
        cos, sin = self.rope_cos[positions].to(dtype), self.rope_sin_signed[positions].to(dtype)
        residual = None
        for layer, kv_cache in islice(zip(self.layers, self.kv_caches), num_layers):
            hidden, residual = layer(hidden, residual, cos, sin, kv_cache, meta, self.attention, self.ops)
        return self.ops.add_rms_norm(hidden, residual, self.final_norm, self.config.rms_norm_eps)[0]

    def lm_head_weight(self) -> torch.Tensor:
        return self.embed if self.lm_head is None else self.lm_head

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits `[N, vocab]` for final-norm hidden rows `[N, hidden]`."""
        if self.packed_lm_head is not None:
            return self.packed_lm_head(hidden).float()
        return self.ops.lm_head(hidden, self.lm_head_weight()).float()
