"""`oscar-serve` configuration: typed dataclasses loaded from YAML and validated once, here.

    engine: transformers            # or vllm
    http: {host: 127.0.0.1, port: 8000}
    model:
      name: smollm2-135m            # registered name (transformers) or HF id / planner preset (vllm)
      artifact: runs/demo/artifact  # OSCAR artifact (oscar-calibrate)
      codec: oscar                  # transformers engine: oscar | bf16 | any registered codec
      limits: {max_tokens: 256, max_context: 2048, max_body_bytes: 1048576, request_timeout_s: 120}
      autoscaling: {min_replicas: 1, max_replicas: 2, target_ongoing_requests: 2, max_ongoing_requests: 4}
      tensor_parallel_size: 1       # vllm engine; must divide the KV heads
      accelerator_type: H100        # vllm engine (Ray label)

Every error names the path of the bad field (`model.autoscaling.min_replicas`) and the fix.
Nothing here imports Ray, torch or vLLM.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["HttpOptions", "Limits", "Autoscaling", "ModelServe", "ServeConfig", "load_serve_config",
           "parse_serve_config", "ENGINES"]

ENGINES = ("transformers", "vllm")


@dataclass(frozen=True)
class HttpOptions:
    host: str = "127.0.0.1"  # loopback unless configured otherwise
    port: int = 8000


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 256  # per request, generated
    max_context: int = 2048  # prompt + generated tokens
    max_body_bytes: int = 1 << 20
    request_timeout_s: float = 120.0


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0  # always set: Ray's LLM builder default (1e9) never scales
    max_ongoing_requests: int = 4
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0


@dataclass(frozen=True)
class ModelServe:
    name: str
    artifact: str | None = None
    codec: str = "oscar"
    served_name: str | None = None  # the OpenAI `model` field; default: name
    prefill: str = "chunked"  # transformers engine: chunked | bf16
    prefill_chunk: int = 512
    device: str = "cpu"
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    accelerator_type: str | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    engine_kwargs: dict = field(default_factory=dict)  # vllm engine: extra engine args
    num_attention_heads: int | None = None  # vllm engine, models without a planner preset
    num_kv_heads: int | None = None
    limits: Limits = field(default_factory=Limits)
    autoscaling: Autoscaling = field(default_factory=Autoscaling)

    @property
    def model_id(self) -> str:
        return self.served_name or self.name


@dataclass(frozen=True)
class ServeConfig:
    model: ModelServe
    engine: str = "transformers"
    http: HttpOptions = field(default_factory=HttpOptions)
    app_name: str = "oscar"
    auth_token_env: str | None = None  # bearer token read from this environment variable


# ------------------------------------------------------------------------------------------------
# strict construction from plain data


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, path)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: expected a non-empty string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")  # pragma: no cover - schema bug


def _build(cls, data: Any, path: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown key; allowed here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: required")
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------------
# validation (once, at the boundary)


def _check(cond: bool, path: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {message}")


def _validate(cfg: ServeConfig, base: Path | None) -> ServeConfig:
    _check(cfg.engine in ENGINES, "engine", f"must be one of {', '.join(ENGINES)}, got {cfg.engine!r}")
    _check(0 < cfg.http.port < 65536, "http.port", f"must be in 1..65535, got {cfg.http.port}")
    m = cfg.model
    a = m.autoscaling
    init = a.initial_replicas if a.initial_replicas is not None else a.min_replicas
    _check(a.min_replicas >= 0, "model.autoscaling.min_replicas", f"must be >= 0, got {a.min_replicas}")
    _check(a.max_replicas >= 1, "model.autoscaling.max_replicas", f"must be >= 1, got {a.max_replicas}")
    _check(a.min_replicas <= a.max_replicas, "model.autoscaling.min_replicas",
           f"{a.min_replicas} > max_replicas {a.max_replicas}; lower min_replicas or raise max_replicas")
    _check(a.min_replicas <= init <= a.max_replicas, "model.autoscaling.initial_replicas",
           f"{init} is outside [min_replicas, max_replicas] = [{a.min_replicas}, {a.max_replicas}]")
    _check(a.target_ongoing_requests > 0, "model.autoscaling.target_ongoing_requests", "must be > 0")
    _check(a.max_ongoing_requests >= 1, "model.autoscaling.max_ongoing_requests", "must be >= 1")
    lim = m.limits
    for name in ("max_tokens", "max_context", "max_body_bytes"):
        _check(getattr(lim, name) >= 1, f"model.limits.{name}", "must be >= 1")
    _check(lim.max_tokens < lim.max_context, "model.limits.max_tokens",
           f"{lim.max_tokens} leaves no room for a prompt in max_context {lim.max_context}")
    _check(lim.request_timeout_s > 0, "model.limits.request_timeout_s", "must be > 0")
    _check(m.prefill in ("chunked", "bf16"), "model.prefill", f"must be chunked or bf16, got {m.prefill!r}")
    _check(m.prefill_chunk >= 1, "model.prefill_chunk", "must be >= 1")
    _check(m.tensor_parallel_size >= 1 and m.pipeline_parallel_size >= 1, "model.tensor_parallel_size",
           "tensor and pipeline parallel sizes must be >= 1")
    if m.artifact is not None:
        art = Path(m.artifact)
        if base is not None and not art.is_absolute():
            art = (base / art).resolve()
        m = dataclasses.replace(m, artifact=str(art))
        cfg = dataclasses.replace(cfg, model=m)
    if cfg.engine == "transformers":
        _check(m.tensor_parallel_size == 1 and m.pipeline_parallel_size == 1, "model.tensor_parallel_size",
               "the transformers engine runs one model per replica; use engine: vllm for tensor parallelism")
        _check(not m.engine_kwargs, "model.engine_kwargs", "only the vllm engine takes engine_kwargs")
        if m.codec == "oscar":
            _check(m.artifact is not None, "model.artifact",
                   "the oscar codec needs an artifact: run oscar-calibrate --model NAME --out DIR and set it here")
    else:
        _check(m.codec == "oscar", "model.codec", "the vllm engine serves the OSCAR backend only (codec: oscar)")
        _check(m.accelerator_type is not None, "model.accelerator_type",
               "the vllm engine needs a Ray accelerator label, e.g. H100 or H200")
        heads = _heads(m)
        tp = m.tensor_parallel_size
        _check(heads[1] % tp == 0 and heads[0] % tp == 0, "model.tensor_parallel_size",
               f"{tp} does not divide the model's {heads[0]} attention / {heads[1]} KV heads; use a divisor")
    if m.artifact is not None and (cfg.engine == "transformers" or Path(m.artifact).exists()):
        _check_artifact(cfg)  # a vllm artifact path may live on the cluster's volume only: checked at start-up
    return cfg


def _heads(m: ModelServe) -> tuple[int, int]:
    if m.num_attention_heads and m.num_kv_heads:
        return m.num_attention_heads, m.num_kv_heads
    from ..planner.presets import resolve_model

    try:
        spec = resolve_model(m.name)
    except ConfigError as e:
        raise ConfigError(f"model.name: {e}; or give model.num_attention_heads and model.num_kv_heads") from None
    return spec.q_heads, spec.kv_heads


def _model_fingerprint(cfg: ServeConfig) -> dict | None:
    """The served model's fingerprint from its config alone (no weights), or None if unknown here."""
    m = cfg.model
    if cfg.engine == "transformers":
        from ..models import REGISTRY, cached_config

        if m.name in REGISTRY:
            return cached_config(m.name)
        p = Path(m.name)
        if (p / "config.json").is_file():
            from transformers import AutoConfig

            from ..models import fingerprint

            return fingerprint(AutoConfig.from_pretrained(p))
        return None
    from ..planner.presets import resolve_model

    try:
        spec = resolve_model(m.name)
    except ConfigError:
        return None
    return {"num_layers": spec.layers, "num_heads": spec.q_heads, "num_kv_heads": spec.kv_heads,
            "head_dim": spec.head_dim}


def _check_artifact(cfg: ServeConfig) -> None:
    from ..artifact import read_metadata
    from ..errors import ArtifactError

    try:
        meta = read_metadata(cfg.model.artifact)
    except ArtifactError as e:
        raise ConfigError(f"model.artifact: {e}") from None
    fp = _model_fingerprint(cfg)
    if fp is None:
        return
    got = meta.get("model", {})
    diffs = [f"{k} {got.get(k)!r} vs {fp[k]!r}" for k in fp if k in got and got.get(k) != fp[k]]
    if diffs:
        raise ConfigError(f"model.artifact: {cfg.model.artifact} was calibrated for another model ("
                          + "; ".join(diffs) + f"); calibrate for {cfg.model.name} with oscar-calibrate")


def parse_serve_config(data: Any, base: str | Path | None = None) -> ServeConfig:
    """Build and validate a config from plain data (`base`: directory for relative paths)."""
    return _validate(_build(ServeConfig, data, ""), Path(base) if base is not None else None)


def load_serve_config(path: str | Path) -> ServeConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file (see examples/serve-smollm2.yaml)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_serve_config(data, base=p.parent)
