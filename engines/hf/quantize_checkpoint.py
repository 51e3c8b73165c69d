"""Make a GPTQ or AWQ W4A16 checkpoint of a local HF model from real calibration text, once, and cache it.

    python -m engines.hf.quantize_checkpoint gptq --model FOLDER --data-dir DATA [--group-size 64] [--samples 64]

GPTQ runs through gptqmodel and AWQ through llm-compressor, the maintained successors of AutoGPTQ (fails to
import with transformers 5 and needs CUDA to quantize) and AutoAWQ (deprecated by its authors, adopted into
llm-compressor; about 50 s per layer on this CPU). The group size must divide every layer's input width
(SmolLM2's 576: 64 or 32, not 128). Calibration text: GSM8K train problems (question and worked answer) from the
data folder. The checkpoint goes to <cache>/models/<folder>-<method>-w4g<group>-<key>, where the key hashes the
source folder's config, the method, group size and calibration text; the engine loads it from there. Run it with
the interpreter of engines/hf/install_quant.sh.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("gptq", "awq")
CALIBRATION_ROWS = 64
# AWQ's scale search on this CPU: 20 grid points x about 7 s per mapping with 64 rows, some 4-5 h for SmolLM2's
# 30 layers; 16 rows and 5 grid points bring it to minutes (a coarser search than the default, said in the output)
AWQ_ROWS, AWQ_GRID = 16, 5


def cache_root() -> Path:
    return Path(os.environ.get("INFERMATRIX_CACHE", Path.home() / ".cache" / "infermatrix")) / "models"


def _folder_key(model_dir: Path, method: str, group_size: int) -> str:
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    digest.update(f"{method}-w4g{group_size}-rows{CALIBRATION_ROWS}".encode())
    if method == "awq":
        digest.update(f"-awq-rows{AWQ_ROWS}-grid{AWQ_GRID}".encode())
    return digest.hexdigest()[:12]


def target_dir(model_dir: Path, method: str, group_size: int) -> Path:
    return cache_root() / f"{model_dir.name}-{method}-w4g{group_size}-{_folder_key(model_dir, method, group_size)}"


def cached_checkpoint(model_dir: Path, method: str, group_size: int) -> Path | None:
    target = target_dir(model_dir, method, group_size)
    return target if (target / "config.json").is_file() else None


def command_line(model_dir: str | Path, method: str, group_size: int) -> str:
    return (f"<hf-quant python> -m engines.hf.quantize_checkpoint {method} --model {model_dir} "
            f"--data-dir <folder with gsm8k/train.jsonl> --group-size {group_size}")  # fmt: skip


def calibration_texts(data_dir: Path) -> list[str]:
    path = next(p for p in (data_dir / "gsm8k" / "train.jsonl", data_dir / "train.jsonl") if p.is_file())
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(next(f)) for _ in range(CALIBRATION_ROWS)]
    return [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in rows]


def quantize_gptq(model_dir: Path, out: Path, texts: list[str], group_size: int) -> None:
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    from gptqmodel import GPTQModel, QuantizeConfig

    model = GPTQModel.load(str(model_dir), QuantizeConfig(bits=4, group_size=group_size, desc_act=False))
    model.quantize(texts, batch_size=1)
    model.save(str(out))


def quantize_awq(model_dir: Path, out: Path, texts: list[str], group_size: int) -> None:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    if not torch.cuda.is_available():
        # llm-compressor 0.14 pins its cached activations (`Tensor.pin_memory`), which raises "Cannot access
        # accelerator device when none is available" on a CPU-only machine; pinning only speeds host-to-GPU copies
        torch.Tensor.pin_memory = lambda self, *args, **kwargs: self
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": group_size}
    recipe = AWQModifier(ignore=["lm_head"], config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                         n_grid=AWQ_GRID)  # fmt: skip
    texts = texts[:AWQ_ROWS]
    dataset = Dataset.from_dict({"text": texts})
    oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=recipe, max_seq_length=512,
            num_calibration_samples=len(texts))  # fmt: skip
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)


def make_checkpoint(model_dir: Path, method: str, data_dir: Path, group_size: int) -> Path:
    """The cached checkpoint, made now if missing (written to a staging folder, then renamed into place)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if (found := cached_checkpoint(model_dir, method, group_size)) is not None:
        return found
    target = target_dir(model_dir, method, group_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    try:
        texts = calibration_texts(data_dir)
        start = time.perf_counter()
        (quantize_gptq if method == "gptq" else quantize_awq)(model_dir, staging, texts, group_size)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            if (model_dir / name).is_file() and not (staging / name).exists():
                shutil.copy(model_dir / name, staging / name)
        (staging / "infermatrix_source.json").write_text(json.dumps({
            "source": str(model_dir), "method": method, "group_size": group_size, "bits": 4,
            "calibration": f"{AWQ_ROWS if method == 'awq' else CALIBRATION_ROWS} GSM8K train rows from {data_dir}",
            **({"awq_grid": AWQ_GRID} if method == "awq" else {}),
            "seconds": round(time.perf_counter() - start, 1),
        }))  # fmt: skip
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("--model", required=True, help="local HF model folder (config.json + safetensors)")
    parser.add_argument("--data-dir", required=True, help="folder holding gsm8k/train.jsonl")
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args(argv)
    print(make_checkpoint(Path(args.model), args.method, Path(args.data_dir), args.group_size))


if __name__ == "__main__":
    sys.exit(main())
