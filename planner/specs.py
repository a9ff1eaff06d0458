"""Planner inputs: model and GPU specs, the request, and the format enums (DESIGN.md section 8).

Every spec is a frozen dataclass checked in `__post_init__`; YAML and config.json are read at the
boundary (`presets.py`, `hfconfig.py`) and turned into these. Units are in the field names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from oscar_cluster.errors import ConfigError

__all__ = ["KVFormat", "WeightFormat", "ModelSpec", "GPUSpec", "PlanRequest", "GIB", "parse_tokens"]

GIB = 1024**3


class KVFormat(str, Enum):
    """KV cache storage formats compared side by side (bits per element in memory.py)."""

    BF16 = "bf16"  # 16 bits: vLLM's default cache
    FP8 = "fp8"  # 8 bits: vLLM kv_cache_dtype=fp8 (e4m3, per-tensor scale)
    INT4 = "int4"  # 4 + 32/d bits: codes plus an fp16 scale and zero per head vector
    OSCAR_INT2 = "oscar-int2"  # the OSCAR codec's true cost: 2 + 16/d bits plus bf16 sinks


class WeightFormat(str, Enum):
    """Weight storage formats (`--weights`); bits per parameter in memory.py."""

    BF16 = "bf16"
    FP8 = "fp8"
    INT4 = "int4"


def _choices(enum) -> str:
    return "|".join(m.value for m in enum)


@dataclass(frozen=True)
class ModelSpec:
    """One model's shape. Parameters in units of 1 (not billions).

    sliding_layers: how many of `layers` use a sliding window of `sliding_window` tokens.
    MLA (DeepSeek-V2/V3): `kv_lora_rank` + `qk_rope_head_dim` elements per token per layer.
    MoE: `num_experts` routed experts, `experts_per_token` of them active per token;
    `params_total` sizes memory, `params_active` sizes compute.
    """

    name: str
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    params_total: float
    max_context: int
    params_active: float | None = None
    sliding_window: int | None = None
    sliding_layers: int = 0
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    num_experts: int | None = None
    experts_per_token: int | None = None
    hf_id: str | None = None
    aliases: tuple[str, ...] = ()
    source: str = ""
    date: str = ""
    version: int = 1

    def __post_init__(self):
        for f in ("layers", "q_heads", "kv_heads", "head_dim", "hidden_size", "max_context"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"model {self.name!r}: {f} must be a positive integer, got {v!r}")
        if not self.params_total > 0:
            raise ConfigError(f"model {self.name!r}: params_total must be positive, got {self.params_total}")
        if self.params_active is not None and not 0 < self.params_active <= self.params_total:
            raise ConfigError(f"model {self.name!r}: params_active ({self.params_active:.4g}) must be in "
                              f"(0, params_total={self.params_total:.4g}]")
        if self.q_heads % self.kv_heads:
            raise ConfigError(f"model {self.name!r}: q_heads {self.q_heads} is not a multiple of "
                              f"kv_heads {self.kv_heads}")
        if not 0 <= self.sliding_layers <= self.layers:
            raise ConfigError(f"model {self.name!r}: sliding_layers {self.sliding_layers} not in [0, {self.layers}]")
        if (self.sliding_layers > 0) != (self.sliding_window is not None):
            raise ConfigError(f"model {self.name!r}: sliding_window and sliding_layers go together "
                              f"(got window={self.sliding_window}, layers={self.sliding_layers})")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"model {self.name!r}: sliding_window must be positive, got {self.sliding_window}")
        if (self.kv_lora_rank is None) != (self.qk_rope_head_dim is None):
            raise ConfigError(f"model {self.name!r}: MLA needs both kv_lora_rank and qk_rope_head_dim")
        if (self.num_experts is None) != (self.experts_per_token is None):
            raise ConfigError(f"model {self.name!r}: MoE needs both num_experts and experts_per_token")
        if self.num_experts is not None and not 0 < self.experts_per_token <= self.num_experts:
            raise ConfigError(f"model {self.name!r}: experts_per_token {self.experts_per_token} not in "
                              f"[1, num_experts={self.num_experts}]")

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    @property
    def active(self) -> float:
        """Parameters used per token (MoE: shared + routed experts chosen; dense: all)."""
        return self.params_active if self.params_active is not None else self.params_total

    @property
    def full_layers(self) -> int:
        return self.layers - self.sliding_layers


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator from the catalog. memory_gib: total as the driver reports it;
    interconnect_gb_per_s: GPU-to-GPU bandwidth within a node, one direction."""

    name: str
    memory_gib: float
    hbm_tb_per_s: float
    bf16_tflops: float
    interconnect: str
    interconnect_gb_per_s: float
    allreduce_latency_us: float
    internode_gb_per_s: float
    gpus_per_node: int
    usd_per_gpu_hour: float
    ray_accelerator_type: str
    price_source: str
    price_date: str
    spec_source: str
    aliases: tuple[str, ...] = ()
    version: int = 1

    def __post_init__(self):
        for f in ("memory_gib", "hbm_tb_per_s", "bf16_tflops", "interconnect_gb_per_s", "internode_gb_per_s",
                  "usd_per_gpu_hour"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"gpu {self.name!r}: {f} must be a positive number, got {v!r}")
        if isinstance(self.allreduce_latency_us, bool) or not self.allreduce_latency_us >= 0:
            raise ConfigError(f"gpu {self.name!r}: allreduce_latency_us must be >= 0, got {self.allreduce_latency_us!r}")
        if not isinstance(self.gpus_per_node, int) or self.gpus_per_node <= 0:
            raise ConfigError(f"gpu {self.name!r}: gpus_per_node must be a positive integer, got {self.gpus_per_node!r}")
        for f in ("name", "price_source", "price_date", "spec_source", "ray_accelerator_type"):
            if not str(getattr(self, f)).strip():
                raise ConfigError(f"gpu {self.name!r}: {f} must not be empty (prices and specs carry a source and a date)")
        if self.interconnect not in ("nvlink", "pcie"):
            raise ConfigError(f"gpu {self.name!r}: interconnect must be 'nvlink' or 'pcie', got {self.interconnect!r}")


@dataclass(frozen=True)
class PlanRequest:
    """What the user asks: serve `batch` concurrent sequences of `ctx` tokens of `model` on `gpu`.

    max_gpus: the GPUs available (None: no limit); a plan needing more does not fit.
    oscar_bits: bits per element for OSCAR INT2 when given (None: ask the codec, else 2.25).
    """

    model: ModelSpec
    gpu: GPUSpec
    ctx: int
    batch: int
    weights: WeightFormat = WeightFormat.BF16
    gpu_mem_util: float = 0.9
    max_gpus: int | None = None
    kv_formats: tuple[KVFormat, ...] = tuple(KVFormat)
    oscar_bits: float | None = None
    version: int = 1

    def __post_init__(self):
        if isinstance(self.ctx, bool) or not isinstance(self.ctx, int) or self.ctx <= 0:
            raise ConfigError(f"ctx must be a positive token count (e.g. 131072 or 128k), got {self.ctx!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch <= 0:
            raise ConfigError(f"batch must be a positive integer (concurrent sequences), got {self.batch!r}")
        if not 0 < self.gpu_mem_util <= 1:
            raise ConfigError(f"gpu_mem_util must be in (0, 1], got {self.gpu_mem_util}")
        if self.max_gpus is not None and self.max_gpus <= 0:
            raise ConfigError(f"max_gpus must be positive, got {self.max_gpus}")
        if self.oscar_bits is not None and not 0 < self.oscar_bits <= 16:
            raise ConfigError(f"oscar_bits must be in (0, 16], got {self.oscar_bits}")
        if self.weights not in {w.value for w in WeightFormat}:
            raise ConfigError(f"weights {self.weights!r}: choose from {_choices(WeightFormat)}")
        bad = [f for f in self.kv_formats if f not in {k.value for k in KVFormat}]
        if bad:
            raise ConfigError(f"KV format(s) {', '.join(map(repr, bad))}: choose from {_choices(KVFormat)}")
        object.__setattr__(self, "weights", WeightFormat(self.weights))
        object.__setattr__(self, "kv_formats", tuple(KVFormat(f) for f in self.kv_formats))
        if not self.kv_formats:
            raise ConfigError(f"kv_formats is empty; choose from {_choices(KVFormat)}")


_SUFFIX = {"k": 1024, "m": 1024**2}


def parse_tokens(text: str | int, what: str = "--ctx") -> int:
    """'128k' -> 131072, '1m' -> 1048576, '131072' -> 131072 (k = 1024 tokens, as vLLM's 128K)."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        s = str(text).strip().lower().replace("_", "")
        mult = _SUFFIX.get(s[-1:], 1)
        digits = s[:-1] if s[-1:] in _SUFFIX else s
        try:
            n = int(float(digits) * mult) if "." in digits else int(digits) * mult
        except (ValueError, OverflowError):
            n = -1
    if n <= 0:
        raise ConfigError(f"{what} {text!r} is not a token count; accepted forms: 131072, 128k, 1m (k = 1024)")
    return n
