"""Where weights come from: local path, then the embedded GGUF, then the hub id; or random."""

import pytest

from harness import models


def test_auto_prefers_a_local_path(tmp_path):
    spec, kind = models.model_spec("m", "auto", "float32", local_path=str(tmp_path), hub_id="org/m")
    assert (spec.path, kind) == (str(tmp_path), "local")


def test_auto_uses_the_embedded_gguf_when_installed(smollm2_dir):
    spec, kind = models.model_spec("smollm2-135m", "auto", "float32", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert kind == "embedded-gguf" and spec.path == str(smollm2_dir)
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "tokenizer.json").is_file()


def test_auto_falls_back_to_the_hub_id_without_the_embedded_package(monkeypatch):
    monkeypatch.setattr(models, "embedded_gguf_path", lambda: None)
    spec, kind = models.model_spec("smollm2-135m", "auto", "float32", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (spec.path, kind) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "hub")


def test_random_source_carries_the_architecture_and_no_path():
    spec, kind = models.model_spec("tiny", "random", "bfloat16", architecture={"vocab_size": 10}, seed=3)
    assert kind == "random" and spec.is_random and spec.path is None and spec.seed == 3


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.model_spec("m", "local", "float32", local_path=str(tmp_path / "nope"))


def test_gguf_conversion_is_cached_by_file_hash(smollm2_dir):
    gguf = models.embedded_gguf_path()
    assert smollm2_dir.name.endswith(models.file_sha256(gguf)[:16])
    assert models.convert_gguf(gguf) == smollm2_dir  # second call reuses the folder
