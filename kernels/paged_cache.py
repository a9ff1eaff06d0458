"""`PagedKVCache`: a transformers `Cache` on paged storage that attends through the Triton kernels.

storage="oscar": packed uint8 pages (`write_kv` on every update, `paged_attention` to attend; the
first `codec.sinks` positions also kept in bf16), the fast path of `OscarCache` on CUDA.
storage="bf16": bf16 pages and the same attention kernel (the baseline of the benchmarks).

The tokens of the current forward call are attended in full precision against the stored prefix,
as `OscarCache(prefill="chunked")` does, so both produce the same text up to float rounding.

    with paged_attention_enabled(model):
        cache = PagedKVCache(codec, batch_size=B, max_tokens=L, device="cuda")
        model(input_ids=ids, past_key_values=cache, oscar_cache=cache, use_cache=True)

`paged_generate` wraps that loop for greedy decoding. Batches hold equal-length prompts (no
padding); the attention mask is not consulted.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..codecs import Codec
from ..errors import ConfigError
from .attention import paged_attention, paged_attention_bf16
from .layout import layer_tables, slot_bytes_for
from .write_kv import write_kv

__all__ = ["PagedKVCache", "paged_attention_enabled", "paged_generate", "ATTENTION_NAME"]

ATTENTION_NAME = "oscar_paged"


class PagedLayer(DynamicLayer):
    """One layer's pages. oscar: pages [blocks, block_size, H, slot_bytes] uint8 and sinks
    [B, S, H, d] bf16; bf16: k_pages, v_pages [blocks, block_size, H, d]."""

    def __init__(self, owner: "PagedKVCache", layer_idx: int):
        super().__init__()
        self.owner, self.layer_idx = weakref.proxy(owner), layer_idx  # no cycle: buffers die with the cache
        self.n_seen = 0
        self.prefix = 0  # tokens stored before the current call (what attention reads from pages)

    def lazy_initialization(self, key_states, value_states) -> None:
        o = self.owner
        B, H, _, d = key_states.shape
        if B != o.n_seqs:
            raise ConfigError(f"PagedKVCache was made for batch {o.n_seqs}, the model sent {B}")
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True
        nb = o.n_seqs * o.blocks_per_seq
        if o.storage == "oscar":
            self.tables = layer_tables(o.codec, self.layer_idx, key_states.device, slot_bytes=o.slot_bytes)
            if self.tables.kv_heads != H or self.tables.head_dim != d:
                raise ConfigError(f"layer {self.layer_idx}: the codec covers {self.tables.kv_heads} KV heads of dim "
                                  f"{self.tables.head_dim}, the model has {H} x {d}; use this model's artifact")
            self.pages = torch.zeros(nb, o.block_size, H, o.slot_bytes, dtype=torch.uint8, device=self.device)
            self.sink_k = torch.zeros(B, self.tables.sinks, H, d, dtype=torch.bfloat16, device=self.device)
            self.sink_v = torch.zeros_like(self.sink_k)
        else:
            self.k_pages = torch.zeros(nb, o.block_size, H, d, dtype=torch.bfloat16, device=self.device)
            self.v_pages = torch.zeros_like(self.k_pages)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states/value_states: [B, H, T, d] -> the same (fresh tokens), after storing them."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        o = self.owner
        B, H, T, d = key_states.shape
        P = self.n_seen
        if P + T > o.max_tokens:
            raise ConfigError(f"PagedKVCache holds {o.max_tokens} tokens per sequence; this call would reach {P + T}")
        pos = torch.arange(P, P + T, device=self.device)
        slots = (o.block_table(self.device)[:, pos // o.block_size].long() * o.block_size + pos % o.block_size)
        # keys and values are stored from their bf16 values (as OscarCache does; bf16 is what a
        # serving model produces)
        kf = key_states.transpose(1, 2).reshape(B * T, H, d).to(torch.bfloat16)
        vf = value_states.transpose(1, 2).reshape(B * T, H, d).to(torch.bfloat16)
        if o.storage == "oscar":
            write_kv(kf, vf, pos.repeat(B), slots.reshape(-1), self.pages, self.tables)
            S = self.tables.sinks
            if P < S:
                n = min(S, P + T) - P
                self.sink_k[:, P:P + n] = key_states[:, :, :n].transpose(1, 2).to(torch.bfloat16)
                self.sink_v[:, P:P + n] = value_states[:, :, :n].transpose(1, 2).to(torch.bfloat16)
        else:
            self.k_pages.view(-1, H, d)[slots.reshape(-1)] = kf
            self.v_pages.view(-1, H, d)[slots.reshape(-1)] = vf
        self.prefix = P
        self.n_seen = P + T
        return key_states, value_states

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float) -> torch.Tensor:
        """query: [B, Hq, T, d], key/value: [B, H, T, d] fresh -> [B, T, Hq, d]."""
        o = self.owner
        B, Hq, T, d = query.shape
        H = key.shape[1]
        q = query.transpose(1, 2).reshape(B * T, Hq, d)
        kf = key.transpose(1, 2).reshape(B * T, H, d)
        vf = value.transpose(1, 2).reshape(B * T, H, d)
        dev = query.device
        prefix = torch.full((B,), self.prefix, dtype=torch.int32, device=dev)
        cu_q = torch.arange(B + 1, dtype=torch.int32, device=dev) * T
        bt = o.block_table(dev)
        kw = dict(max_q_len=T, max_prefix=self.prefix)
        if o.storage == "oscar":
            out = paged_attention(q, kf, vf, self.pages, bt, prefix, cu_q, self.sink_k, self.sink_v, self.tables,
                                  scaling, **kw)
        else:
            out = paged_attention_bf16(q, kf, vf, self.k_pages, self.v_pages, bt, prefix, cu_q, scaling, **kw)
        return out.view(B, T, Hq, d)

    def fill_random_(self, length: int, generator: torch.Generator | None = None) -> None:
        """Benchmarks: pretend `length` tokens are stored (random pages, valid fp16 scales)."""
        if length > self.owner.max_tokens:
            raise ConfigError(f"length {length} exceeds max_tokens {self.owner.max_tokens}")
        if self.owner.storage == "oscar":
            self.pages.random_(0, 256, generator=generator)
            sb = self.owner.slot_bytes
            self.pages[..., sb - 4:].view(torch.float16).fill_(0.5)
            self.sink_k.normal_(generator=generator)
            self.sink_v.normal_(generator=generator)
        else:
            self.k_pages.normal_(generator=generator)
            self.v_pages.normal_(generator=generator)
        self.n_seen = self.prefix = length

    def get_seq_length(self) -> int:
        return self.n_seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.n_seen + query_length, 0

    def nbytes(self) -> int:
        if not self.is_initialized:
            return 0
        if self.owner.storage == "oscar":
            return sum(t.numel() * t.element_size() for t in (self.pages, self.sink_k, self.sink_v))
        return 2 * self.k_pages.numel() * self.k_pages.element_size()

    def crop(self, tokens_to_remove: int) -> None:
        raise ConfigError("PagedKVCache cannot be cropped; use a new cache")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise ConfigError("PagedKVCache does not support beam search or num_return_sequences > 1")

    def reorder_cache(self, beam_idx) -> None:
        raise ConfigError("PagedKVCache does not support beam search")


class PagedKVCache(Cache):
    """Paged KV cache for `batch_size` sequences of up to `max_tokens` tokens.

    codec: a fitted `oscar` codec (storage="oscar"); storage: "oscar" | "bf16"; block_size: tokens
    per page. Pages of a sequence are contiguous block ids (the kernels take any block table)."""

    def __init__(self, codec: Codec | None = None, *, batch_size: int, max_tokens: int, block_size: int = 16,
                 storage: str = "oscar"):
        if storage not in ("oscar", "bf16"):
            raise ConfigError(f"storage must be 'oscar' or 'bf16', got {storage!r}")
        if storage == "oscar":
            if codec is None or codec.name != "oscar" or not codec.fitted:
                raise ConfigError("storage='oscar' needs a fitted 'oscar' codec (load the model's artifact)")
            self.slot_bytes = slot_bytes_for(codec)
        if batch_size <= 0 or max_tokens <= 0 or block_size <= 0:
            raise ConfigError(f"batch_size, max_tokens and block_size must be positive, got {batch_size}, "
                              f"{max_tokens}, {block_size}")
        self.codec, self.storage = codec, storage
        self.n_seqs, self.max_tokens, self.block_size = int(batch_size), int(max_tokens), int(block_size)
        self.blocks_per_seq = -(-self.max_tokens // self.block_size)
        self._block_table: dict[torch.device, torch.Tensor] = {}
        super().__init__(layers=[])

    def block_table(self, device) -> torch.Tensor:
        """[batch, blocks_per_seq] int32: sequence b owns blocks b*blocks_per_seq ...."""
        device = torch.device(device)
        if device not in self._block_table:
            self._block_table[device] = torch.arange(self.n_seqs * self.blocks_per_seq, dtype=torch.int32,
                                                     device=device).view(self.n_seqs, self.blocks_per_seq)
        return self._block_table[device]

    def layer(self, layer_idx: int) -> PagedLayer:
        while len(self.layers) <= layer_idx:
            self.layers.append(PagedLayer(self, len(self.layers)))
        return self.layers[layer_idx]

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        return self.layer(layer_idx).update(key_states, value_states)

    def nbytes(self) -> int:
        """Bytes held by the pages (and sink buffers) of all layers."""
        return sum(layer.nbytes() for layer in self.layers)


def _paged_attention_fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, oscar_cache=None,
                        **kwargs):
    if oscar_cache is None:
        raise ConfigError(f"attention '{ATTENTION_NAME}' needs the cache as a keyword: "
                          "model(..., past_key_values=cache, oscar_cache=cache)")
    if dropout:
        raise ConfigError("the paged kernels are for inference; dropout must be 0")
    out = oscar_cache.layer(module.layer_idx).attend(query, key, value, scaling if scaling is not None else module.scaling)
    return out, None


@contextmanager
def paged_attention_enabled(model) -> Iterator[None]:
    """Switch `model` to the paged-kernel attention function; the previous one is restored on exit."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _paged_attention_fn)
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@torch.inference_mode()
def paged_generate(model, input_ids: torch.Tensor, cache: PagedKVCache, max_new_tokens: int,
                   prefill_chunk: int | None = None) -> torch.Tensor:
    """Greedy decoding through the kernels. input_ids: [B, T] -> generated ids [B, max_new_tokens] (CPU)."""
    dev = next(model.parameters()).device
    ids = input_ids.to(dev)
    B, T = ids.shape
    step = prefill_chunk or T
    with paged_attention_enabled(model):
        logits = None
        for s in range(0, T, step):
            chunk = ids[:, s:s + step]
            pos = torch.arange(s, s + chunk.shape[1], device=dev)[None].expand(B, -1)
            logits = model(input_ids=chunk, position_ids=pos, past_key_values=cache, oscar_cache=cache,
                           use_cache=True).logits
        out = []
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        for i in range(max_new_tokens):
            out.append(nxt)
            if i == max_new_tokens - 1:
                break
            pos = torch.full((B, 1), T + i, device=dev)
            logits = model(input_ids=nxt, position_ids=pos, past_key_values=cache, oscar_cache=cache,
                           use_cache=True).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
    return torch.cat(out, dim=1).cpu()
