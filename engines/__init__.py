"""Inference engines behind one contract (engines/base.py). Torch only: no Hydra, W&B or lm-eval."""

from __future__ import annotations

import importlib

from engines.base import Engine, EngineOptions, ModelSpec, Technique

# name -> "module:Class"; imported lazily so an engine's heavy dependencies load only when used
ENGINES: dict[str, str] = {
    "hf": "engines.hf:HFEngine",
    "own": "engines.own.engine:OwnEngine",
    "fault": "engines.fault:FaultEngine",  # fails on purpose: checks that sweeps survive crashes
}


def engine_class(name: str) -> type[Engine]:
    if name not in ENGINES:
        raise ValueError(f"unknown engine '{name}'; choose one of: {', '.join(sorted(ENGINES))}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_engine(name: str, model: ModelSpec, technique: Technique, options: EngineOptions, device: str) -> Engine:
    """Build an engine with the technique it resolved (defaults filled, support checked)."""
    cls = engine_class(name)
    return cls(model, cls.resolve_technique(technique), options, device)
