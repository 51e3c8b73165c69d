"""Block manager: reference counts, free/used accounting, prefix hash chain with verification, LRU eviction."""

from __future__ import annotations

from engines.base import SamplingParams
from engines.own import block_manager
from engines.own.block_manager import BlockManager
from engines.own.contiguous_allocator import ContiguousAllocator
from engines.own.sequence import Sequence

BS = 4


def seq(tokens: list[int], name: str = "s") -> Sequence:
    return Sequence(name, list(tokens), len(tokens), SamplingParams(), 0.0)


def computed(manager: BlockManager, s: Sequence, tokens: int | None = None) -> None:
    """Pretend a forward pass wrote the KV of `tokens` (default: all) tokens of `s`."""
    s.num_computed_tokens = s.num_tokens if tokens is None else tokens
    manager.register_computed_blocks(s)


def test_allocate_grows_block_table_and_accounts_used_and_free_blocks():
    manager = BlockManager(num_blocks=10, block_size=BS, prefix_cache=False)
    s = seq(range(9))
    assert manager.allocate(s, 9)
    assert len(s.block_table) == 3 and len(set(s.block_table)) == 3
    assert (manager.num_used_blocks, manager.num_free_blocks) == (3, 7)
    assert manager.allocate(s, 13)  # one more block for tokens 12..13
    assert len(s.block_table) == 4 and manager.num_used_blocks == 4
    manager.free(s)
    assert s.block_table == [] and (manager.num_used_blocks, manager.num_free_blocks) == (0, 10)


def test_allocation_that_does_not_fit_changes_nothing():
    manager = BlockManager(num_blocks=3, block_size=BS, prefix_cache=False)
    a, b = seq(range(8), "a"), seq(range(8), "b")
    assert manager.allocate(a, 8)
    assert not manager.allocate(b, 8)
    assert b.block_table == [] and manager.num_used_blocks == 2


def test_shared_prefix_blocks_are_reference_counted_and_freed_by_the_last_user():
    manager = BlockManager(num_blocks=8, block_size=BS, prefix_cache=True)
    a = seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    manager.allocate(a, a.num_tokens)
    computed(manager, a)
    b = seq([1, 2, 3, 4, 5, 6, 7, 8, 42, 43], "b")
    hits = manager.lookup_prefix(b)
    assert hits == a.block_table[:2]
    assert manager.allocate(b, b.num_tokens, hits)
    assert b.block_table[:2] == a.block_table[:2]
    assert [manager.blocks[i].ref_count for i in hits] == [2, 2]
    assert manager.num_used_blocks == 3 + 1  # a's three blocks plus b's own third block
    manager.free(a)
    assert [manager.blocks[i].ref_count for i in hits] == [1, 1]
    assert manager.num_used_blocks == 3
    manager.free(b)
    assert manager.num_free_blocks == 8


def test_prefix_lookup_never_covers_the_block_with_the_last_prompt_token():
    manager = BlockManager(num_blocks=8, block_size=BS, prefix_cache=True)
    a = seq(range(8), "a")
    manager.allocate(a, 8)
    computed(manager, a)
    assert len(manager.lookup_prefix(seq(range(8), "same"))) == 1  # 8 tokens: block 2 holds the last one
    assert len(manager.lookup_prefix(seq(range(9), "longer"))) == 2


def test_blocks_are_registered_only_once_their_kv_is_written():
    manager = BlockManager(num_blocks=8, block_size=BS, prefix_cache=True)
    a = seq(range(12), "a")
    manager.allocate(a, 12)
    computed(manager, a, tokens=5)  # a chunk covering one full block
    assert len(manager.lookup_prefix(seq(range(12), "b"))) == 1
    computed(manager, a, tokens=12)
    assert len(manager.lookup_prefix(seq(range(13), "c"))) == 3


def test_hash_collision_is_caught_by_comparing_token_ids(monkeypatch):
    monkeypatch.setattr(block_manager, "chain_hash", lambda parent, tokens: 7)  # every block collides
    manager = BlockManager(num_blocks=8, block_size=BS, prefix_cache=True)
    a = seq([1, 2, 3, 4, 5], "a")
    manager.allocate(a, 5)
    computed(manager, a)
    assert manager.lookup_prefix(seq([9, 9, 9, 9, 5], "b")) == []
    assert manager.lookup_prefix(seq([1, 2, 3, 4, 5], "c")) == a.block_table[:1]


def test_freed_cached_blocks_are_reused_until_evicted_least_recently_freed_first():
    manager = BlockManager(num_blocks=4, block_size=BS, prefix_cache=True)
    old, new = seq([1] * 5, "old"), seq([2] * 5, "new")
    for s in (old, new):
        manager.allocate(s, 5)
        computed(manager, s)
        manager.free(s)  # 'old' freed first
    assert manager.num_free_blocks == 4
    old_block, new_block = manager.lookup_prefix(seq([1] * 5)), manager.lookup_prefix(seq([2] * 5))
    assert old_block and new_block
    filler = seq([3] * 12, "filler")  # needs 3 blocks: 2 never-cached ones, then evicts one cached block
    assert manager.allocate(filler, 12)
    assert manager.lookup_prefix(seq([1] * 5)) == []  # the least recently freed one went
    assert manager.lookup_prefix(seq([2] * 5)) == new_block


def test_a_cached_free_block_revived_by_a_hit_leaves_the_free_pool():
    manager = BlockManager(num_blocks=2, block_size=BS, prefix_cache=True)
    a = seq([1, 2, 3, 4, 5], "a")
    manager.allocate(a, 5)
    computed(manager, a)
    manager.free(a)
    b = seq([1, 2, 3, 4, 6], "b")
    hits = manager.lookup_prefix(b)
    assert manager.allocate(b, 5, hits)
    assert manager.num_free_blocks == 0 and manager.blocks[hits[0]].ref_count == 1
    assert not manager.allocate(seq([7], "c"), 1)


def test_hit_rate_is_hit_tokens_over_looked_up_tokens():
    manager = BlockManager(num_blocks=8, block_size=BS, prefix_cache=True)
    manager.record_lookup(10, 0)
    manager.record_lookup(10, 8)
    assert manager.hit_rate() == 0.4


def test_contiguous_allocator_reserves_a_whole_region_per_sequence():
    allocator = ContiguousAllocator(num_blocks=10, block_size=BS, max_model_len=16)  # 2 regions of 4 blocks
    a, b, c = seq([1], "a"), seq([1], "b"), seq([1], "c")
    assert allocator.allocate(a, 1) and allocator.allocate(b, 1)
    assert a.block_table == list(range(a.block_table[0], a.block_table[0] + 4))
    assert allocator.num_used_blocks == 8
    assert not allocator.allocate(c, 1)
    assert allocator.allocate(a, 16) and not allocator.allocate(a, 17)
    allocator.free(a)
    assert allocator.allocate(c, 1) and allocator.num_free_blocks == 2
