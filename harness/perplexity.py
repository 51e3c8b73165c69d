"""A cheap quality number beside every quantized cell's speed: perplexity on a fixed real text.

The text is the first PERPLEXITY_ROWS problems of GSM8K's test split (question and worked answer), read from the
data folder (eval.data_dir, else $INFERMATRIX_SHARED_DATA) and scored by the engine under test in windows of at
most the engine's max_model_len; the first token of each window has no context and is not scored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from engines.base import Engine, ModelSpec
from harness.eval.local_data import find_release

PERPLEXITY_ROWS = 16
MAX_TOKENS = 1024  # enough to separate int4 from fp32, a few seconds on this CPU
WINDOW = 512


def perplexity_text(data_dir: str | Path) -> tuple[str, str]:
    """The fixed text and a description of where it came from (file, rows, sha256 of the text)."""
    release = find_release(data_dir, "gsm8k", "test.jsonl")
    path = release / "test.jsonl"
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(PERPLEXITY_ROWS)]
    text = "\n\n".join(f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows)
    return text, f"{path} rows 1-{PERPLEXITY_ROWS}, text sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]}"


def measure_perplexity(engine: Engine, spec: ModelSpec, data_dir: str | None) -> dict[str, Any]:
    """{"perplexity", "tokens_scored", "text"}, or {"skipped": reason} when there is no text or no real model."""
    data_dir = data_dir or os.environ.get("INFERMATRIX_SHARED_DATA")
    if spec.is_random:
        return {"skipped": "random weights: perplexity says nothing about them"}
    if not data_dir:
        return {"skipped": "no data folder: set eval.data_dir (or INFERMATRIX_SHARED_DATA) to the GSM8K/MMLU data"}
    from transformers import AutoTokenizer

    text, source = perplexity_text(data_dir)
    ids = AutoTokenizer.from_pretrained(spec.path)(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
    window = min(WINDOW, int(engine.stats().get("max_model_len") or WINDOW))
    windows = [ids[i : i + window] for i in range(0, len(ids), window)]
    windows = [w for w in windows if len(w) > 1]
    logprobs = [lp for scored in engine.score(windows) for lp in scored.logprobs]
    return {
        "perplexity": math.exp(-sum(logprobs) / len(logprobs)),
        "tokens_scored": len(logprobs),
        "window": window,
        "text": source,
    }
