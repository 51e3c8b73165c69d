"""Paged KV blocks: reference counts, a free list, and an optional prefix cache.

Prefix cache: a full block is registered under a hash chained from its predecessor's hash and its own
token ids, but only once its KV is written. A later sequence whose prompt starts with the same blocks
shares them (ref count + 1) after the token ids are compared, so a hash collision can never serve wrong KV.
Freed registered blocks stay findable in an LRU list until a new allocation needs them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from engines.own.sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: int | None = None
    token_ids: tuple[int, ...] = ()


def chain_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((parent, token_ids))


def block_hashes(tokens: list[int], num_blocks: int, block_size: int) -> list[int]:
    """The prefix cache's chain hashes of the first `num_blocks` full blocks of `tokens`."""
    hashes, parent = [], None
    for i in range(num_blocks):
        parent = chain_hash(parent, tuple(tokens[i * block_size : (i + 1) * block_size]))
        hashes.append(parent)
    return hashes


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_cache: bool) -> None:
        self.block_size = block_size
        self.prefix_cache = prefix_cache
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: list[int] = list(range(num_blocks - 1, -1, -1))  # never-cached free blocks (stack)
        self.cached_free: OrderedDict[int, None] = OrderedDict()  # free but holding reusable KV, oldest first
        self.hash_to_block: dict[int, int] = {}
        self.lookups = 0  # prompt tokens looked up in the prefix cache
        self.hits = 0  # of those, tokens served from it

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids) + len(self.cached_free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks matching the start of `seq`; never the block holding its last token (its logits
        must be computed). Pure: takes no references."""
        if not self.prefix_cache:
            return []
        matchable = (seq.num_tokens - 1) // self.block_size
        found, parent = [], None
        for i in range(matchable):
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            parent = chain_hash(parent, tokens)
            block_id = self.hash_to_block.get(parent)
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            found.append(block_id)
        return found

    def allocate(self, seq: Sequence, num_tokens: int, cached: list[int] = ()) -> bool:
        """Grow `seq.block_table` to hold `num_tokens`, first taking the prefix blocks `cached` (only for a
        sequence with no blocks yet). All or nothing: returns False and changes nothing if blocks run out."""
        revived = sum(1 for b in cached if self.blocks[b].ref_count == 0)  # these leave the free pool too
        new = self.blocks_needed(num_tokens) - len(seq.block_table) - len(cached)
        if max(new, 0) + revived > self.num_free_blocks:
            return False
        for block_id in cached:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.cached_free[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(block.block_hash)
        for _ in range(new):
            seq.block_table.append(self._take_free())
        return True

    def record_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        self.lookups += prompt_tokens
        self.hits += hit_tokens

    def _take_free(self) -> int:
        if self.free_ids:
            block_id = self.free_ids.pop()
        else:  # evict the least recently freed cached block
            block_id, _ = self.cached_free.popitem(last=False)
            block = self.blocks[block_id]
            if self.hash_to_block.get(block.block_hash) == block_id:
                del self.hash_to_block[block.block_hash]
            block.block_hash, block.token_ids = None, ()
        self.blocks[block_id].ref_count = 1
        return block_id

    def register_computed_blocks(self, seq: Sequence) -> None:
        """Register every full block of `seq` whose KV is now written (call after a forward pass)."""
        if not self.prefix_cache:
            return
        full = min(seq.num_computed_tokens, seq.num_tokens) // self.block_size
        parent = seq.block_hashes[-1] if seq.block_hashes else None
        for i in range(len(seq.block_hashes), full):
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            parent = chain_hash(parent, tokens)
            block = self.blocks[seq.block_table[i]]
            if block.block_hash is None and parent not in self.hash_to_block:
                block.block_hash, block.token_ids = parent, tokens
                self.hash_to_block[parent] = block.block_id
            seq.block_hashes.append(parent)

    def free(self, seq: Sequence) -> None:
        """Drop `seq`'s references (in reverse, so a chain's tail is evicted before its head)."""
        for block_id in reversed(seq.block_table):
            self._release(block_id)
        seq.block_table.clear()
        seq.block_hashes.clear()

    def release_tail(self, seq: Sequence) -> None:
        """Free the blocks past those `seq`'s tokens occupy: lookahead slots for rejected speculative tokens."""
        keep = self.blocks_needed(seq.num_tokens)
        while len(seq.block_table) > keep:
            self._release(seq.block_table.pop())
        del seq.block_hashes[keep:]

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count > 0:
            return
        if block.block_hash is not None:
            self.cached_free[block_id] = None
        else:
            self.free_ids.append(block_id)

    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0
