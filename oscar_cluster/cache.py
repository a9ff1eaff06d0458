"""`OscarCache`: a transformers `Cache` that stores keys and values through a codec (DESIGN.md s. 7).

Per layer it keeps the encoded tokens (the codec's payloads), a bf16 tail of the most recent
`codec.recent` tokens (flushed in multiples of `codec.token_group`), and, for attention, a decoded
view of the stored tokens. The tokens of the current forward call are attended in full precision:
with chunked prefill every chunk attends to itself in bf16 and to the earlier chunks through the
codec (the serving-faithful protocol). `prefill="bf16"` keeps the whole prompt in bf16 until the
first one-token (decode) step, then encodes it (the bf16-prefill protocol).

This is the PyTorch reference path: the decoded view costs full-precision memory. Memory is
reported from the encoded payloads (`stored_bytes`); the packed-page path is the kernels'.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .codecs import Codec
from .errors import ConfigError

__all__ = ["OscarCache", "OscarLayer"]


class OscarLayer(DynamicLayer):
    """One layer. `keys`/`values`: [B, H, S, d], the decoded stored tokens followed by the bf16 tail."""

    def __init__(self, codec: Codec, layer_idx: int, prefill: str):
        super().__init__()
        self.codec, self.layer_idx, self.prefill = codec, layer_idx, prefill
        self.encoded: list[list] = []  # per batch item: list of (Encoded k, Encoded v)
        self.n_stored = 0  # tokens encoded (positions 0 .. n_stored-1)
        self.n_seen = 0  # tokens seen
        self.prefilling = True

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        B, H, _, d = key_states.shape
        self.encoded = [[] for _ in range(B)]
        self.keys = key_states.new_zeros(B, H, 0, d)
        self.values = value_states.new_zeros(B, H, 0, d)
        self.tail_k = key_states.new_zeros(B, H, 0, d)
        self.tail_v = value_states.new_zeros(B, H, 0, d)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states/value_states: [B, H, T, d] of the current call -> all keys/values to attend."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        T = key_states.shape[-2]
        if self.prefilling and T == 1 and self.n_seen > 0:
            self.prefilling = False
            self._flush()  # bf16 prefill ends: the prompt is read through the codec from now on
        keys = torch.cat([self.keys, self.tail_k, key_states], dim=-2)
        values = torch.cat([self.values, self.tail_v, value_states], dim=-2)
        self.tail_k = torch.cat([self.tail_k, key_states.to(torch.bfloat16).to(key_states.dtype)], dim=-2)
        self.tail_v = torch.cat([self.tail_v, value_states.to(torch.bfloat16).to(value_states.dtype)], dim=-2)
        self.n_seen += T
        if not (self.prefill == "bf16" and self.prefilling):
            self._flush()
        return keys, values

    def _flush(self) -> None:
        """Encode the tail beyond the bf16 window, in whole token groups."""
        g = self.codec.token_group
        n = self.tail_k.shape[-2] - self.codec.recent
        n = (n // g) * g if n > 0 else 0
        if n <= 0:
            return
        pos = torch.arange(self.n_stored, self.n_stored + n, device=self.tail_k.device)
        dec_k, dec_v = [], []
        for b in range(self.tail_k.shape[0]):
            k = self.tail_k[b, :, :n].transpose(0, 1)  # [n, H, d]
            v = self.tail_v[b, :, :n].transpose(0, 1)
            ek = self.codec.encode(k, "k", self.layer_idx, pos)
            ev = self.codec.encode(v, "v", self.layer_idx, pos)
            self.encoded[b].append((ek, ev))
            dec_k.append(self.codec.decode(ek).transpose(0, 1))
            dec_v.append(self.codec.decode(ev).transpose(0, 1))
        self.keys = torch.cat([self.keys, torch.stack(dec_k).to(self.keys.dtype)], dim=-2)
        self.values = torch.cat([self.values, torch.stack(dec_v).to(self.values.dtype)], dim=-2)
        self.tail_k, self.tail_v = self.tail_k[:, :, n:], self.tail_v[:, :, n:]
        self.n_stored += n

    def get_seq_length(self) -> int:
        return self.n_seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.n_seen + query_length, 0

    def stored_bytes(self) -> int:
        """Bytes held by encoded payloads plus the bf16 tail (2 bytes per element)."""
        enc = sum(ek.nbytes() + ev.nbytes() for item in self.encoded for ek, ev in item)
        return enc + 2 * (self.tail_k.numel() + self.tail_v.numel()) if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        raise ConfigError("OscarCache cannot be cropped (encoded tokens are not removable); use a new cache")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise ConfigError("OscarCache does not support beam search or num_return_sequences > 1")

    def reorder_cache(self, beam_idx) -> None:
        raise ConfigError("OscarCache does not support beam search")


class OscarCache(Cache):
    """transformers Cache storing K/V through `codec` (an `oscar_cluster.codecs.Codec`, fitted).

    prefill: "chunked" (earlier chunks through the codec) or "bf16" (whole prompt in bf16 until
    the first decode step). Use with `model.generate(..., past_key_values=OscarCache(codec))`.
    """

    def __init__(self, codec: Codec, prefill: str = "chunked"):
        if prefill not in ("chunked", "bf16"):
            raise ConfigError(f"prefill must be 'chunked' or 'bf16', got {prefill!r}")
        if not codec.fitted:
            raise ConfigError(f"codec {codec.name!r} is not fitted: load an artifact or call fit(stats)")
        self.codec, self.prefill = codec, prefill
        super().__init__(layers=[])

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(OscarLayer(self.codec, len(self.layers), self.prefill))
        return self.layers[layer_idx].update(key_states, value_states)

    def stored_bytes(self) -> int:
        return sum(layer.stored_bytes() for layer in self.layers)
