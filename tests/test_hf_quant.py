"""engine=hf quantization: a method whose library is missing, or whose checkpoint was never made, skips the cell
with a reason that says what to run. Where the libraries are installed (engines/hf/install_quant.sh's venv),
tests/peers/test_hf_quant_venv.py runs quantized cells through the harness in that venv."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from engines.base import ModelSpec, Quant, UnsupportedTechnique
from engines.hf import quant as hf_quant


@pytest.mark.skipif(importlib.util.find_spec("torchao") is not None, reason="torchao is installed here")
def test_a_missing_library_skips_with_the_import_error_and_the_install_command():
    with pytest.raises(UnsupportedTechnique, match=r"needs torchao, which does not import here \(ModuleNotFoundError.*install_quant.sh"):
        hf_quant.require(Quant.torchao_int8)


def test_a_missing_gptq_checkpoint_names_the_command_that_makes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERMATRIX_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(UnsupportedTechnique, match="no gptq checkpoint.*group size 64.*quantize_checkpoint gptq --model"):
        hf_quant.checkpoint_path(ModelSpec("m", str(model)), Quant.gptq, 64)
    cached = tmp_path / "cache" / "models" / hf_quant_target_name(model, "gptq", 64)
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    assert hf_quant.checkpoint_path(ModelSpec("m", str(model)), Quant.gptq, 64) == cached


def hf_quant_target_name(model, method, group):
    from engines.hf.quantize_checkpoint import target_dir

    return target_dir(model, method, group).name


def test_weight_bytes_count_tied_weights_once():
    lm = torch.nn.Linear(4, 3, bias=False)
    model = torch.nn.ModuleDict({"embed": torch.nn.Embedding(3, 4), "head": lm})
    model["head"].weight = model["embed"].weight  # tied, as SmolLM2's LM head is
    assert hf_quant.weight_bytes(model) == 3 * 4 * 4
