"""Inference engines behind one contract (engines/base.py). Torch only: no Hydra, W&B or lm-eval.

Each engine is a folder, `engines/<name>/`, with `config.py` (its options: a dataclass extending
`EngineOptions`, importing nothing heavy) and `engine.py` (the engine); it joins the matrix by one
line here and one `conf/engine/<name>.yaml`.
"""

from __future__ import annotations

import importlib
from typing import Any

from engines.base import Engine, EngineOptions, ModelSpec, Technique

# name -> (options class, engine class), as "module:Class": imported only when used, so an engine's
# packages load only in the process that runs it
ENGINES: dict[str, tuple[str, str]] = {
    "hf": ("engines.hf.config:HfOptions", "engines.hf.engine:HFEngine"),
    "own": ("engines.own.config:OwnOptions", "engines.own.engine:OwnEngine"),
    "fault": ("engines.fault.config:FaultOptions", "engines.fault.engine:FaultEngine"),
    "openai": ("engines.openai.config:OpenaiOptions", "engines.openai.engine:OpenaiEngine"),
    "vllm": ("engines.vllm.config:VllmOptions", "engines.vllm.engine:VllmEngine"),
    "llamacpp": ("engines.llamacpp.config:LlamaCppOptions", "engines.llamacpp.engine:LlamaCppEngine"),
}


def _entry(name: str, which: int) -> Any:
    if name not in ENGINES:
        raise ValueError(f"unknown engine '{name}'; choose one of: {', '.join(sorted(ENGINES))}")
    module, cls = ENGINES[name][which].split(":")
    return getattr(importlib.import_module(module), cls)


def options_class(name: str) -> type[EngineOptions]:
    return _entry(name, 0)


def engine_class(name: str) -> type[Engine]:
    return _entry(name, 1)


def create_engine(
    name: str, model: ModelSpec, technique: Technique, options: EngineOptions | dict[str, Any], device: str
) -> Engine:
    """Build an engine with the technique it resolved (defaults filled, support checked); `options`
    may be the engine's options or a dict of the ones to change from its defaults."""
    cls = engine_class(name)
    if isinstance(options, dict):
        options = options_class(name)(**options)
    return cls(model, cls.resolve_technique(technique, device), options, device)
