"""`KernelEncoder`: `OscarCache`'s storage step on the Triton `write_kv` kernel.

New tokens are written by `write_kv` into packed slots (one launch per kind and layer, instead of
the codec's few hundred small PyTorch operations per call) and read back with the codec's decode
(`read_slots`); sinks (positions < codec.sinks) keep their bf16 values, as the paged kernels keep
them in their sink buffers. The decoded tokens are what `paged_attention` attends over.
"""

from __future__ import annotations

import torch

from ..codecs import Codec
from ..errors import ConfigError
from .layout import LayerTables, layer_tables
from .write_kv import read_slots, write_kv

__all__ = ["KernelEncoder"]


class KernelEncoder:
    """Encoder for `OscarCache(codec, encoder=KernelEncoder(codec, device))`; `oscar` codec only."""

    name = "kernels"

    def __init__(self, codec: Codec, device):
        if codec.name != "oscar" or not codec.fitted:
            raise ConfigError(f"KernelEncoder needs a fitted 'oscar' codec, got {codec.name!r}")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.codec, self.device = codec, device
        self._tables: dict[int, LayerTables] = {}

    def tables(self, layer: int) -> LayerTables:
        if layer not in self._tables:
            # the cache keeps the recent window in bf16 and hands over only the tokens beyond it
            self._tables[layer] = layer_tables(self.codec, layer, self.device, storage_only=True)
        return self._tables[layer]

    def precompile(self, workers: int | None = None) -> dict:
        """Compile every write_kv variant this codec needs, in parallel processes (see
        `precompile.precompile_write_kv`); on a CPU nothing is compiled and the result says why."""
        from .precompile import precompile_write_kv

        return precompile_write_kv(self.codec, self.device, workers)

    def slots(self, k: torch.Tensor, v: torch.Tensor, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """k, v: [n, H, d]; positions: [n] -> the written slots [n, H, slot_bytes] uint8."""
        t = self.tables(layer)
        n = k.shape[0]
        pages = torch.empty(n, 1, t.kv_heads, t.slot_bytes, dtype=torch.uint8, device=k.device)
        write_kv(k.to(torch.bfloat16), v.to(torch.bfloat16), positions, torch.arange(n, device=k.device), pages, t)
        return pages.view(n, t.kv_heads, t.slot_bytes)

    def roundtrip(self, k: torch.Tensor, v: torch.Tensor, layer: int, positions: torch.Tensor):
        """k, v: [n, H, d]; positions: [n] -> (decoded k, decoded v, bytes stored)."""
        if k.device != self.device:
            raise ConfigError(f"KernelEncoder was built for {self.device}, the tokens are on {k.device}")
        t = self.tables(layer)
        slots = self.slots(k, v, layer, positions)
        dk, dv = read_slots(self.codec, layer, slots, positions, t)
        sink = positions < t.sinks
        dk = torch.where(sink[:, None, None], k.to(torch.bfloat16).float(), dk)
        dv = torch.where(sink[:, None, None], v.to(torch.bfloat16).float(), dv)
        # bytes as a 0-dim tensor: counting the sinks on the host would stall the GPU at every flush
        return dk, dv, slots.numel() + sink.sum() * (2 * 2 * t.kv_heads * t.head_dim)
