"""Tensor parallelism: the KV heads of one rank and the codec restricted to them (DESIGN.md s. 7).

vLLM splits K/V projections by KV head: with H total heads on T ranks, rank r holds heads
[r H/T, (r+1) H/T) when T divides H, and head r // (T/H) (replicated) when H divides T. Every
per-head tensor of the codec is sliced the same way; bit layouts are per layer and shared, so
the slot size and the kernels' constexprs are the same on every rank.
"""

from __future__ import annotations

from .. import codecs
from ..codecs.oscar import OscarCodec
from ..errors import ConfigError

__all__ = ["kv_head_range", "shard_codec"]

_PER_HEAD = ("T", "T_inv", "mean", "std", "rope_mean")  # [H, ...]; "bits" [d] and "inv_freq" [d/2] are shared


def kv_head_range(rank: int, world: int, total_kv_heads: int) -> tuple[int, int]:
    """(first head, head count) of tensor-parallel rank `rank` of `world`."""
    H = total_kv_heads
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"tensor-parallel rank {rank} is not in 0..{world - 1}")
    if H >= world:
        if H % world:
            raise ConfigError(f"tensor-parallel size {world} does not divide the model's {H} KV heads")
        return rank * (H // world), H // world
    if world % H:
        raise ConfigError(f"the model's {H} KV heads do not divide tensor-parallel size {world}")
    return rank // (world // H), 1


def shard_codec(codec: OscarCodec, first: int, count: int) -> OscarCodec:
    """A fitted `oscar` codec for KV heads [first, first + count) of `codec` (a new object)."""
    if not isinstance(codec, OscarCodec) or not codec.fitted:
        raise ConfigError("shard_codec needs a fitted 'oscar' codec")
    H = next(iter(codec.layers.values()))["k"].T.shape[0]
    if not (0 <= first and count >= 1 and first + count <= H):
        raise ConfigError(f"KV heads [{first}, {first + count}) are not within the codec's {H} heads")
    if (first, count) == (0, H):
        return codec
    state = {}
    for key, t in codec.state_dict().items():
        name = key.rsplit(".", 1)[1]
        state[key] = t[first:first + count].clone() if name in _PER_HEAD else t
    out = codecs.get("oscar", **codec.options())
    out.load_state_dict(state)
    out.metadata = getattr(codec, "metadata", None)
    return out
