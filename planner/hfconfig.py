"""A transformers `config.json` -> `ModelSpec`, parameters estimated from the shapes.

Read: num_hidden_layers, num_attention_heads, num_key_value_heads (absent: = heads, MHA),
head_dim (absent: hidden_size / heads), max_position_embeddings, sliding_window with
layer_types / use_sliding_window / max_window_layers, MLA kv_lora_rank + qk_rope_head_dim,
MoE num_local_experts | num_experts | n_routed_experts with num_experts_per_tok. Multimodal
configs are read through their `text_config`.

Parameter estimate (norms and biases left out, < 0.1%):
  embeddings V x h (x2 unless tie_word_embeddings), per layer attention
  (GQA: 2 h H d + 2 h kv d; MLA: the low-rank q / kv projections and o), gated MLP 3 h I,
  MoE layers E experts of 3 h I_moe + router h E + shared experts.
  Active (MoE) = total - unchosen experts - the input embedding table (model-card convention).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from oscar_cluster.errors import ConfigError

from .specs import ModelSpec

__all__ = ["model_from_config", "estimate_params"]

REQUIRED = ("num_hidden_layers", "num_attention_heads", "hidden_size", "max_position_embeddings")
_ACCEPTED = ("a transformers config.json needs num_hidden_layers, num_attention_heads, hidden_size, "
             "max_position_embeddings (plus vocab_size and intermediate_size to estimate parameters)")


def _first(cfg: dict, *keys: str) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return None


def _sliding(cfg: dict, layers: int) -> tuple[int | None, int]:
    """(window, number of sliding-window layers)."""
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if isinstance(types, list) and types:
        n = sum(1 for t in types if "sliding" in str(t))
        if n and not window:
            raise ConfigError("config.json: layer_types has sliding layers but sliding_window is missing")
        return (int(window), n) if n else (None, 0)
    if not window or cfg.get("use_sliding_window") is False:
        return None, 0
    if cfg.get("use_sliding_window") and cfg.get("max_window_layers") is not None:
        n = max(0, layers - int(cfg["max_window_layers"]))  # Qwen2: layers >= max_window_layers slide
    elif cfg.get("sliding_window_pattern"):
        n = layers - layers // int(cfg["sliding_window_pattern"])  # Gemma 3: every Nth layer is full
    else:
        n = layers  # Mistral: every layer slides
    return (int(window), n) if n else (None, 0)


def estimate_params(cfg: dict) -> tuple[float, float | None]:
    """(total, active or None for dense) parameters from a config dict; see module docstring."""
    need = [k for k in ("vocab_size", "intermediate_size") if cfg.get(k) is None
            and not (k == "intermediate_size" and cfg.get("moe_intermediate_size"))]
    if need:
        raise ConfigError(f"config.json: missing {', '.join(need)} to estimate parameters; {_ACCEPTED}")
    h, L, H = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    V = int(cfg["vocab_size"])
    kv = int(_first(cfg, "num_key_value_heads") or H)
    embed = V * h * (1 if cfg.get("tie_word_embeddings", True) else 2)
    if cfg.get("kv_lora_rank"):
        nope, rope = int(cfg.get("qk_nope_head_dim", 128)), int(cfg["qk_rope_head_dim"])
        v_dim, r_kv, r_q = int(cfg.get("v_head_dim", nope)), int(cfg["kv_lora_rank"]), cfg.get("q_lora_rank")
        q = h * int(r_q) + int(r_q) * H * (nope + rope) if r_q else h * H * (nope + rope)
        attn = q + h * (r_kv + rope) + r_kv * H * (nope + v_dim) + H * v_dim * h
    else:
        d = int(cfg.get("head_dim") or h // H)
        attn = 2 * h * H * d + 2 * h * kv * d
    E = _first(cfg, "num_local_experts", "num_experts", "n_routed_experts")
    inter = int(_first(cfg, "intermediate_size", "moe_intermediate_size"))
    if not E:
        return float(embed + L * (attn + 3 * h * inter)), None
    E, k = int(E), int(_first(cfg, "num_experts_per_tok", "experts_per_token", "top_k") or 1)
    im = int(_first(cfg, "moe_intermediate_size", "intermediate_size"))
    dense_layers = int(cfg.get("first_k_dense_replace") or 0)
    shared = int(cfg.get("n_shared_experts") or 0) * 3 * h * im + 3 * h * int(cfg.get("shared_expert_intermediate_size") or 0)
    moe_layers = L - dense_layers
    expert = 3 * h * im
    total = embed + L * attn + dense_layers * 3 * h * inter + moe_layers * (E * expert + h * E + shared)
    active = total - moe_layers * (E - k) * expert - V * h
    return float(total), float(active)


def model_from_config(path: str | Path) -> ModelSpec:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read config.json {str(path)!r}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config.json {str(path)!r} is not a JSON object; {_ACCEPTED}")
    cfg = {**raw, **raw["text_config"]} if isinstance(raw.get("text_config"), dict) else raw
    missing = [k for k in REQUIRED if cfg.get(k) is None]
    if missing:
        raise ConfigError(f"config.json {str(path)!r}: missing {', '.join(missing)}; {_ACCEPTED}")
    layers, H, h = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"]), int(cfg["hidden_size"])
    kv = int(cfg.get("num_key_value_heads") or H)
    mla = bool(cfg.get("kv_lora_rank"))
    if mla and cfg.get("qk_rope_head_dim") is None:
        raise ConfigError(f"config.json {str(path)!r}: MLA (kv_lora_rank) needs qk_rope_head_dim")
    head_dim = int(cfg.get("v_head_dim") if mla and cfg.get("v_head_dim") else cfg.get("head_dim") or h // H)
    window, n_sliding = _sliding(cfg, layers)
    total, active = estimate_params(cfg)
    E = _first(cfg, "num_local_experts", "num_experts", "n_routed_experts")
    k = _first(cfg, "num_experts_per_tok", "experts_per_token", "top_k")
    name = str(cfg.get("_name_or_path") or path.parent.name or path.stem)
    return ModelSpec(
        name=name, layers=layers, q_heads=H, kv_heads=kv, head_dim=head_dim, hidden_size=h, params_total=total,
        params_active=active, max_context=int(cfg["max_position_embeddings"]), sliding_window=window,
        sliding_layers=n_sliding, kv_lora_rank=int(cfg["kv_lora_rank"]) if mla else None,
        qk_rope_head_dim=int(cfg["qk_rope_head_dim"]) if mla else None,
        num_experts=int(E) if E else None, experts_per_token=int(k or 1) if E else None,
        hf_id=str(path.parent.resolve()), source=f"{path} (parameters estimated from the config)",
        date="")
