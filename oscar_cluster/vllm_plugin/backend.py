"""The OSCAR attention backend's vLLM classes: the backend (and its CPU_ATTN twin) and the metadata builder.

Page: vLLM allocates, per layer, [num_blocks, kv_heads, block_size, slot_bytes] uint8 in LBNHC
order, i.e. [num_blocks, block_size, kv_heads, slot_bytes] in memory: exactly the kernels' page
(kernels/layout.py). `customize_spec` sets dtype uint8 and the slot size from the artifact, so
vLLM's `available // bytes_per_block` gives proportionally more blocks than bf16.

The builder loads the artifact once per worker, slices it to the rank's KV heads (`tp.py`),
attaches each layer's kernel tables and bf16 sink buffers to its impl (`impl.py`), and per step
turns vLLM's `CommonAttentionMetadata` into `OscarMetadata` (`metadata.py`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import ClassVar

import torch
from vllm.config import VllmConfig, get_current_vllm_config_or_none, get_layers_from_vllm_config
from vllm.v1.attention.backend import (AttentionBackend, AttentionCGSupport, AttentionMetadataBuilder,
                                       CommonAttentionMetadata)
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheLayout

from ..artifact import load_artifact
from ..errors import ArtifactError, ConfigError
from ..kernels.layout import layer_tables, slot_bytes_for
from ..models import fingerprint
from .artifact_info import KERNEL_HEAD_DIMS, check_model, read_artifact_info
from .impl import LayerState, OscarAttentionImpl
from .kv_dtype import KV_DTYPE
from .metadata import OscarMetadata, SinkGroup, build_metadata
from .settings import recorded_settings, settings_for
from .sinks import SinkRows
from .tp import kv_head_range, shard_codec

__all__ = ["OscarAttentionBackend", "OscarCPUAttentionBackend", "OscarMetadataBuilder", "attach_layers"]

log = logging.getLogger("vllm.oscar")  # under vLLM's logger, so vLLM's handlers print it


def _settings(vllm_config: VllmConfig | None = None):
    cfg = vllm_config or get_current_vllm_config_or_none()
    return settings_for(cfg) if cfg is not None else recorded_settings()


class OscarAttentionBackend(AttentionBackend):
    """Selected with `--attention-backend CUSTOM` once the plugin has registered it."""

    forward_includes_kv_cache_update = False  # vLLM calls impl.do_kv_cache_update, then impl.forward
    supported_dtypes: ClassVar[list[torch.dtype]] = [torch.float16, torch.bfloat16, torch.float32]
    supported_kv_cache_dtypes: ClassVar[list[str]] = ["auto", KV_DTYPE]

    @staticmethod
    def get_name() -> str:
        return "CUSTOM"  # Attention.__init__ looks the name up in AttentionBackendEnum

    @staticmethod
    def get_impl_cls() -> type[OscarAttentionImpl]:
        return OscarAttentionImpl

    @staticmethod
    def get_builder_cls() -> type["OscarMetadataBuilder"]:
        return OscarMetadataBuilder

    @classmethod
    def get_supported_head_sizes(cls) -> list[int]:
        return list(KERNEL_HEAD_DIMS)

    @classmethod
    def supported_kv_cache_layouts(cls) -> tuple[KVCacheLayout, ...]:
        return (KVCacheLayout.LBNHC,)  # [blocks, tokens, heads, slot] in memory, as the kernels read it

    @classmethod
    def supports_sliding_window(cls) -> bool:
        # Accepted at selection so that start-up stops with OSCAR's own message naming the
        # sliding-window layers (artifact_info.check_model, impl constructor), not a bare refusal.
        return True

    @classmethod
    def customize_spec(cls, spec: AttentionSpec) -> AttentionSpec:
        """One uint8 slot of the artifact's size per (token, KV head)."""
        if getattr(spec, "sliding_window", None) is not None:
            raise ConfigError(f"the OSCAR backend does not cover sliding-window layers (window {spec.sliding_window})")
        info = read_artifact_info(_settings().artifact)
        if spec.head_size != info.head_dim or spec.head_size_v != info.head_dim:
            raise ConfigError(f"OSCAR artifact {info.path} is for head size {info.head_dim}; the layer has "
                              f"{spec.head_size}/{spec.head_size_v}: calibrate for this model")
        return replace(spec, dtype=torch.uint8, state_content_bytes=info.slot_bytes)


class OscarCPUAttentionBackend(OscarAttentionBackend):
    """The same backend under the name vLLM's CPU platform always selects (the CPU_ATTN override)."""

    @staticmethod
    def get_name() -> str:
        return "CPU_ATTN"


class OscarMetadataBuilder(AttentionMetadataBuilder[OscarMetadata]):
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.NEVER

    def __init__(self, kv_cache_spec: AttentionSpec, layer_names: list[str], vllm_config: VllmConfig,
                 device: torch.device):
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.group = attach_layers(kv_cache_spec, layer_names, vllm_config, device)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> OscarMetadata:
        return build_metadata(common_attn_metadata, self.group, self.device)


def attach_layers(spec: AttentionSpec, layer_names: list[str], vllm_config: VllmConfig,
                  device: torch.device) -> SinkGroup:
    """Load the artifact, check it against the model, and give every layer of the group its rank's
    tables and sink buffers. Returns the group's shared sink-row map (reused when another builder
    of the same layers already attached them)."""
    from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size
    from vllm.model_executor.layers.attention import Attention
    from vllm.model_executor.models.utils import extract_layer_index

    layers = get_layers_from_vllm_config(vllm_config, Attention, layer_names)
    states = [layer.impl.state for layer in layers.values() if isinstance(layer.impl, OscarAttentionImpl)]
    if states and states[0] is not None:
        return states[0].group
    settings = _settings(vllm_config)
    info = read_artifact_info(settings.artifact)
    model_config = vllm_config.model_config
    check_model(info, model_config.hf_config)
    if vllm_config.speculative_config is not None:
        raise ConfigError("the OSCAR backend does not support speculative decoding; leave out --speculative-config")
    codec = load_artifact(settings.artifact, fingerprint=fingerprint(model_config.hf_config))
    if slot_bytes_for(codec) != info.slot_bytes:
        raise ArtifactError(f"{info.path}: oscar.yaml layouts give {info.slot_bytes}-byte slots, the transforms "
                            f"{slot_bytes_for(codec)}; the artifact is inconsistent: re-run oscar-calibrate")
    first, count = kv_head_range(get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size(),
                                 model_config.get_total_num_kv_heads())
    if count != spec.num_kv_heads:
        raise ConfigError(f"this rank holds {spec.num_kv_heads} KV heads, the OSCAR tensor-parallel split gives "
                          f"{count}")
    rank_codec = shard_codec(codec, first, count)
    rows = settings.sink_rows or 2 * vllm_config.scheduler_config.max_num_seqs
    group = SinkGroup(rows=SinkRows(rows), sinks=codec.sinks)
    use_kernels = torch.device(device).type == "cuda"
    for name, layer in layers.items():
        if not isinstance(layer.impl, OscarAttentionImpl):
            raise ConfigError(f"layer {name} runs {type(layer.impl).__name__}, not the OSCAR impl")
        index = extract_layer_index(name)
        tables = layer_tables(rank_codec, index, device, slot_bytes=info.slot_bytes)
        sink = torch.zeros(rows, codec.sinks, count, info.head_dim, dtype=torch.bfloat16, device=device)
        layer.impl.attach(LayerState(name=name, index=index, codec=rank_codec, tables=tables, sink_k=sink,
                                     sink_v=torch.zeros_like(sink), group=group, use_kernels=use_kernels))
    log.info("OSCAR backend: %d layers, KV heads %d..%d of %d, %d-byte slots (%.3f bits/element), %s path%s",
             len(layers), first, first + count - 1, model_config.get_total_num_kv_heads(), info.slot_bytes,
             info.slot_bytes * 4 / info.head_dim,
             "Triton kernel" if use_kernels else "PyTorch reference (no CUDA device; Triton kernels need one)",
             f", sink pool {rows} rows" if codec.sinks else "")
    return group
