"""The OSCAR attention impl: store new K/V as packed slots, attend over the pages.

vLLM calls, per layer and step (forward_includes_kv_cache_update = False):
    do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)   # encode + store fresh tokens
    forward(layer, query, key, value, kv_cache, attn_metadata, output)
with query [T, q_heads, d], key/value [T, kv_heads, d] post-RoPE (the rank's heads) and kv_cache
the layer's page view [num_blocks, kv_heads, block_size, slot_bytes] uint8 (LBNHC in memory).

One path for decode, prefill and chunked prefill (any mix in a batch): each sequence's fresh
tokens attend to themselves causally in full precision and to its earlier tokens through the
packed pages (its first `sinks` positions from the bf16 sink pool). On CUDA that is the Triton
kernels (`write_kv`, `paged_attention`); elsewhere their PyTorch references
(`write_kv_reference`, `paged_attention_reference`), which are the kernels' spec. The profiling
run (attn_metadata None) writes nothing and returns zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from vllm.forward_context import get_forward_context
from vllm.v1.attention.backend import AttentionImpl, AttentionType

from ..codecs.oscar import OscarCodec
from ..errors import ConfigError
from ..kernels.attention import paged_attention, paged_attention_reference
from ..kernels.layout import LayerTables
from ..kernels.write_kv import read_slots, write_kv, write_kv_reference
from .metadata import OscarMetadata, SinkGroup

__all__ = ["OscarAttentionImpl", "LayerState", "packed_pages"]


@dataclass
class LayerState:
    """What the metadata builder gives a layer's impl: its global index, the rank's codec and
    kernel tables, and the bf16 sink pool sink_k, sink_v: [rows, sinks, kv_heads, d]."""

    name: str
    index: int
    codec: OscarCodec
    tables: LayerTables
    sink_k: torch.Tensor
    sink_v: torch.Tensor
    group: SinkGroup
    use_kernels: bool


def packed_pages(kv_cache: torch.Tensor, slot_bytes: int) -> torch.Tensor:
    """vLLM's layer view [num_blocks, kv_heads, block_size, slot_bytes] uint8 (LBNHC) -> the
    kernels' page [num_blocks, block_size, kv_heads, slot_bytes], the same memory."""
    pages = kv_cache.permute(0, 2, 1, 3)
    if pages.dtype != torch.uint8 or pages.shape[-1] != slot_bytes or not pages.is_contiguous():
        raise ConfigError(f"the OSCAR backend needs its uint8 pages in LBNHC order with {slot_bytes}-byte slots; got "
                          f"{pages.dtype} {tuple(kv_cache.shape)} strides {kv_cache.stride()} (leave "
                          "VLLM_KV_CACHE_LAYOUT unset or set it to LBNHC)")
    return pages


def _layer_metadata(layer_name: str):
    md = get_forward_context().attn_metadata
    if isinstance(md, list):  # speculative decoding's list of dicts
        md = md[0]
    return md.get(layer_name) if isinstance(md, dict) else md


class OscarAttentionImpl(AttentionImpl):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int | None = None,
                 alibi_slopes: list[float] | None = None, sliding_window: int | None = None,
                 kv_cache_dtype: str = "auto", logits_soft_cap: float | None = None,
                 attn_type: str = AttentionType.DECODER, kv_sharing_target_layer_name: str | None = None,
                 **kwargs):
        unsupported = []
        if sliding_window is not None:
            unsupported.append(f"sliding-window attention (window {sliding_window})")
        if attn_type != AttentionType.DECODER:
            unsupported.append(f"{attn_type} attention")
        if alibi_slopes is not None:
            unsupported.append("ALiBi")
        if logits_soft_cap:
            unsupported.append(f"logit soft-capping ({logits_soft_cap})")
        if kv_sharing_target_layer_name is not None:
            unsupported.append(f"a KV cache shared with {kv_sharing_target_layer_name}")
        if kwargs.get("sinks") is not None:
            unsupported.append("learned attention-sink logits")
        if unsupported:
            raise ConfigError("the OSCAR backend does not cover a layer with " + ", ".join(unsupported)
                              + ": serve this model without OSCAR")
        _check_served_model()
        self.num_heads, self.head_size, self.scale = num_heads, head_size, float(scale)
        self.num_kv_heads = num_kv_heads or num_heads
        self.kv_cache_dtype = kv_cache_dtype
        self.state: LayerState | None = None

    def attach(self, state: LayerState) -> None:
        if state.tables.kv_heads != self.num_kv_heads or state.tables.head_dim != self.head_size:
            raise ConfigError(f"layer {state.name}: the artifact's rank slice has {state.tables.kv_heads} KV heads of "
                              f"dim {state.tables.head_dim}, the layer {self.num_kv_heads} x {self.head_size}")
        self.state = state

    def _ready(self) -> LayerState:
        if self.state is None:
            raise ConfigError("OSCAR impl used before its metadata builder attached the artifact's tables")
        return self.state

    # ---- store ---------------------------------------------------------------------------------
    def do_kv_cache_update(self, layer, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                           slot_mapping: torch.Tensor) -> None:
        """vLLM's hook: key, value [tokens, kv_heads, d]; slot_mapping [tokens] int64 (-1 = padding)."""
        md = _layer_metadata(layer.layer_name)
        if md is None or kv_cache.numel() == 0:
            return  # profiling run
        self.store(md, key, value, slot_mapping, packed_pages(kv_cache, self._ready().tables.slot_bytes))

    def store(self, md: OscarMetadata, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor,
              pages: torch.Tensor) -> None:
        """Encode the step's tokens into their slots of `pages` [num_blocks, block_size, kv_heads,
        slot_bytes] uint8, and the ones at positions < sinks into the bf16 sink pool."""
        st = self._ready()
        T = md.num_actual_tokens
        # the codec encodes bf16 keys and values, whatever the model dtype (as OscarCache and the
        # kernels' PagedKVCache do): a float32 model stores the same codes as a bf16 one would
        k, v = key[:T].to(torch.bfloat16), value[:T].to(torch.bfloat16)
        slots, pos = slot_mapping[:T], md.positions[:T]
        if st.use_kernels:
            write_kv(k, v, pos, slots, pages, st.tables)
        else:
            write_kv_reference(st.codec, st.index, k, v, pos, slots, pages)
        if md.has_sink_writes:
            rows = md.sink_write_rows[:T]
            keep = rows >= 0
            st.sink_k[rows[keep], pos[keep]] = k[keep]
            st.sink_v[rows[keep], pos[keep]] = v[keep]

    # ---- attend --------------------------------------------------------------------------------
    def forward(self, layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata, output: torch.Tensor, output_scale: torch.Tensor | None = None,
                output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        """vLLM's hook: query [tokens, q_heads, d]; output [tokens, q_heads, d] written and returned."""
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("the OSCAR backend does not fuse output quantization")
        if attn_metadata is None:
            return output.zero_()  # profiling run
        pages = packed_pages(kv_cache, self._ready().tables.slot_bytes)
        return self.attend(attn_metadata, query, key, value, pages, output)

    def attend(self, md: OscarMetadata, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               pages: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Fresh tokens against their sequence's prefix in `pages` and causally against themselves."""
        st = self._ready()
        T = md.num_actual_tokens
        q, k, v = query[:T], key[:T], value[:T]
        sink_k, sink_v = self._sinks(md, st, pages)
        if st.use_kernels:
            out = paged_attention(q, k, v, pages, md.block_table, md.prefix_lens, md.query_start_loc, sink_k, sink_v,
                                  st.tables, self.scale, max_q_len=md.max_query_len, max_prefix=md.max_prefix_len)
        else:
            out = paged_attention_reference(q, k, v, pages, md.block_table, md.prefix_lens, md.query_start_loc,
                                            sink_k, sink_v, st.codec, st.index, st.tables, self.scale)
        output[:T] = out.to(output.dtype)
        return output

    def _sinks(self, md, st: LayerState, pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sequence's sinks: [B, sinks, kv_heads, d] float32, from the bf16 pool, or decoded
        from the packed slots for sequences without a pool row."""
        rows = md.sink_rows[:md.num_reqs].clamp_min(0)
        sink_k, sink_v = st.sink_k[rows].float(), st.sink_v[rows].float()
        bs = pages.shape[1]
        flat = pages.view(-1, pages.shape[2], pages.shape[3])
        for b, n in md.sink_fallback:
            pos = torch.arange(n, device=pages.device)
            slots = md.block_table[b, pos // bs].long() * bs + pos % bs
            k, v = read_slots(st.codec, st.index, flat[slots], pos, st.tables)
            sink_k[b, :n], sink_v[b, :n] = k, v
        return sink_k, sink_v


def _check_served_model() -> None:
    """Start-up gate in every layer's constructor (during model construction, before any weight or
    KV memory): the artifact exists, is an oscar artifact, and fits the served model."""
    from vllm.config import get_current_vllm_config_or_none

    from .artifact_info import check_model, read_artifact_info
    from .settings import settings_for

    cfg = get_current_vllm_config_or_none()
    if cfg is None or cfg.model_config is None:
        return  # constructed outside an engine (tests); the builder checks again
    info = read_artifact_info(settings_for(cfg).artifact)
    check_model(info, cfg.model_config.hf_config)
