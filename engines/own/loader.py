"""Build a `CausalLM` from an HF safetensors folder (sharded or not), a hub id, or seeded random weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from engines.base import ModelSpec
from engines.dtypes import torch_dtype
from engines.own.architecture import ModelConfig, model_config_from_hf
from engines.own.model import CausalLM
from engines.own.rope import cos_sin_table

def resolve_folder(path: str) -> Path:
    """A local folder as is; anything else is treated as a hub id and downloaded (safetensors + config)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # offline, unknown id, gated repo...: say which and why
        raise FileNotFoundError(f"model '{path}' is not a local folder and the hub download failed: {exc}") from exc


def read_hf_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
    return tensors


def _fused_state(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF parameter names -> our fused layout."""
    state = {"embed": tensors["model.embed_tokens.weight"], "final_norm": tensors["model.norm.weight"]}
    if not config.tie_word_embeddings:
        state["lm_head"] = tensors.get("lm_head.weight", tensors["model.embed_tokens.weight"])
    for i in range(config.num_layers):
        hf, ours = f"model.layers.{i}.", f"layers.{i}."
        attn = hf + "self_attn."
        state[ours + "input_norm"] = tensors[hf + "input_layernorm.weight"]
        state[ours + "post_attn_norm"] = tensors[hf + "post_attention_layernorm.weight"]
        state[ours + "qkv.weight"] = torch.cat([tensors[attn + f"{p}_proj.weight"] for p in "qkv"])
        if config.qkv_bias:
            state[ours + "qkv.bias"] = torch.cat([tensors[attn + f"{p}_proj.bias"] for p in "qkv"])
        if config.qk_norm:
            state[ours + "q_norm"] = tensors[attn + "q_norm.weight"]
            state[ours + "k_norm"] = tensors[attn + "k_norm.weight"]
        state[ours + "o.weight"] = tensors[attn + "o_proj.weight"]
        mlp = hf + "mlp."
        state[ours + "gate_up.weight"] = torch.cat([tensors[mlp + "gate_proj.weight"], tensors[mlp + "up_proj.weight"]])
        state[ours + "down.weight"] = tensors[mlp + "down_proj.weight"]
    return state


def _random_state(model: CausalLM, config_dict: dict, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    std = float(config_dict.get("initializer_range", 0.02))
    state = {}
    for name, param in model.named_parameters():
        is_norm = name.endswith("norm") or name == "final_norm"
        if is_norm:
            state[name] = torch.ones(param.shape)
        elif name.endswith("bias"):
            state[name] = torch.zeros(param.shape)
        else:
            state[name] = torch.randn(param.shape, generator=generator) * std
    return state


def checked_max_model_len(requested: int | None, context: int) -> int:
    """The longest sequence to serve: `requested`, or the model's context when None. Beyond the context
    the positions were never trained (and RoPE scaling does not extend them), so that is an error, as in vLLM."""
    if requested is None:
        return context
    if not 1 <= requested <= context:
        raise ValueError(f"max_model_len={requested} must be in [1, {context}], the model's context "
                         f"(max_position_embeddings, or the sliding window)")  # fmt: skip
    return requested


def load_model(spec: ModelSpec, device: torch.device, max_position: int | None = None) -> tuple[CausalLM, dict]:
    """The model on `device` in `spec.dtype`, in eval mode without grads, and its HF config dict. The rope
    tables cover `max_position` positions (default: the model's context), which bounds every sequence."""
    dtype = torch_dtype(spec.dtype)
    if spec.is_random:
        hf_config = dict(spec.random_config)
    elif spec.path is None:
        raise ValueError(f"model '{spec.name}' has neither a path nor a random_config")
    else:
        folder = resolve_folder(spec.path)
        hf_config = read_hf_config(folder)
    config = model_config_from_hf(hf_config)
    positions = checked_max_model_len(max_position, config.max_position)
    with torch.device("meta"):
        # parameters are born in the target dtype: the device never holds a float32 copy of the weights
        model = CausalLM(config, 1).to(dtype=dtype)
    if spec.is_random:
        state = _random_state(model, hf_config, spec.seed)
    else:
        state = _fused_state(_read_tensors(folder), config)
    model = model.to_empty(device=device)
    model.load_state_dict(state, strict=True)  # copies cast to each parameter's dtype and device
    cos, sin = cos_sin_table(config.rope, config.head_dim, positions)
    model.set_rope_tables(cos.to(device), sin.to(device))  # float32: cast per pass like HF
    model.eval().requires_grad_(False)
    return model, hf_config
