"""Preset data: model presets and the GPU catalog, read from YAML (`presets/*.yaml`) and checked.

YAML is parsed with `safe_load`; unknown keys are rejected by name and missing ones listed, so a
typo in a catalog file never silently falls back to a default.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from oscar_cluster.errors import ConfigError

from .specs import GPUSpec, ModelSpec

__all__ = ["load_models", "load_gpus", "find_model", "find_gpu", "resolve_model", "PRESET_DIR"]

PRESET_DIR = Path(__file__).parent / "presets"

_MODEL_REQUIRED = ("name", "hf_id", "layers", "q_heads", "kv_heads", "head_dim", "hidden_size", "params_total_b",
                   "max_context", "source", "date")
_MODEL_OPTIONAL = ("aliases", "params_active_b", "sliding_window", "sliding_layers", "kv_lora_rank",
                   "qk_rope_head_dim", "num_experts", "experts_per_token", "notes")
_GPU_REQUIRED = ("name", "memory_gib", "hbm_tb_per_s", "bf16_tflops", "interconnect", "interconnect_gb_per_s",
                 "allreduce_latency_us", "internode_gb_per_s", "gpus_per_node", "usd_per_gpu_hour", "price_source",
                 "price_date", "spec_source", "ray_accelerator_type")
_GPU_OPTIONAL = ("aliases",)


def _read_yaml(path: Path, list_key: str) -> list[dict[str, Any]]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"catalog file {str(path)!r} does not exist") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {str(path)!r}: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(list_key), list):
        raise ConfigError(f"{str(path)!r}: expected a mapping with a {list_key!r} list")
    extra = sorted(set(doc) - {"version", list_key})
    if extra:
        raise ConfigError(f"{str(path)!r}: unknown top-level key(s) {', '.join(extra)}; known: version, {list_key}")
    if doc.get("version", 1) != 1:
        raise ConfigError(f"{str(path)!r}: version {doc['version']!r} is not supported (expected 1)")
    return doc[list_key]


def _check_keys(entry: Any, required: tuple, optional: tuple, what: str, path: Path) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{str(path)!r}: each {what} entry must be a mapping, got {type(entry).__name__}")
    label = f"{what} {entry.get('name', '?')!r} in {str(path)!r}"
    unknown = sorted(set(entry) - set(required) - set(optional))
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {', '.join(unknown)}; known keys: "
                          f"{', '.join(required + optional)}")
    missing = [k for k in required if k not in entry]
    if missing:
        raise ConfigError(f"{label}: missing key(s) {', '.join(missing)}")
    return entry


def _aliases(entry: dict) -> tuple[str, ...]:
    a = entry.get("aliases") or []
    if not isinstance(a, list) or not all(isinstance(x, str) for x in a):
        raise ConfigError(f"{entry['name']!r}: aliases must be a list of strings")
    return tuple(x.lower() for x in a)


def _model_from_entry(e: dict) -> ModelSpec:
    try:
        return ModelSpec(
            name=str(e["name"]), layers=e["layers"], q_heads=e["q_heads"], kv_heads=e["kv_heads"],
            head_dim=e["head_dim"], hidden_size=e["hidden_size"], params_total=float(e["params_total_b"]) * 1e9,
            params_active=None if e.get("params_active_b") is None else float(e["params_active_b"]) * 1e9,
            max_context=e["max_context"], sliding_window=e.get("sliding_window"),
            sliding_layers=e.get("sliding_layers", 0), kv_lora_rank=e.get("kv_lora_rank"),
            qk_rope_head_dim=e.get("qk_rope_head_dim"), num_experts=e.get("num_experts"),
            experts_per_token=e.get("experts_per_token"), hf_id=e["hf_id"], aliases=_aliases(e),
            source=str(e["source"]), date=str(e["date"]))
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"model {e.get('name')!r}: bad value: {err}") from None


def _gpu_from_entry(e: dict) -> GPUSpec:
    try:
        fields = {k: e[k] for k in _GPU_REQUIRED}
        for k in ("name", "price_source", "price_date", "spec_source", "ray_accelerator_type", "interconnect"):
            fields[k] = str(fields[k])
        return GPUSpec(**fields, aliases=_aliases(e))
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"gpu {e.get('name')!r}: bad value: {err}") from None


@lru_cache(maxsize=1)
def load_models() -> tuple[ModelSpec, ...]:
    path = PRESET_DIR / "models.yaml"
    entries = _read_yaml(path, "models")
    return tuple(_model_from_entry(_check_keys(e, _MODEL_REQUIRED, _MODEL_OPTIONAL, "model", path)) for e in entries)


def _load_gpu_file(path: Path) -> tuple[GPUSpec, ...]:
    entries = _read_yaml(path, "gpus")
    return tuple(_gpu_from_entry(_check_keys(e, _GPU_REQUIRED, _GPU_OPTIONAL, "gpu", path)) for e in entries)


@lru_cache(maxsize=1)
def _builtin_gpus() -> tuple[GPUSpec, ...]:
    return _load_gpu_file(PRESET_DIR / "gpus.yaml")


def load_gpus(catalog: str | Path | None = None) -> tuple[GPUSpec, ...]:
    """The built-in catalog, with entries of `catalog` (if given) replacing same-named GPUs or added."""
    base = list(_builtin_gpus())
    if catalog is None:
        return tuple(base)
    for g in _load_gpu_file(Path(catalog)):
        keys = {g.name.lower(), *g.aliases}
        base = [b for b in base if not keys & {b.name.lower(), *b.aliases}] + [g]
    return tuple(base)


def _lookup(name: str, items, what: str, hint: str):
    key = name.strip().lower()
    for it in items:
        if key == it.name.lower() or key in it.aliases or key == (getattr(it, "hf_id", None) or "").lower():
            return it
    known = ", ".join(f"{it.name} ({'/'.join(it.aliases[:2])})" if it.aliases else it.name for it in items)
    raise ConfigError(f"unknown {what} {name!r}; known: {known}{hint}")


def find_model(name: str) -> ModelSpec:
    return _lookup(name, load_models(), "model", "; or a path to a transformers config.json")


def find_gpu(name: str, catalog: str | Path | None = None) -> GPUSpec:
    return _lookup(name, load_gpus(catalog), "gpu", "; or add it with --catalog FILE")


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset name or alias, or a config.json path (a directory holding one also works)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        p = p / "config.json"
    if p.is_file():
        from .hfconfig import model_from_config

        return model_from_config(p)
    if name_or_path.endswith(".json") or "/" in name_or_path and not _is_preset(name_or_path):
        raise ConfigError(f"model {name_or_path!r}: no such file and no such preset; known presets: "
                          f"{', '.join(m.aliases[0] if m.aliases else m.name for m in load_models())}, "
                          f"or a path to a transformers config.json")
    return find_model(name_or_path)


def _is_preset(name: str) -> bool:
    key = name.lower()
    return any(key in (m.name.lower(), (m.hf_id or "").lower(), *m.aliases) for m in load_models())
