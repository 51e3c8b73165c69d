"""The KV pool: its size from a memory budget, the per-layer cache tensors, and what fits in a budget."""

from __future__ import annotations

import torch

from engines.own.architecture import ModelConfig
from engines.own.attn_metadata import build_metadata
from engines.own.model import CausalLM

CPU_RAM_FRACTION = 0.25  # default CPU pool: at most this share of available RAM


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * element


def default_kv_budget(config: ModelConfig, dtype: torch.dtype, wanted_tokens: int) -> int:
    """CPU: enough for `wanted_tokens`, capped by a share of available RAM (CUDA: `gpu_kv_budget`)."""
    import psutil

    return min(wanted_tokens * kv_bytes_per_token(config, dtype), int(psutil.virtual_memory().available * CPU_RAM_FRACTION))


def gpu_kv_budget(total: int, utilization: float, weights: int, activation_peak: int, non_torch: int) -> int:
    """vLLM's rule: of `utilization * total` device bytes, what weights, the profiled activation peak of the
    largest step and memory outside torch's allocator (CUDA context, library workspaces) leave for KV."""
    return max(int(utilization * total) - weights - activation_peak - non_torch, 0)


def profile_step_memory(model: CausalLM, num_tokens: int, max_model_len: int, num_rows: int,
                        block_size: int, attention) -> int:  # fmt: skip
    """Run the largest step the scheduler can build (`num_tokens` prefill tokens in sequences of at most
    `max_model_len`, `num_rows` of them through the LM head) over a throwaway KV pool just big enough, so
    the allocator's peak shows what one step needs beyond weights and KV. Returns the throwaway pool's bytes."""
    device = model.embed.device
    lengths = [min(max_model_len, num_tokens - start) for start in range(0, num_tokens, max_model_len)]
    tables, slot, next_block = [], [], 0
    for length in lengths:
        blocks = -(-length // block_size)
        tables.append(list(range(next_block, next_block + blocks)))
        slot.extend(next_block * block_size + i for i in range(length))
        next_block += blocks
    caches = allocate_kv_caches(model.config, next_block, block_size, model.embed.dtype, device)
    model.bind(attention, caches, block_size)
    meta = build_metadata(slot, [], [], tables, lengths, lengths, device)
    ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])
    with torch.inference_mode():
        hidden = model(ids, positions, meta)
        model.logits(hidden[-min(num_rows, num_tokens):])
    model.bind(attention, [], block_size)
    return next_block * block_size * kv_bytes_per_token(model.config, model.embed.dtype)


def allocate_kv_caches(
    config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer `(k_cache, v_cache)`, each `[num_blocks, block_size, num_kv_heads, head_dim]`."""
    # One tensor for all layers (views per layer, each contiguous), so zeroing fresh blocks is one op.
    # torch.empty: on CPU, pages are committed only when a block is first written.
    pool = torch.empty(config.num_layers, 2, num_blocks, block_size, config.num_kv_heads, config.head_dim,
                       dtype=dtype, device=device)  # fmt: skip
    return [(layer[0], layer[1]) for layer in pool]


def zero_blocks(kv_caches: list[tuple[torch.Tensor, torch.Tensor]], blocks: torch.Tensor) -> None:
    """Zero `blocks` in every layer's K and V: one fill over the shared pool when the caches are its views."""
    pool = kv_caches[0][0]._base if kv_caches else None
    if pool is not None and pool.dim() == 6 and all(k._base is pool and v._base is pool for k, v in kv_caches):
        pool.index_fill_(2, blocks, 0)
        return
    for k_cache, v_cache in kv_caches:
        k_cache.index_fill_(0, blocks, 0)
        v_cache.index_fill_(0, blocks, 0)


def max_concurrent_sequences(
    num_blocks: int, block_size: int, seq_lens: list[int], kv_cache: str, max_model_len: int
) -> int:
    """How many sequences of this length mix (`seq_lens` repeated in order, each at its full length) hold KV
    at once in `num_blocks`: paged needs ceil(len / block_size) blocks each; contiguous reserves
    max_model_len for every sequence, whatever its length."""
    if kv_cache == "contiguous":
        return num_blocks // -(-max_model_len // block_size)
    blocks_each = [-(-length // block_size) for length in seq_lens]
    rounds, used = divmod(num_blocks, sum(blocks_each))
    count = rounds * len(blocks_each)
    for blocks in blocks_each:
        if blocks > used:
            break
        used -= blocks
        count += 1
    return count
