"""A test double for the engine contract: real (or evenly spaced) timestamps, trivial compute,
optional failure or a short context."""

from __future__ import annotations

from engines.base import Attention, Batching, Engine, KVCache, RequestOutput, ScoredSequence, now

CALLS: list[int] = []  # number of requests per generate call, for tests to inspect


class FakeEngine(Engine):
    name = "fake"
    supports = {"kv_cache": (KVCache.none,), "batching": (Batching.static,), "chunked_prefill": (False,),
                "prefix_cache": (False,), "attention": (Attention.torch,), "graphs": ()}  # fmt: skip
    defaults = {"kv_cache": KVCache.none, "batching": Batching.static, "chunked_prefill": False,
                "prefix_cache": False, "attention": Attention.torch}  # fmt: skip
    fail_with: str | None = None
    context: int | None = None  # stop at prompt + generated = context, as a model with that context does
    token_s: float = 0.0  # > 0: timestamps one token every token_s seconds after arrival (no sleeping)

    def __init__(self, model, technique, options, device):
        self.technique = technique

    def generate(self, requests, progress=None):
        if self.fail_with:
            raise RuntimeError(self.fail_with)
        CALLS.append(len(requests))
        arrival = now()
        outs = []
        for r in requests:
            n = r.sampling.max_tokens
            if self.context is not None:
                n = min(n, self.context - len(r.prompt_token_ids))
            times = [arrival + self.token_s * (k + 1) if self.token_s else now() for k in range(n)]
            outs.append(RequestOutput(r.request_id, len(r.prompt_token_ids), [7] * len(times), times, arrival, "length"))
            if progress:
                progress(1)
        return outs

    def score(self, sequences):
        return [ScoredSequence([0.0] * (len(s) - 1), [True] * (len(s) - 1)) for s in sequences]

    def stats(self):
        return {"fake": True}

    @property
    def eos_token_id(self):
        return 2
