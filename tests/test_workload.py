"""Synthetic workloads: exact lengths, reproducible from the seed, recorded with a hash."""

from harness.config import LengthDist, Lengths, WorkloadConfig
from harness.workload import requests, synthesize

SPECIAL = {0, 1, 2}


def test_fixed_lengths_are_exact_and_special_tokens_never_appear():
    cfg = WorkloadConfig(input_len=Lengths(mean=40), output_len=Lengths(mean=7))
    w = synthesize(cfg, 5, vocab_size=100, special_ids=SPECIAL, seed=0)
    assert [len(p) for p in w.prompts] == [40] * 5 and w.output_lens == [7] * 5
    assert not SPECIAL & {t for p in w.prompts for t in p}
    assert all(0 <= t < 100 for p in w.prompts for t in p)


def test_same_seed_same_workload_and_hash_other_seed_differs():
    cfg = WorkloadConfig(input_len=Lengths(dist=LengthDist.uniform, low=8, high=64))
    a = synthesize(cfg, 6, 1000, SPECIAL, seed=3)
    b = synthesize(cfg, 6, 1000, SPECIAL, seed=3)
    c = synthesize(cfg, 6, 1000, SPECIAL, seed=4)
    assert a.prompts == b.prompts and a.hash == b.hash
    assert a.hash != c.hash


def test_uniform_and_normal_lengths_stay_in_range():
    uni = WorkloadConfig(input_len=Lengths(dist=LengthDist.uniform, low=5, high=9))
    nor = WorkloadConfig(input_len=Lengths(dist=LengthDist.normal, mean=20, std=50, low=3, high=30))
    for cfg in (uni, nor):
        w = synthesize(cfg, 200, 500, SPECIAL, seed=0)
        lo, hi = cfg.input_len.low, cfg.input_len.high
        assert all(lo <= len(p) <= hi for p in w.prompts)
    lens = {len(p) for p in synthesize(uni, 200, 500, SPECIAL, seed=0).prompts}
    assert lens == {5, 6, 7, 8, 9}  # inclusive bounds


def test_requests_carry_lengths_and_ignore_eos():
    cfg = WorkloadConfig(output_len=Lengths(mean=4), ignore_eos=True)
    w = synthesize(cfg, 3, 100, SPECIAL, seed=0)
    reqs = requests(w, cfg, "r0")
    assert [r.request_id for r in reqs] == ["r0-0", "r0-1", "r0-2"]
    assert all(r.sampling.max_tokens == 4 and r.sampling.ignore_eos for r in reqs)


def test_a_shared_prefix_starts_every_prompt_of_a_run_and_changes_between_runs():
    cfg = WorkloadConfig(input_len=Lengths(mean=5), shared_prefix_len=12)
    run = synthesize(cfg, 4, 1000, SPECIAL, seed=0)
    assert [len(p) for p in run.prompts] == [17] * 4
    assert len({tuple(p[:12]) for p in run.prompts}) == 1 and len({tuple(p[12:]) for p in run.prompts}) == 4
    assert synthesize(cfg, 4, 1000, SPECIAL, seed=1).prompts[0][:12] != run.prompts[0][:12]  # no cross-repeat hits
