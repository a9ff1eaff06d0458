"""OscarCache: layer semantics on synthetic tensors, and generation with the real embedded model."""

import pytest
import torch

from oscar_cluster import codecs
from oscar_cluster.cache import OscarCache
from oscar_cluster.errors import ConfigError


def _kv(B, H, T, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, T, d, generator=g), torch.randn(B, H, T, d, generator=g)


def test_current_chunk_is_full_precision_and_earlier_chunks_decoded():
    codec = codecs.get("int4", head_dim=16)
    cache = OscarCache(codec)
    k1, v1 = _kv(2, 3, 5, 16, 0)
    k_out, v_out = cache.update(k1, v1, 0)
    assert torch.equal(k_out, k1) and torch.equal(v_out, v1)  # first chunk attends to itself exactly
    k2, v2 = _kv(2, 3, 4, 16, 1)
    k_out, v_out = cache.update(k2, v2, 0)
    assert k_out.shape == (2, 3, 9, 16)
    assert torch.equal(k_out[:, :, 5:], k2)
    for b in range(2):  # earlier tokens are exactly the codec's reconstruction (per batch item)
        ref = codec.roundtrip(k1[b].transpose(0, 1).bfloat16().float(), "k", 0, torch.arange(5))
        assert torch.allclose(k_out[b, :, :5], ref.transpose(0, 1), atol=0)
    assert cache.get_seq_length() == 9


def test_recent_window_and_token_groups():
    codec = codecs.get("kivi2", head_dim=16)  # recent 128, token groups of 32
    cache = OscarCache(codec)
    for step in range(10):
        cache.update(*_kv(1, 2, 20, 16, step), 0)
    layer = cache.layers[0]
    assert layer.n_seen == 200
    assert layer.n_stored % 32 == 0
    assert 128 <= layer.tail_k.shape[-2] < 128 + 32
    assert layer.n_stored + layer.tail_k.shape[-2] == 200


def test_bf16_prefill_protocol_defers_encoding_until_decode():
    codec = codecs.get("int2", head_dim=16)
    cache = OscarCache(codec, prefill="bf16")
    k1, v1 = _kv(1, 2, 8, 16, 0)
    cache.update(k1, v1, 0)
    k_out, _ = cache.update(*_kv(1, 2, 8, 16, 1), 0)
    assert torch.equal(k_out[:, :, :8], k1.bfloat16().float())  # earlier prompt chunk still bf16
    k_out, _ = cache.update(*_kv(1, 2, 1, 16, 2), 0)  # first decode step: prompt gets encoded
    assert cache.layers[0].n_stored == 17
    assert not torch.equal(k_out[:, :, :8], k1.bfloat16().float())


def test_stored_bytes_reflect_the_codec():
    sizes = {}
    for name in ("bf16", "int4", "int2"):
        cache = OscarCache(codecs.get(name, head_dim=64))
        cache.update(*_kv(1, 2, 256, 64, 0), 0)
        sizes[name] = cache.stored_bytes()
    assert sizes["bf16"] == 2 * 2 * 256 * 64 * 2
    # the reference int codecs keep one code per byte plus fp16 scale and zero per token and head
    assert sizes["int4"] == sizes["int2"] == 2 * 2 * 256 * (64 + 4)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="prefill"):
        OscarCache(codecs.get("bf16"), prefill="fp32")
    with pytest.raises(ConfigError, match="not fitted"):
        OscarCache(codecs.get("oscar"))


@pytest.mark.model
def test_bf16_codec_reproduces_plain_generate(smollm2_bf16):
    model, tok = smollm2_bf16
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,"]
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids
        ref = model.generate(ids, max_new_tokens=16, do_sample=False)
        got = model.generate(ids, max_new_tokens=16, do_sample=False, past_key_values=OscarCache(codecs.get("bf16")))
        assert torch.equal(ref, got), p


@pytest.mark.model
def test_chunked_prefill_generation_matches_single_chunk_for_bf16(smollm2_bf16):
    from transformers import DynamicCache

    from oscar_cluster.generation import greedy_generate

    model, tok = smollm2_bf16
    ids = tok("Paris is the capital of France. Berlin is the capital of", return_tensors="pt").input_ids[0]
    a = greedy_generate(model, ids, OscarCache(codecs.get("bf16")), 10, prefill_chunk=4)
    b = greedy_generate(model, ids, DynamicCache(config=model.config), 10)
    assert torch.equal(a, b)
