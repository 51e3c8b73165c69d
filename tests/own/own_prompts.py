"""Real-text token prompts of chosen lengths for the own-engine tests (no downloads: stdlib docstrings)."""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import pathlib
import random
from pathlib import Path

MODULES = (argparse, collections, functools, json, logging, pathlib, random)


def corpus_ids(model_dir: Path) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = "\n\n".join(
        doc for module in MODULES for obj in vars(module).values() if isinstance(doc := getattr(obj, "__doc__", None), str)
    )
    return tokenizer(text)["input_ids"]


def text_prompts(model_dir: Path, lengths: list[int], stride: int = 997) -> list[list[int]]:
    """Windows of the tokenized corpus, one per length, starting at different offsets."""
    ids = corpus_ids(model_dir)
    span = len(ids) - max(lengths)
    return [ids[(i * stride) % span : (i * stride) % span + n] for i, n in enumerate(lengths)]
