"""Decode rows are gathered in groups of similar context length: few groups (one SDPA call per group and
layer), every row in exactly one, and padding within DECODE_PADDING of what a group gathers."""

from __future__ import annotations

import random

from engines.own.attention import DECODE_PADDING, decode_row_groups


def test_similar_lengths_share_one_group_and_far_apart_ones_do_not():
    assert decode_row_groups(list(range(200, 232)), 16) == [list(range(32))]
    assert decode_row_groups([1000, 3, 1], 16) == [[2, 1], [0]]
    assert decode_row_groups([], 16) == []


def test_every_row_once_and_padding_bounded():
    rng = random.Random(0)
    for _ in range(50):
        lens = [rng.randint(1, 900) for _ in range(rng.randint(1, 64))]
        groups = decode_row_groups(lens, 16)
        assert sorted(r for g in groups for r in g) == list(range(len(lens)))
        for group in groups:
            blocks = [-(-lens[r] // 16) for r in group]
            gathered = max(blocks) * len(group)
            assert gathered - sum(blocks) <= DECODE_PADDING * gathered + 1e-9
