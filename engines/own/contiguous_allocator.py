"""Contiguous KV (the pre-vLLM way): each sequence reserves one region of `max_model_len` tokens up front.

The pool is cut into equal regions of consecutive blocks, so the same attention code runs over it; a
sequence's block table is simply its region. The unused tail of each region is the waste paging removes.
"""

from __future__ import annotations

from engines.own.sequence import Sequence


class ContiguousAllocator:
    prefix_cache = False

    def __init__(self, num_blocks: int, block_size: int, max_model_len: int) -> None:
        self.block_size = block_size
        self.blocks_per_region = -(-max_model_len // block_size)
        num_regions = num_blocks // self.blocks_per_region
        if num_regions < 1:
            raise ValueError(
                f"KV pool of {num_blocks} blocks cannot hold one contiguous region of {max_model_len} tokens"
            )
        self.total_blocks = num_blocks
        self.free_regions: list[int] = list(range(num_regions - 1, -1, -1))
        self.num_regions = num_regions
        self.lookups = self.hits = 0

    @property
    def num_blocks(self) -> int:
        return self.total_blocks

    @property
    def num_used_blocks(self) -> int:
        return (self.num_regions - len(self.free_regions)) * self.blocks_per_region

    @property
    def num_free_blocks(self) -> int:
        return self.num_blocks - self.num_used_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return self.blocks_per_region

    def lookup_prefix(self, seq: Sequence) -> list[int]:
        return []

    def allocate(self, seq: Sequence, num_tokens: int, cached: list[int] = ()) -> bool:
        if seq.block_table:
            return num_tokens <= self.blocks_per_region * self.block_size
        if not self.free_regions:
            return False
        first = self.free_regions.pop() * self.blocks_per_region
        seq.block_table.extend(range(first, first + self.blocks_per_region))
        return True

    def record_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        return None

    def register_computed_blocks(self, seq: Sequence) -> None:
        return None

    def free(self, seq: Sequence) -> None:
        if seq.block_table:
            self.free_regions.append(seq.block_table[0] // self.blocks_per_region)
        seq.block_table.clear()

    def hit_rate(self) -> float:
        return 0.0
