"""`OscarCache`: a transformers `Cache` that stores keys and values through a codec (DESIGN.md s. 7).

Per layer it keeps, for attention, a view of every token seen: decoded where stored, bf16 for the
most recent `codec.recent` tokens and partial token groups (`codec.token_group`), which are
encoded once they leave that window. The tokens of the
current forward call are attended in full precision: with chunked prefill every chunk attends to
itself in bf16 and to the earlier chunks through the codec (the serving-faithful protocol).
`prefill="bf16"` keeps the whole prompt in bf16 until the first one-token (decode) step, then
encodes it (the bf16-prefill protocol).

Batches of prompts with different lengths are left-padded (`set_left_padding`): item b's stored
token j sits at position j - pad[b], and the model gets the matching attention mask and position
ids (`generation.greedy_generate_batch`). Every flush encodes all items' tokens in one codec call.

Encoding goes through an encoder: `CodecEncoder` (the codec's own PyTorch encode/decode, the
default) or `oscar_cluster.kernels.KernelEncoder` (the Triton `write_kv` into packed slots, read
back with the codec's decode: the same slots the paged kernels attend over).

This is the PyTorch reference path: the decoded view costs full-precision memory. Memory is
reported from the encoded payloads (`stored_bytes`); the packed-page path is the kernels'.
"""

from __future__ import annotations

import weakref

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .codecs import Codec
from .errors import ConfigError

__all__ = ["OscarCache", "OscarLayer", "CodecEncoder"]


class CodecEncoder:
    """Store tokens with the codec's own `encode` and read them back with its `decode`."""

    name = "codec"

    def __init__(self, codec: Codec):
        self.codec = codec

    def roundtrip(self, k: torch.Tensor, v: torch.Tensor, layer: int, positions: torch.Tensor):
        """k, v: [n, H, d]; positions: [n] -> (decoded k, decoded v, bytes stored: int or 0-dim tensor)."""
        ek = self.codec.encode(k, "k", layer, positions)
        ev = self.codec.encode(v, "v", layer, positions)
        return self.codec.decode(ek), self.codec.decode(ev), ek.nbytes() + ev.nbytes()


class OscarLayer(DynamicLayer):
    """One layer. `view_k`/`view_v`: [B, H, capacity, d], every token seen: decoded where stored,
    bf16 where not yet (the recent window and partial token groups). The tokens of a call are
    attended in full precision, then settled (rounded, encoded, replaced in place by their decoded
    values) at the start of the next call.

    Codecs without token groups encode all items' new tokens in one call (pads included: they are
    masked, never read). Codecs with token groups (KIVI) encode item by item from its first real
    token, so its groups fall where they fall when the item runs alone."""

    def __init__(self, owner: "OscarCache", layer_idx: int):
        super().__init__()
        # a weak reference: a cycle cache -> layer -> cache would keep every cache's buffers (GBs at long
        # context) alive until Python's cycle collector happens to run
        self.owner, self.codec, self.layer_idx = weakref.proxy(owner), owner.codec, layer_idx
        self.n_seen = 0  # cache indices seen (pads included)
        self.encoded_bytes = 0
        self.prefilling = True

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        B, H, _, d = key_states.shape
        pads = self.owner.left_padding or [0] * B
        if len(pads) != B:
            raise ConfigError(f"OscarCache has left padding for {len(pads)} sequences, the model sent {B}")
        self.pads = pads
        # per item, the cache index where its not-yet-encoded tokens begin
        self.stored = [0] * B if self.codec.token_group == 1 else list(pads)
        self.rounded = 0  # cache indices below this hold bf16 values (or decoded ones)
        self.view_k = key_states.new_zeros(B, H, 0, d)
        self.view_v = value_states.new_zeros(B, H, 0, d)

    @property
    def n_stored(self) -> int:
        """Tokens encoded (of item 0, pads not counted)."""
        return max(0, self.stored[0] - self.pads[0]) if self.is_initialized else 0

    @property
    def tail_k(self) -> torch.Tensor:
        """The keys not yet encoded (item 0's boundary): [B, H, n, d]."""
        return self.view_k[:, :, self.stored[0]:self.n_seen]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states/value_states: [B, H, T, d] of the current call -> all keys/values to attend
        ([B, H, seen + T, d], a view of the layer's buffer: valid until the next update)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        T = key_states.shape[-2]
        if self.prefilling and T == 1 and self.n_seen > 0:
            self.prefilling = False  # bf16 prefill ends: the prompt is read through the codec from now on
        self.settle()  # earlier calls' tokens: bf16, and encoded once out of the recent window
        end = self.n_seen + T
        if end > self.view_k.shape[-2]:  # grow the buffer geometrically
            cap = max(end, 2 * self.view_k.shape[-2], 256)
            B, H, _, d = self.view_k.shape
            for name in ("view_k", "view_v"):
                old = getattr(self, name)
                new = old.new_empty(B, H, cap, d)
                new[:, :, :self.n_seen] = old[:, :, :self.n_seen]
                setattr(self, name, new)
        self.view_k[:, :, self.n_seen:end] = key_states  # attended now in full precision
        self.view_v[:, :, self.n_seen:end] = value_states
        self.n_seen = end
        return self.view_k[:, :, :end], self.view_v[:, :, :end]

    @torch.inference_mode()  # the buffers were made under inference mode; this may be called outside it
    def settle(self) -> None:
        """Round the tokens of earlier calls to bf16 and encode those beyond the recent window (whole
        token groups). Runs at the start of each update, after the previous call attended."""
        if not self.is_initialized:
            return
        if self.rounded < self.n_seen and self.view_k.dtype != torch.bfloat16:
            for view in (self.view_k, self.view_v):
                view[:, :, self.rounded:self.n_seen] = view[:, :, self.rounded:self.n_seen].to(torch.bfloat16).to(view.dtype)
        self.rounded = self.n_seen
        if not (self.owner.prefill == "bf16" and self.prefilling):
            self._flush()

    def _flush(self) -> None:
        """Encode what lies beyond the bf16 recent window, in whole token groups."""
        g, recent = self.codec.token_group, self.codec.recent
        B = self.view_k.shape[0]
        if g == 1:  # all items at once
            lo = self.stored[0]
            n = self.n_seen - lo - recent
            if n > 0:
                pos = self.owner.positions(lo, n, self.view_k.device).expand(B, n).reshape(-1)  # [B * n]
                self._store(slice(None), lo, n, pos)
                self.stored = [lo + n] * B
            return
        for b in range(B):
            lo = self.stored[b]
            n = (self.n_seen - lo - recent) // g * g
            if n > 0:
                pos = self.owner.positions(lo, n, self.view_k.device).expand(B, n)[b]  # [n]
                self._store(slice(b, b + 1), lo, n, pos)
                self.stored[b] = lo + n

    def _store(self, items: slice, lo: int, n: int, pos: torch.Tensor) -> None:
        """Encode view[items, :, lo:lo+n] (item-major, positions `pos`) and put the decoded tokens back."""
        k = self.view_k[items, :, lo:lo + n]
        B, H, _, d = k.shape
        kf = k.transpose(1, 2).reshape(B * n, H, d)
        vf = self.view_v[items, :, lo:lo + n].transpose(1, 2).reshape(B * n, H, d)
        dk, dv, nbytes = self.owner.encoder.roundtrip(kf, vf, self.layer_idx, pos)
        self.view_k[items, :, lo:lo + n] = dk.reshape(B, n, H, d).transpose(1, 2).to(self.view_k.dtype)
        self.view_v[items, :, lo:lo + n] = dv.reshape(B, n, H, d).transpose(1, 2).to(self.view_v.dtype)
        self.encoded_bytes = self.encoded_bytes + nbytes  # an int, or a 0-dim tensor (no device sync)

    def get_seq_length(self) -> int:
        return self.n_seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.n_seen + query_length, 0

    def stored_bytes(self) -> int:
        """Bytes held by encoded payloads plus the tokens kept in bf16 (pads not counted), once the
        last call's tokens are settled."""
        if not self.is_initialized:
            return 0
        self.settle()
        H, d = self.view_k.shape[1], self.view_k.shape[3]
        waiting = sum(self.n_seen - max(s, p) for s, p in zip(self.stored, self.pads))
        return int(self.encoded_bytes) + 2 * 2 * H * d * waiting

    def crop(self, tokens_to_remove: int) -> None:
        raise ConfigError("OscarCache cannot be cropped (encoded tokens are not removable); use a new cache")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise ConfigError("OscarCache does not support beam search or num_return_sequences > 1")

    def reorder_cache(self, beam_idx) -> None:
        raise ConfigError("OscarCache does not support beam search")


class OscarCache(Cache):
    """transformers Cache storing K/V through `codec` (an `oscar_cluster.codecs.Codec`, fitted).

    prefill: "chunked" (earlier chunks through the codec) or "bf16" (whole prompt in bf16 until
    the first decode step); encoder: how tokens are stored (default `CodecEncoder(codec)`). Use with
    `model.generate(..., past_key_values=OscarCache(codec))`.
    """

    def __init__(self, codec: Codec, prefill: str = "chunked", encoder=None):
        if prefill not in ("chunked", "bf16"):
            raise ConfigError(f"prefill must be 'chunked' or 'bf16', got {prefill!r}")
        if not codec.fitted:
            raise ConfigError(f"codec {codec.name!r} is not fitted: load an artifact or call fit(stats)")
        if encoder is not None and getattr(encoder, "codec", None) is not codec:
            raise ConfigError("the encoder was built for another codec object than the cache's")
        self.codec, self.prefill = codec, prefill
        self.encoder = encoder or CodecEncoder(codec)
        self.left_padding: list[int] | None = None
        self._pads: dict[torch.device, torch.Tensor] = {}
        super().__init__(layers=[])

    def set_left_padding(self, pads: list[int]) -> None:
        """Item b of the batch starts with pads[b] padding tokens (before the first update)."""
        if self.layers:
            raise ConfigError("set_left_padding must come before the cache's first update")
        if any(int(p) < 0 for p in pads):
            raise ConfigError(f"left padding must be >= 0 tokens per item, got {list(pads)}")
        self.left_padding = [int(p) for p in pads]

    def positions(self, start: int, n: int, device) -> torch.Tensor:
        """Positions of cache indices start..start+n-1 per item: [B or 1, n] long (pads at 0)."""
        idx = torch.arange(start, start + n, device=device)[None]
        if self.left_padding is None:
            return idx
        device = torch.device(device)
        if device not in self._pads:
            self._pads[device] = torch.tensor(self.left_padding, device=device)[:, None]
        return (idx - self._pads[device]).clamp_min(0)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(OscarLayer(self, len(self.layers)))
        return self.layers[layer_idx].update(key_states, value_states)

    def stored_bytes(self) -> int:
        return sum(layer.stored_bytes() for layer in self.layers)
