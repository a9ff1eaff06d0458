"""`oscar:` Prometheus gauges beside vLLM's `vllm:` ones (the `vllm.stat_logger_plugins` entry point).

vLLM loads stat-logger plugins in the API-server process of `vllm serve` (AsyncLLM) and exports
the default Prometheus registry on /metrics. The gauges describe the OSCAR cache of the engine:

    oscar:kv_bits_per_element        bits per element of a packed slot (codes + scales)
    oscar:codec_bits_per_element     the codec's true cost at max_model_len (bf16 sinks included)
    oscar:kv_bytes_per_token         packed KV bytes per token, all layers and KV heads
    oscar:kv_bf16_bytes_per_token    the same in bf16
    oscar:kv_compression_ratio       bf16 bytes per token / packed bytes per token
    oscar:kv_capacity_tokens         tokens the engine's KV blocks hold (num_gpu_blocks x block_size)
    oscar:kv_bf16_capacity_tokens    tokens a bf16 cache would hold in the same KV memory
    oscar:kv_sink_pool_bytes         bf16 sink pool per rank (outside vLLM's KV budget)
    oscar:kv_cache_tokens_in_use     vllm:kv_cache_usage_perc x capacity, updated every step

Labels: model_name, engine. Gauges are registered once per process: an earlier logger's `oscar:`
collectors are removed first, as vLLM does with its own. vLLM loads stat-logger plugins for every
engine, so the logger stays inert (no gauges) unless the engine runs the OSCAR backend: on a GPU
when `--attention-backend CUSTOM` (or a per-kind CUSTOM) is selected, on the CPU platform always
(the plugin overrides CPU_ATTN there).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Gauge
from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import StatLoggerBase

from .artifact_info import read_artifact_info
from .capacity import KvCapacity, kv_capacity, sink_pool_bytes
from .settings import resolve_settings

__all__ = ["OscarStatLogger", "GAUGES", "oscar_selected"]

GAUGES = {
    "oscar:kv_bits_per_element": "Bits per element of a packed OSCAR slot (codes and scales)",
    "oscar:codec_bits_per_element": "True OSCAR bits per element at max_model_len, bf16 sinks included",
    "oscar:kv_bytes_per_token": "Packed KV bytes per token, all layers and KV heads",
    "oscar:kv_bf16_bytes_per_token": "bf16 KV bytes per token, all layers and KV heads",
    "oscar:kv_compression_ratio": "bf16 KV bytes per token / packed KV bytes per token",
    "oscar:kv_capacity_tokens": "Tokens the engine's KV blocks hold",
    "oscar:kv_bf16_capacity_tokens": "Tokens a bf16 KV cache would hold in the same memory",
    "oscar:kv_sink_pool_bytes": "Bytes of the bf16 attention-sink pool per rank (outside vLLM's KV budget)",
    "oscar:kv_cache_tokens_in_use": "Tokens of KV cache in use (KV usage x capacity)",
}


def _unregister_oscar_gauges() -> None:
    for collector in list(REGISTRY._collector_to_names):
        if getattr(collector, "_name", "").startswith("oscar:"):
            REGISTRY.unregister(collector)


def oscar_selected(vllm_config: VllmConfig) -> bool:
    """Does this engine run the OSCAR backend (the plugin's CUSTOM slot, or CPU_ATTN on CPU)?"""
    from vllm.platforms import current_platform

    attn = vllm_config.attention_config
    chosen = [attn.backend, *attn.backend_per_kind.values()]
    return current_platform.is_cpu() or any(b is not None and b.name == "CUSTOM" for b in chosen)


class OscarStatLogger(StatLoggerBase):
    def __init__(self, vllm_config: VllmConfig, engine_index: int = 0):
        self.vllm_config = vllm_config
        self.active = oscar_selected(vllm_config)
        self.capacity: KvCapacity | None = None
        if not self.active:
            return
        self.info = read_artifact_info(resolve_settings(vllm_config.additional_config).artifact)
        labels = {"model_name": str(vllm_config.model_config.served_model_name), "engine": str(engine_index)}
        _unregister_oscar_gauges()
        self.gauges = {name: Gauge(name, doc, list(labels), multiprocess_mode="mostrecent").labels(**labels)
                       for name, doc in GAUGES.items()}

    def figures(self) -> KvCapacity:
        """The engine's capacity; valid once vLLM has allocated the KV cache."""
        cfg = self.vllm_config
        mc, pc = cfg.model_config, cfg.parallel_config
        return kv_capacity(num_blocks=int(cfg.cache_config.num_gpu_blocks or 0),
                           block_size=int(cfg.cache_config.block_size), num_layers=mc.get_num_layers(pc),
                           total_kv_heads=mc.get_total_num_kv_heads(), rank_kv_heads=mc.get_num_kv_heads(pc),
                           head_dim=self.info.head_dim, slot_bytes=self.info.slot_bytes,
                           kv_memory_bytes=cfg.cache_config.kv_cache_memory_bytes)

    def log_engine_initialized(self) -> None:
        if not self.active:
            return
        cfg = self.vllm_config
        c = self.capacity = self.figures()
        settings = resolve_settings(cfg.additional_config)
        rows = settings.sink_rows or 2 * cfg.scheduler_config.max_num_seqs
        mc, pc = cfg.model_config, cfg.parallel_config
        values = {
            "oscar:kv_bits_per_element": c.bits_per_element,
            "oscar:codec_bits_per_element": self.info.bits_per_element(int(mc.max_model_len)),
            "oscar:kv_bytes_per_token": c.kv_bytes_per_token,
            "oscar:kv_bf16_bytes_per_token": c.bf16_bytes_per_token,
            "oscar:kv_compression_ratio": c.bf16_bytes_per_token / c.kv_bytes_per_token,
            "oscar:kv_capacity_tokens": c.capacity_tokens,
            "oscar:kv_bf16_capacity_tokens": c.bf16_capacity_tokens,
            "oscar:kv_sink_pool_bytes": sink_pool_bytes(rows, self.info.sinks, mc.get_num_layers(pc),
                                                        mc.get_num_kv_heads(pc), self.info.head_dim),
        }
        for name, value in values.items():
            self.gauges[name].set(value)

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
        if scheduler_stats is not None and self.capacity is not None:
            self.gauges["oscar:kv_cache_tokens_in_use"].set(scheduler_stats.kv_cache_usage
                                                            * self.capacity.capacity_tokens)
