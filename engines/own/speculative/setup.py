"""Wiring `technique.spec*` into the engine: resolving the options, loading a draft, building the runner."""

from __future__ import annotations

import torch

from engines.base import ModelSpec, Spec, Technique, UnsupportedTechnique
from engines.own.model import CausalLM
from engines.own.model_runner import ModelRunner
from engines.own.speculative.draft import DraftProposer, load_draft
from engines.own.speculative.early_exit import EarlyExitProposer
from engines.own.speculative.ngram import NgramProposer
from engines.own.speculative.runner import SpecRunner
from engines.own.speculative.stats import SpecStats

# option -> (the method it belongs to, its default; None = documented meaning: the target / all layers)
OPTION_DEFAULTS: dict[str, tuple[Spec | None, int | None]] = {
    "spec_k": (None, 4),  # every method
    "spec_draft_model": (Spec.draft, None),  # None: the target itself
    "spec_draft_layers": (Spec.draft, None),  # None: all of the draft's layers
    "spec_ngram_min": (Spec.ngram, 1),
    "spec_ngram_max": (Spec.ngram, 4),
    "spec_exit_layer": (Spec.early_exit, 8),
}


def resolve_spec_options(technique: Technique) -> None:
    """In place: defaults for the chosen method's options, None for the others' (they do not apply)."""
    if technique.spec in (None, Spec.none):
        return
    for option, (method, default) in OPTION_DEFAULTS.items():
        applies = method is None or method == technique.spec
        value = getattr(technique, option)
        setattr(technique, option, (default if value is None else value) if applies else None)
    if technique.spec == Spec.ngram and technique.spec_ngram_min > technique.spec_ngram_max:
        raise UnsupportedTechnique(f"engine 'own': spec_ngram_min={technique.spec_ngram_min} is above "
                                   f"spec_ngram_max={technique.spec_ngram_max}")  # fmt: skip


def load_spec_draft(technique: Technique, target: ModelSpec, device: torch.device, max_model_len: int,
                    vocab_size: int) -> tuple[CausalLM | None, str]:  # fmt: skip
    """The draft model for spec=draft (the harness resolved `spec_draft_model` into `target.draft`), and its dtype."""
    if technique.spec != Spec.draft:
        return None, target.dtype
    spec = target.draft if target.draft is not None else target
    if technique.spec_draft_model is not None and target.draft is None and technique.spec_draft_model != target.name:
        raise ValueError(f"technique.spec_draft_model='{technique.spec_draft_model}' was not resolved to a model "
                         "(the harness does this from conf/model/)")  # fmt: skip
    return load_draft(spec, technique.spec_draft_layers, device, max_model_len, vocab_size), spec.dtype


def build_speculator(technique: Technique, runner: ModelRunner, draft: CausalLM | None, draft_dtype: torch.dtype,
                     num_blocks: int, max_model_len: int) -> SpecRunner | None:  # fmt: skip
    if technique.spec in (None, Spec.none):
        return None
    target, block_size, device = runner.model, runner.block_size, runner.device
    if technique.spec == Spec.ngram:
        proposer = NgramProposer(technique.spec_ngram_min, technique.spec_ngram_max)
    elif technique.spec == Spec.early_exit:
        proposer = EarlyExitProposer(target, technique.spec_exit_layer, block_size, device)
    else:
        proposer = DraftProposer(draft, target.attention, num_blocks, block_size, draft_dtype, device)
    stats = SpecStats(technique.spec.value, technique.spec_k)
    return SpecRunner(runner, proposer, technique.spec_k, max_model_len, stats)
