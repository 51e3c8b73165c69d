"""`infermatrix` as an lm-eval model name, built from lm-eval's `--model_args` strings.

lm-eval 0.4.13 finds models only in its own registry (no entry-point discovery), so
`register()` must run in the process before lm-eval looks the name up; the console script
`infermatrix-lm-eval` (harness/eval/cli.py) does that and then runs lm-eval's own CLI.

    --model infermatrix --model_args engine=own,model=<folder|.gguf|embedded|conf/model name|hub id>,dtype=float32,kv_cache=paged
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from engines import create_engine
from engines.base import ModelSpec, Technique
from harness.eval.adapter import EngineLM

log = logging.getLogger(__name__)

MODEL_NAME = "infermatrix"
CONF_MODELS = Path(__file__).resolve().parents[2] / "conf" / "model"
DEFAULT_BATCH_SIZE = 16


def register() -> None:
    """Add `infermatrix` to lm-eval's model registry (idempotent)."""
    import lm_eval.models  # noqa: F401  (fills the built-in names first; registering before hides them)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=f"{__name__}:InfermatrixLM")


def model_from_arg(model: str, dtype: str | None) -> ModelSpec:
    """A local folder or GGUF file, `embedded` (SmolLM2), a model config name from
    conf/model/ (resolved as the Hydra app resolves it), or a hub id."""
    from harness.models import model_spec

    entry = CONF_MODELS / f"{model}.yaml"
    if model == "embedded":
        spec, _ = model_spec("smollm2-135m", "embedded", dtype or "float32")
    elif Path(model).expanduser().exists():
        spec, _ = model_spec(Path(model).name, "local", dtype or "float32", local_path=model)
    elif entry.is_file():
        conf = yaml.safe_load(entry.read_text())
        if conf.get("source") == "random":
            raise ValueError(f"model config '{model}' has random weights: accuracy would be meaningless")
        spec, _ = model_spec(conf["name"], conf.get("source", "auto"), dtype or conf.get("dtype", "float32"),
                             local_path=conf.get("local_path"), hub_id=conf.get("hub_id"))
    else:
        spec, _ = model_spec(model, "hub", dtype or "float32", hub_id=model)
    return spec


def technique_from_args(args: dict[str, Any]) -> Technique:
    known = {f.name for f in fields(Technique)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown model_args {unknown}; technique fields are: {', '.join(sorted(known))}")
    return Technique(**args)


def engine_device(requested: str | None) -> str:
    """lm-eval's CLI passes device=cuda by default: use CUDA when asked for and present."""
    import torch

    if str(requested or "cpu").startswith("cuda"):
        if torch.cuda.is_available():
            return "cuda"
        log.warning("device %s requested but CUDA is not available: running on CPU", requested)
    return "cpu"


class InfermatrixLM(EngineLM):
    """Builds, owns and closes its engine; everything else is EngineLM."""

    def __init__(
        self,
        engine: str = "hf",
        model: str = "embedded",
        dtype: str | None = None,  # None: the model config's dtype, else float32
        device: str | None = None,
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_batch_size: int | None = None,  # accepted from lm-eval's CLI; batch_size already bounds calls
        max_length: int | None = None,
        max_gen_toks: int = 256,
        add_bos_token: bool = False,
        **technique: Any,
    ) -> None:
        spec = model_from_arg(str(model), dtype)
        device = engine_device(device)
        built = create_engine(engine, spec, technique_from_args(technique), {}, device)
        # a number is used as given (infermatrix-lm-eval passes our default when the user gave none);
        # "auto" and None mean our default, which lm-eval then prints as "auto (16)"
        size = int(batch_size) if str(batch_size).isdigit() and int(batch_size) >= 1 else DEFAULT_BATCH_SIZE
        super().__init__(built, str(spec.path), batch_size=size, max_length=max_length,
                         max_gen_toks=max_gen_toks, add_bos_token=add_bos_token)
        if not str(batch_size).isdigit():
            self.batch_sizes = {"auto": size}  # lm-eval reports these beside the batch_size it was given

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
