"""The KV pool: its size from a memory budget, the per-layer cache tensors, and what fits in a budget."""

from __future__ import annotations

import torch

from engines.own.architecture import ModelConfig

CPU_RAM_FRACTION = 0.25  # default CPU pool: at most this share of available RAM


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * element


def default_kv_budget(
    config: ModelConfig, dtype: torch.dtype, device: torch.device, wanted_tokens: int, gpu_fraction: float
) -> int:
    """CPU: enough for `wanted_tokens`, capped by a share of available RAM. CUDA: a fraction of free memory."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        # gpu_memory_utilization bounds weights + KV; weights are already resident, so take from what is free
        return max(int(free - (1 - gpu_fraction) * total), 0)
    import psutil

    return min(wanted_tokens * kv_bytes_per_token(config, dtype), int(psutil.virtual_memory().available * CPU_RAM_FRACTION))


def allocate_kv_caches(
    config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer `(k_cache, v_cache)`, each `[num_blocks, block_size, num_kv_heads, head_dim]`."""
    shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
    # torch.empty: on CPU, pages are committed only when a block is first written
    return [
        (torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
        for _ in range(config.num_layers)
    ]


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
