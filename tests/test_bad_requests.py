"""Bad requests never take a batch down (property test on both engines, embedded SmolLM2, fp32, greedy).

Hypothesis mixes 20-25 bad requests (every wrongly typed or out-of-range field, bad prompts, objects that
are not Requests) with a few good ones per call. For every call: generate() does not raise, each bad
request gets finish_reason "error" with a message naming the bad field, each good request gets exactly
the tokens it gets when generated alone, and the engine is idle afterwards.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engines import create_engine
from engines.base import Engine, ModelSpec, Request, SamplingParams, Technique

VOCAB, MAX_LEN = 49152, 8192  # SmolLM2-135M
EXAMPLES, MIN_BAD, MAX_BAD = 50, 20, 25  # at least 50 x 20 = 1,000 bad requests per engine
_rng = random.Random(0)
GOOD_PROMPTS = [tuple(_rng.randrange(10, 5000) for _ in range(n)) for n in (1, 2, 4, 7, 12)]


@dataclass(frozen=True)
class Good:
    prompt: tuple[int, ...]
    max_tokens: int

    def request(self, request_id: str) -> Request:
        return Request(request_id, list(self.prompt), SamplingParams(max_tokens=self.max_tokens))


@dataclass(frozen=True)
class Bad:
    field: str  # which field is wrong; the error message must name it
    value: Any

    def request(self, request_id: str) -> Any:
        """A request that is well formed except for `field` (for "request": not a Request at all)."""
        if self.field == "request":
            return self.value
        request = Request(request_id, [5, 6, 7], SamplingParams(max_tokens=2))
        if self.field in ("request_id", "prompt_token_ids", "sampling"):
            setattr(request, self.field, self.value)
        else:
            setattr(request.sampling, self.field, self.value)
        return request

    def output_id(self, request_id: str, index: int) -> str:
        """The request_id its error output must carry: its own str id, else its position."""
        own = self.value.get("request_id") if isinstance(self.value, dict) else None
        if self.field == "request":
            return own if isinstance(own, str) else f"<index {index}>"
        return f"<index {index}>" if self.field == "request_id" else request_id


def _with(field: str, values: st.SearchStrategy) -> st.SearchStrategy[Bad]:
    return values.map(lambda value: Bad(field, value))


ok_ids = st.lists(st.integers(0, VOCAB - 1), max_size=4)
anything = st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=3), st.lists(st.integers(), max_size=2))


def _injected(bad_ids: st.SearchStrategy) -> st.SearchStrategy[list]:
    """A prompt of valid ids with one bad entry somewhere."""
    return st.builds(lambda head, bad, tail: head + [bad] + tail, ok_ids, bad_ids, ok_ids)


BAD = st.one_of(
    _with("max_tokens", st.sampled_from(["4", None, 2.5, True, 1.0]) | st.integers(max_value=0)),
    _with("temperature", st.sampled_from(["0.5", None, math.nan, math.inf, -math.inf, True])
          | st.floats(max_value=0.0, exclude_max=True) | st.floats(min_value=1e-300, max_value=1e-6)),
    _with("top_k", st.sampled_from(["5", None, 2.5, False]) | st.integers(max_value=-1) | st.integers(min_value=2**63)),
    _with("top_p", st.sampled_from(["0.9", None, math.nan]) | st.floats(max_value=0.0)
          | st.floats(min_value=1.0, exclude_min=True)),
    _with("seed", st.sampled_from(["abc", 1.5, True]) | st.integers(max_value=-1) | st.integers(min_value=2**64)),
    _with("stop_token_ids", st.sampled_from([None, "2", 2, {2}])
          | st.lists(st.one_of(st.floats(), st.text(max_size=2), st.integers(max_value=-1)), min_size=1, max_size=3)),
    _with("ignore_eos", st.sampled_from(["yes", None, 1, 0, 1.0])),
    _with("request_id", st.sampled_from([7, None, 2.5, b"id", ("a",)])),
    _with("sampling", st.sampled_from([None, {"max_tokens": 4}, "greedy", 0])),
    _with("prompt_token_ids", st.one_of(
        st.none(), st.just([]), st.just(()), st.text(max_size=5), st.floats(), st.integers(),
        st.just([1] * MAX_LEN),  # leaves no room to generate
        _injected(st.integers(min_value=VOCAB)), _injected(st.integers(max_value=-1)),
        _injected(st.text(max_size=3)), _injected(st.floats()), _injected(st.booleans()),
        _injected(st.lists(st.integers(0, 100), max_size=2)),  # nested
    )),
    _with("request", st.one_of(
        anything,
        st.fixed_dictionaries({"request_id": st.text(min_size=1, max_size=4), "prompt_token_ids": ok_ids}),
        st.fixed_dictionaries({"prompt_token_ids": ok_ids}),
        st.tuples(st.text(max_size=3), ok_ids),
    )),
)  # fmt: skip
GOOD = st.builds(Good, st.sampled_from(GOOD_PROMPTS), st.integers(1, 4))
CALLS = st.tuples(st.lists(BAD, min_size=MIN_BAD, max_size=MAX_BAD), st.lists(GOOD, min_size=1, max_size=3)).flatmap(
    lambda parts: st.permutations(parts[0] + parts[1])
)


@pytest.fixture(scope="module", params=["hf", "own"])
def engine(request, smollm2_dir) -> Engine:
    options = {"kv_cache_bytes": 64 * 16 * 46080} if request.param == "own" else {}  # 64 blocks: plenty
    engine = create_engine(request.param, ModelSpec("smollm2", str(smollm2_dir)), Technique(), options, "cpu")
    yield engine
    engine.close()


def test_bad_requests_never_take_a_batch_down(engine):
    solo: dict[Good, list[int]] = {}  # each distinct good request generated alone, once
    counts = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(CALLS)
    def one_call(items: list[Good | Bad]) -> None:
        ids = [f"r{i}" for i in range(len(items))]
        requests = [item.request(rid) for item, rid in zip(items, ids)]
        try:
            outputs = engine.generate(requests)
        except Exception:
            counts["crashes"] += 1
            raise
        assert len(outputs) == len(items)
        for index, (item, rid, out) in enumerate(zip(items, ids, outputs)):
            if isinstance(item, Bad):
                counts["bad"] += 1
                counts[f"bad {item.field}"] += 1
                assert out.finish_reason == "error" and out.error and out.token_ids == [], (item, out)
                named = "prompt" if item.field == "prompt_token_ids" else item.field  # "prompt of 8192 tokens..."
                assert named in out.error, (item, out.error)
                assert out.request_id == item.output_id(rid, index), (item, out.request_id)
            else:
                counts["good"] += 1
                if item not in solo:
                    solo[item] = engine.generate([item.request("solo")])[0].token_ids
                assert out.request_id == rid and out.error is None and out.token_ids == solo[item], (item, out)
        assert engine.is_idle()
        llm = getattr(engine, "llm", None)
        if llm is not None:  # own: no queued or running sequence, every KV block free or prefix-cache-free-able
            assert not llm.scheduler.waiting and not llm.scheduler.running and not llm.rejected
            assert llm.kv.num_free_blocks == llm.kv.num_blocks

    one_call()
    kinds = ", ".join(f"{k[4:]}={v}" for k, v in sorted(counts.items()) if k.startswith("bad "))
    print(f"\n[{engine.name}] bad requests sent: {counts['bad']}, good requests checked: {counts['good']}, "
          f"distinct solo references: {len(solo)}, crashes: {counts['crashes']}")  # fmt: skip
    print(f"[{engine.name}] bad by field: {kinds}")
    assert counts["bad"] >= EXAMPLES * MIN_BAD and counts["crashes"] == 0
