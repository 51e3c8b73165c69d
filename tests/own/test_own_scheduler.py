"""Scheduler: token budget, chunked prefill, preemption by recompute, static vs continuous admission."""

from __future__ import annotations

from engines.base import SamplingParams
from engines.own.block_manager import BlockManager
from engines.own.scheduler import Scheduler, SchedulerConfig
from engines.own.sequence import Sequence, Status

BS = 4


def make(num_blocks=64, budget=32, max_seqs=8, chunked=True, static=False, batch_size=None, recompute=False):
    config = SchedulerConfig(max_seqs, budget, chunked, static, batch_size, recompute)
    return Scheduler(config, BlockManager(num_blocks, BS, prefix_cache=False))


def add(scheduler: Scheduler, prompt_len: int, max_tokens: int = 4, name: str = "s") -> Sequence:
    s = Sequence(name, list(range(prompt_len)), prompt_len, SamplingParams(max_tokens=max_tokens), 0.0)
    scheduler.add(s)
    return s


def step(scheduler: Scheduler):
    """Schedule, then do what the engine does after a forward pass (token 0 for every sampled sequence)."""
    batch = scheduler.schedule()
    for s, n in zip(batch.seqs, batch.num_new_tokens):
        s.num_computed_tokens += n
        if s.num_computed_tokens == s.num_tokens:
            s.token_ids.append(0)
            if s.num_generated >= s.sampling.max_tokens:
                s.finish("length")
    scheduler.finish_step(batch)
    return batch


def test_token_budget_is_respected_and_running_decodes_come_first():
    scheduler = make(budget=32)
    early = [add(scheduler, 5, name=f"e{i}") for i in range(3)]
    step(scheduler)  # prefills the three short prompts
    late = add(scheduler, 100, name="late")
    batch = step(scheduler)
    assert batch.seqs[:3] == early and batch.num_new_tokens[:3] == [1, 1, 1]
    assert batch.seqs[3] is late and batch.num_new_tokens[3] == 32 - 3  # the rest of the budget, chunked
    assert sum(batch.num_new_tokens) <= 32


def test_chunked_prefill_splits_a_long_prompt_over_steps():
    scheduler = make(budget=16)
    s = add(scheduler, 40)
    chunks = [step(scheduler).num_new_tokens[0] for _ in range(3)]
    assert chunks == [16, 16, 8]
    assert s.num_generated == 1  # the token comes with the last chunk only


def test_unchunked_prompt_waits_for_room_and_runs_alone_when_longer_than_the_budget():
    scheduler = make(budget=16, chunked=False)
    small = add(scheduler, 10, name="small")
    big = add(scheduler, 40, name="big")
    first = step(scheduler)
    assert first.seqs == [small]  # big does not fit beside it and is never split
    second = step(scheduler)
    assert second.seqs == [small]  # small's decode takes budget first, big still would not fit
    small.finish("stop")
    scheduler.finish_step(second)
    third = step(scheduler)
    assert third.seqs == [big] and third.num_new_tokens == [40]


def test_max_num_seqs_caps_the_running_set():
    scheduler = make(max_seqs=2)
    for i in range(4):
        add(scheduler, 3, name=str(i))
    assert len(step(scheduler)) == 2
    assert len(scheduler.running) == 2 and len(scheduler.waiting) == 2


def test_running_out_of_blocks_preempts_the_latest_admitted_sequence_for_recompute():
    scheduler = make(num_blocks=4, budget=64)
    first = add(scheduler, 8, max_tokens=8, name="first")  # 2 blocks
    second = add(scheduler, 8, max_tokens=8, name="second")  # 2 blocks: the pool is full
    step(scheduler)
    batch = step(scheduler)  # first needs a third block for token 9: second must go
    assert batch.num_preempted == 1 and batch.seqs == [first]
    assert second.status is Status.WAITING and second.num_computed_tokens == 0 and second.block_table == []
    assert second.num_tokens == 9  # its sampled token is kept and will be recomputed
    assert scheduler.waiting[0] is second and scheduler.total_preemptions == 1
    while first.status is not Status.FINISHED:
        step(scheduler)
    resumed = step(scheduler)
    assert resumed.seqs == [second] and resumed.num_new_tokens == [9]


def test_static_batching_admits_the_next_batch_only_after_the_whole_batch_finished():
    scheduler = make(static=True, batch_size=2)
    short = add(scheduler, 3, max_tokens=1, name="short")
    long = add(scheduler, 3, max_tokens=3, name="long")
    third = add(scheduler, 3, name="third")
    assert step(scheduler).seqs == [short, long]
    assert short.status is Status.FINISHED
    assert step(scheduler).seqs == [long]  # a slot is free, but 'third' waits for the batch to end
    assert step(scheduler).seqs == [long]
    assert step(scheduler).seqs == [third]


def test_continuous_batching_fills_a_freed_slot_at_once():
    scheduler = make(max_seqs=2)
    short = add(scheduler, 3, max_tokens=1, name="short")
    add(scheduler, 3, max_tokens=3, name="long")
    third = add(scheduler, 3, name="third")
    step(scheduler)
    assert short.status is Status.FINISHED
    assert third in step(scheduler).seqs


def test_kv_mode_none_recomputes_whole_sequences_every_step():
    scheduler = make(recompute=True, chunked=False)
    s = add(scheduler, 6, max_tokens=3)
    assert step(scheduler).num_new_tokens == [6]
    assert s.block_table == [] and s.num_computed_tokens == 0
    assert step(scheduler).num_new_tokens == [7]
    assert scheduler.kv.num_used_blocks == 0


def test_a_prompt_whose_next_block_a_running_prefill_is_writing_waits_one_step_and_reuses_it():
    config = SchedulerConfig(8, 64, True, False, None, False)
    scheduler = Scheduler(config, BlockManager(64, BS, prefix_cache=True))
    shared = list(range(100, 112))  # three full blocks every prompt opens with
    seqs = [Sequence(f"s{i}", shared + [i, 50 + i], 14, SamplingParams(max_tokens=2), 0.0) for i in range(3)]
    unrelated = Sequence("u", list(range(300, 310)), 10, SamplingParams(max_tokens=2), 0.0)
    for s in (*seqs, unrelated):
        scheduler.add(s)

    def step_and_register():
        batch = step(scheduler)
        for s in batch.seqs:
            if s.status is not Status.FINISHED:  # (the engine registers before freeing finished ones)
                scheduler.kv.register_computed_blocks(s)
        return batch

    first = step_and_register()
    assert first.seqs == [seqs[0]] and first.num_new_tokens == [14]  # the rest queue behind it (first come first)
    second = step_and_register()
    assert second.seqs == [seqs[0], seqs[1], seqs[2], unrelated]
    assert second.num_new_tokens == [1, 2, 2, 10]  # the shared 12 tokens come from the cache
    assert [s.prefix_hit_tokens for s in seqs] == [0, 12, 12]
