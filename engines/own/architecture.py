"""The model architecture our engine runs, read from an HF `config.json` dict.

One decoder-only family covers Llama 2/3.x, SmolLM2, Mistral, Qwen2/2.5 (q/k/v bias) and Qwen3
(per-head q/k RMSNorm). Fields missing from older or newer HF configs get their HF defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(slots=True, frozen=True)
class RopeConfig:
    theta: float
    scaling_type: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(slots=True, frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position: int
    rope: RopeConfig
    qkv_bias: bool
    qk_norm: bool
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None


def _rope_config(hf: dict[str, Any]) -> RopeConfig:
    # transformers 5 nests theta and scaling in `rope_parameters`; 4.x used `rope_theta` + `rope_scaling`
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    if kind not in ("default", "linear", "llama3"):
        raise ValueError(f"rope scaling type '{kind}' is not supported (default, linear, llama3)")
    return RopeConfig(
        theta=theta,
        scaling_type=kind,
        factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position=int(merged.get("original_max_position_embeddings", 8192)),
    )


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)


def model_config_from_hf(hf: dict[str, Any]) -> ModelConfig:
    """Parse an HF config dict; raise ValueError for architectures this engine does not implement."""
    model_type = hf.get("model_type", "llama")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type '{model_type}' is not supported by the own engine ({SUPPORTED_MODEL_TYPES})")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act '{hf.get('hidden_act')}' is not supported (silu only)")
    if hf.get("mlp_bias"):
        raise ValueError("mlp_bias=True is not supported")
    num_heads = int(hf["num_attention_heads"])
    hidden = int(hf["hidden_size"])
    max_position = int(hf.get("max_position_embeddings", 4096))
    sliding = hf.get("sliding_window")
    if sliding and (model_type == "mistral" or hf.get("use_sliding_window")):
        max_position = min(max_position, int(sliding))  # full attention is exact only inside the window
    return ModelConfig(
        model_type=model_type,
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or hidden // num_heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position=max_position,
        rope=_rope_config(hf),
        qkv_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
        qk_norm=model_type == "qwen3",
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=hf.get("bos_token_id"),
        eos_token_ids=_eos_ids(hf.get("eos_token_id")),
    )
