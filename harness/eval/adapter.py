"""lm-eval's model interface over our engine contract, for every engine.

The adapter owns tokenization (engines take token ids): it tokenizes with the model
folder's tokenizer, hands the engine many sequences at once or all generation requests at
once (`Engine.generate`), and turns results back into lm-eval's answers. Log-likelihood
requests are deduplicated and scored (`Engine.score_tails`: only the continuation's tokens)
question by question, longest first, about `batch_size` sequences per engine call; the
progress bar counts questions (documents for rolling log-likelihoods).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from tqdm import tqdm

from engines.base import Engine, Request, SamplingParams, ScoredSequence
from harness.eval.tokens import cut_at_stop, fit_window, rolling_windows, split_context

DEFAULT_MAX_LENGTH = 2048
GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k", "seed"}


def model_max_length(model_dir: str) -> int:
    """The context window from the folder's config.json, else DEFAULT_MAX_LENGTH."""
    config = Path(model_dir) / "config.json"
    if config.is_file():
        for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = json.loads(config.read_text()).get(key)
            if isinstance(value, int) and value > 0:
                return value
    return DEFAULT_MAX_LENGTH


def questions(requests: list[Any]) -> list[list[int]]:
    """Request indices grouped by the document they belong to (a question's answer choices), in first-seen
    order; a request without a doc_id is its own group."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, request in enumerate(requests):
        doc = getattr(request, "doc_id", None)
        key = (getattr(request, "task_name", None), doc) if doc is not None else ("request", index)
        groups.setdefault(key, []).append(index)
    return list(groups.values())


class EngineLM(LM):
    """An lm-eval LM backed by one engine instance (not owned: the caller closes it)."""

    def __init__(
        self,
        engine: Engine,
        tokenizer_dir: str,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        add_bos_token: bool = False,
    ) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        self.engine = engine
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.batch_size = int(batch_size)
        # the engine's max_model_len, when set below the model's context, bounds the windows too
        self.max_length = int(max_length or engine.stats().get("max_model_len") or model_max_length(tokenizer_dir))
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token
        eos = engine.eos_token_id if engine.eos_token_id is not None else self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("neither the engine nor the tokenizer declares an EOS token")
        self.eos_token_id = int(eos)

    # --- tokenization -------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if self.add_bos_token and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # --- lm-eval interface --------------------------------------------------------------

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        windows = []
        for request in requests:
            context, continuation = request.args
            ctx, cont = split_context(context, continuation, self.encode, self.eos_token_id)
            windows.append(fit_window(ctx, cont, self.max_length))
        scored = self.score_many(windows, questions(requests), "loglikelihood", disable_tqdm)
        answers = []
        for request, result in zip(requests, scored):
            answer = (float(sum(result.logprobs)), bool(all(result.is_greedy)))
            self.cache_hook.add_partial("loglikelihood", request.args, answer)
            answers.append(answer)
        return answers

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        per_doc = [rolling_windows(self.encode(r.args[0]), self.max_length, self.eos_token_id) for r in requests]
        flat = [window for windows in per_doc for window in windows]
        docs, start = [], 0
        for windows in per_doc:
            docs.append(list(range(start, start + len(windows))))
            start += len(windows)
        scored = iter(self.score_many(flat, docs, "loglikelihood_rolling", disable_tqdm))
        answers = []
        for request, windows in zip(requests, per_doc):
            total = sum(sum(next(scored).logprobs) for _ in windows)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, float(total))
            answers.append(float(total))
        return answers

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        engine_requests, stops = [], []
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            sampling, until = self.sampling_params(gen_kwargs)
            room = self.max_length - sampling.max_tokens
            if room < 1:
                raise ValueError(f"max_gen_toks={sampling.max_tokens} leaves no room in a {self.max_length}-token window")
            prompt = self.encode(context)[-room:]
            engine_requests.append(Request(str(index), prompt, sampling))
            stops.append(until)
        with tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm) as bar:
            outputs = self.engine.generate(engine_requests, progress=bar.update)
        answers = []
        for request, output, until in zip(requests, outputs, stops):
            if output.finish_reason == "error":
                raise RuntimeError(f"engine failed request {output.request_id}: {output.error}")
            text = cut_at_stop(self.decode(output.token_ids), until)
            self.cache_hook.add_partial("generate_until", request.args, text)
            answers.append(text)
        return answers

    # --- helpers ------------------------------------------------------------------------

    def sampling_params(self, gen_kwargs: dict[str, Any]) -> tuple[SamplingParams, list[str]]:
        """lm-eval generation kwargs -> engine sampling and the stop strings to cut at."""
        unknown = set(gen_kwargs) - GEN_KWARGS
        if unknown:
            raise ValueError(f"unsupported generation kwargs {sorted(unknown)}; supported: {sorted(GEN_KWARGS)}")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eos_text = self.tokenizer.decode([self.eos_token_id])
        if eos_text and eos_text not in until:
            until.append(eos_text)
        sample = bool(gen_kwargs.get("do_sample", False)) and float(gen_kwargs.get("temperature", 1.0)) > 0
        sampling = SamplingParams(
            max_tokens=int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)),
            temperature=float(gen_kwargs.get("temperature", 1.0)) if sample else 0.0,
            top_k=int(gen_kwargs.get("top_k", 0) or 0) if sample else 0,
            top_p=float(gen_kwargs.get("top_p", 1.0) or 1.0) if sample else 1.0,
            seed=gen_kwargs.get("seed"),
            stop_token_ids=(self.eos_token_id,),
        )
        sampling.validate()
        return sampling, until

    def score_many(
        self, windows: list[tuple[list[int], int]], units: list[list[int]], desc: str, disable_tqdm: bool
    ) -> list[ScoredSequence]:
        """Log-probabilities of the last n tokens of each `(sequence, n)` window, each distinct sequence
        scored once. `units` groups window indices into what progress counts (a question's choices, a
        document's windows); units go longest first, as many per engine call as fit in `batch_size`
        sequences (at least one)."""
        tails: dict[tuple[int, ...], int] = {}
        for seq, n in windows:
            tails[tuple(seq)] = max(tails.get(tuple(seq), 0), n)
        unit_keys = [list(dict.fromkeys(tuple(windows[i][0]) for i in unit)) for unit in units]
        order = deque(sorted(range(len(units)), key=lambda u: (-max(map(len, unit_keys[u]), default=0), unit_keys[u])))
        found: dict[tuple[int, ...], ScoredSequence] = {}
        unit = "question" if desc == "loglikelihood" else "document"
        with tqdm(total=len(units), desc=desc, unit=unit, disable=disable_tqdm) as bar:
            while order:
                chunk: list[tuple[int, ...]] = []
                taken = 0
                while order:
                    new = [k for k in unit_keys[order[0]] if k not in found and k not in chunk]
                    if taken and len(chunk) + len(new) > self.batch_size:
                        break
                    chunk += new
                    order.popleft()
                    taken += 1
                if chunk:
                    scored = self.engine.score_tails([list(k) for k in chunk], [tails[k] for k in chunk])
                    for key, result in zip(chunk, scored):
                        if len(result.logprobs) != tails[key]:
                            raise RuntimeError(f"engine scored {len(result.logprobs)} tokens, {tails[key]} asked")
                        found[key] = result
                bar.update(taken)
        out = []
        for seq, n in windows:
            result = found[tuple(seq)]
            out.append(ScoredSequence(result.logprobs[-n:], result.is_greedy[-n:]))
        return out

    # --- chat templates -----------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,
        )
