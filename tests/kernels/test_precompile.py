"""Parallel compile of the write_kv variants (kernels.precompile): which layers stand for which
compiled variant, the CPU refusal, and the worker's rebuild of the codec in a spawned process."""

import importlib
import multiprocessing

import pytest
import torch

from oscar_cluster.errors import ConfigError
from oscar_cluster.kernels import KernelEncoder, layer_tables
from oscar_cluster.synthetic import synthetic_oscar_codec

pre = importlib.import_module("oscar_cluster.kernels.precompile")


def _codec_with_layouts(layouts):
    """A 64-dim synthetic codec whose layer i has K and V bits layouts[i] (lists of (channels, bits))."""
    codec = synthetic_oscar_codec(64, 2, 4, layers=len(layouts), seed=3)
    for layer, kinds in enumerate(layouts):
        for kind, runs in zip(("k", "v"), kinds):
            codec.layers[layer][kind].bits = torch.tensor([b for w, b in runs for _ in range(w)], dtype=torch.int64)
    return codec


def test_one_layer_per_compiled_variant():
    # segments of 8 channels at 4/3/2/1 bits -> tile sizes (counts rounded up to a power of two, >= 2; 1 absent)
    codec = _codec_with_layouts([
        ([(8, 4), (56, 2)], [(64, 2)]),            # K (1,0,7,0) -> (2,1,8,1); V (0,0,8,0) -> (1,1,8,1)
        ([(16, 3), (48, 2)], [(64, 2)]),           # K (0,2,6,0) -> (1,2,8,1); V as layer 0
        ([(16, 4), (48, 2)], [(8, 3), (56, 2)]),   # K (2,0,6,0) -> (2,1,8,1) as layer 0; V (0,1,7,0) -> (1,2,8,1)
    ])
    rope = layer_tables(codec, 0).has_rope_mean
    assert pre.write_kv_variants(codec) == {
        ("k", (2, 1, 8, 1), rope): 0, ("v", (1, 1, 8, 1), False): 0,
        ("k", (1, 2, 8, 1), rope): 1, ("v", (1, 2, 8, 1), False): 2,
    }


def test_a_recent_window_compiles_the_same_variants():
    """write_kv stores only the tokens beyond a codec's bf16 recent window (the cache keeps the
    window), so a codec with one needs the same write_kv variants as without (the 2026-11-30 GPU
    ablation of a 32-token window failed here: the tables refused the codec)."""
    from oscar_cluster import codecs

    codec = _codec_with_layouts([([(8, 4), (56, 2)], [(64, 2)])])
    windowed = codecs.get("oscar", recent=32)
    windowed.load_state_dict(codec.state_dict())
    assert pre.write_kv_variants(windowed) == pre.write_kv_variants(codec)
    with pytest.raises(ConfigError, match="recent window"):
        layer_tables(windowed, 0)  # the paged attention kernels keep no window


def test_nothing_to_compile_on_cpu_and_bad_codecs_are_named():
    codec = _codec_with_layouts([([(64, 2)], [(64, 2)])])
    info = KernelEncoder(codec, "cpu").precompile()
    assert info["layers"] == 0 and info["variants"] == 2 and "interprets" in info["reason"]
    from oscar_cluster import codecs

    with pytest.raises(ConfigError, match="fitted 'oscar'"):
        pre.precompile_write_kv(codecs.get("int2"), "cpu")


def test_worker_rebuilds_the_codec_in_a_spawned_process():
    """The worker gets the codec as options and tensors, rebuilds it and stores tokens through
    write_kv; run in a spawned process as the pool runs it (the interpreter stands in for the GPU)."""
    import hashlib

    from safetensors.torch import save

    codec = _codec_with_layouts([([(8, 4), (56, 2)], [(64, 2)]), ([(16, 3), (48, 2)], [(8, 3), (56, 2)])])
    state = save({k: t.clone() for k, t in codec.state_dict().items()})
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        got = pool.apply(pre._compile_layer, (codec.options(), state, 1, "cpu"))
    # the child's slots are the parent's: same codec, same tokens (the worker's seed is the layer)
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(16, 2, 64, generator=g), torch.randn(16, 2, 64, generator=g)
    want = KernelEncoder(codec, "cpu").slots(k, v, 1, torch.arange(16))
    assert got["slots_sha256"] == hashlib.sha256(want.numpy().tobytes()).hexdigest()
    assert got["seconds"] > 0
