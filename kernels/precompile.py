"""Compile the `write_kv` variants a codec needs in parallel processes, before the first batch.

Triton compiles each specialization on its first call, one after another, and keeps the result in
its disk cache, which every later process on the machine reads. A layer's variant is fixed by its
tile sizes (`layout.group_args`): Qwen2.5-1.5B's 28 layers need 17, which took 56.1 s to compile for
sm_90 one by one on a 2-core CPU and 30.4 s in 2 processes
(benchmarks/results/compile-variants-qwen2.5-coder-1.5b-cpu.json). On a fresh GPU machine the first
`oscar` batch of the 8K eval run took 255 s against 25-56 s for the later ones, compiling being the
likely difference (benchmarks/results/quality/python-docs/run.json).

`precompile_write_kv` sends one representative layer per variant to a pool of spawned processes.
Each stores a few random tokens through `KernelEncoder.slots`, the very call `OscarCache` makes, so
the compiled kernels land under the keys the main process will ask for.
"""

from __future__ import annotations

import os
import time

import torch

from ..codecs import Codec
from ..errors import ConfigError
from .layout import group_args, layer_tables

__all__ = ["write_kv_variants", "precompile_write_kv"]


def write_kv_variants(codec: Codec) -> dict[tuple, int]:
    """{(kind, tile sizes, RoPE mean): the first layer that needs it}; the fused transform compiles once
    per key (both kinds of a layer run in one call, so a layer stands for its K and its V variant). The
    host transform (write_kv's default) compiles the RoPE term out, so K and V with the same tiles
    share a variant there: for it the keys are an upper bound."""
    out: dict[tuple, int] = {}
    for layer in sorted(codec.layers):
        tb = layer_tables(codec, layer, storage_only=True)
        for kind, counts in zip(("k", "v"), tb.groups):
            tiles = tuple(v for k, v in group_args("G", counts).items() if k.endswith("P"))
            out.setdefault((kind, tiles, kind == "k" and tb.has_rope_mean), layer)
    return out


def _compile_layer(options: dict, state: bytes, layer: int, device: str) -> dict:
    """Worker: rebuild the codec (options, and its tensors as safetensors bytes) and store 16 random
    tokens of `layer` through write_kv, compiling its variants on the way -> {"seconds", "slots_sha256"}
    (the slots' digest lets a test compare them with the parent's)."""
    import hashlib

    from safetensors.torch import load as load_tensors

    from .. import codecs
    from .encoder import KernelEncoder

    t0 = time.perf_counter()
    codec = codecs.get("oscar", **options)
    codec.load_state_dict(load_tensors(state))
    enc = KernelEncoder(codec, device)
    tb = enc.tables(layer)
    g = torch.Generator().manual_seed(layer)
    k = torch.randn(16, tb.kv_heads, tb.head_dim, generator=g).to(enc.device)
    v = torch.randn(16, tb.kv_heads, tb.head_dim, generator=g).to(enc.device)
    slots = enc.slots(k, v, layer, torch.arange(16, device=enc.device)).cpu()
    return {"seconds": time.perf_counter() - t0, "slots_sha256": hashlib.sha256(slots.numpy().tobytes()).hexdigest()}


def precompile_write_kv(codec: Codec, device, workers: int | None = None, timeout_s: float = 900.0) -> dict:
    """Compile every `write_kv` variant of `codec` for `device` in `workers` spawned processes
    (default: one per variant, at most half the CPUs and 16), each given up after `timeout_s`.
    Returns what was done: variants, layers compiled, workers, seconds; on a CPU nothing is compiled
    (Triton interprets) and the reason says so."""
    if codec.name != "oscar" or not codec.fitted:
        raise ConfigError(f"precompile_write_kv needs a fitted 'oscar' codec, got {codec.name!r}")
    device = torch.device(device)
    variants = write_kv_variants(codec)
    layers = sorted(set(variants.values()))
    if device.type != "cuda":
        return {"variants": len(variants), "layers": 0, "workers": 0, "seconds": 0.0,
                "reason": f"nothing to compile on {device.type}: Triton interprets the kernels there"}
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    workers = workers or max(1, min(len(layers), (os.cpu_count() or 2) // 2, 16))
    t0 = time.perf_counter()
    from concurrent.futures import ProcessPoolExecutor

    from safetensors.torch import save as save_tensors

    # the tensors as one bytes object: plain bytes pickle cheaply (torch tensors sent to processes
    # would hold a file descriptor each, hundreds per artifact)
    options = codec.options()
    state = save_tensors({k: t.detach().cpu().clone() for k, t in codec.state_dict().items()})  # clone: no shared storage
    ctx = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        list(pool.map(_compile_layer, [options] * len(layers), [state] * len(layers), layers,
                      [str(device)] * len(layers), timeout=timeout_s))
    return {"variants": len(variants), "layers": len(layers), "workers": workers,
            "seconds": round(time.perf_counter() - t0, 1)}
