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
    layer.settle()  # the last call's tokens are settled at the next update; do it now
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
    assert cache.layers[0].n_stored == 16  # the decode token itself waits for the next update
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


@pytest.mark.parametrize("name", ["int2", "kivi2"])  # one token at a time; token groups of 32 and a recent window
def test_left_padded_batch_stores_every_item_as_alone(name):
    """Item b of a left-padded batch ends up with the same decoded view as when it runs alone,
    over chunks of several sizes and decode steps (KIVI's groups start at the item's first token)."""
    codec = codecs.get(name, head_dim=16)
    lens, calls = [230, 197, 260], [64, 100, 96, 1, 1, 1]
    T = max(lens)
    total = T - max(lens) + sum(calls)
    g = torch.Generator().manual_seed(3)
    items = [(torch.randn(1, 2, n - T + total, 16, generator=g), torch.randn(1, 2, n - T + total, 16, generator=g))
             for n in lens]
    pads = [T - n for n in lens]
    batch = OscarCache(codec)
    batch.set_left_padding(pads)
    alone = [OscarCache(codec) for _ in lens]
    at = 0
    for c in calls:
        kb = torch.zeros(3, 2, c, 16)
        vb = torch.zeros(3, 2, c, 16)
        for b, (k, v) in enumerate(items):
            lo = at - pads[b]  # this call's tokens of item b (pads: zeros)
            sl = slice(max(lo, 0), lo + c)
            if lo + c > 0:
                kb[b, :, max(0, -lo):] = k[:, :, sl][0]
                vb[b, :, max(0, -lo):] = v[:, :, sl][0]
                alone[b].update(k[:, :, sl], v[:, :, sl], 0)
        batch.update(kb, vb, 0)
        at += c
    batch.layers[0].settle()
    for b in range(3):
        alone[b].layers[0].settle()
        mine = alone[b].layers[0]
        got = batch.layers[0].view_k[b, :, pads[b]:batch.layers[0].n_seen]
        assert torch.equal(got, mine.view_k[0, :, :mine.n_seen]), b
        got_v = batch.layers[0].view_v[b, :, pads[b]:batch.layers[0].n_seen]
        assert torch.equal(got_v, mine.view_v[0, :, :mine.n_seen]), b


def test_left_padding_errors():
    cache = OscarCache(codecs.get("int2", head_dim=16))
    with pytest.raises(ConfigError, match=">= 0"):
        cache.set_left_padding([1, -2])
    cache.set_left_padding([0, 3])
    with pytest.raises(ConfigError, match="left padding for 2 sequences"):
        cache.update(*_kv(3, 2, 4, 16, 0), 0)
    cache = OscarCache(codecs.get("int2", head_dim=16))
    cache.update(*_kv(1, 2, 4, 16, 0), 0)
    with pytest.raises(ConfigError, match="before the cache's first update"):
        cache.set_left_padding([0])


@pytest.mark.model
@pytest.mark.parametrize("name", ["bf16", "kivi2"])
def test_batched_generation_matches_each_prompt_alone(smollm2, name):
    """greedy_generate_batch = greedy_generate(chunk_align="end") per prompt (float32, CPU), with
    prompts of three lengths, chunked prefill and KIVI flushing during the prompt; stop reasons."""
    from oscar_cluster.generation import greedy_generate, greedy_generate_batch

    model, tok = smollm2
    text = ("Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy. " * 12)
    prompts = [torch.tensor(tok(text[:n] + " The capital of Spain is")["input_ids"]) for n in (1000, 760, 1150)]
    assert len({p.numel() for p in prompts}) == 3 and min(p.numel() for p in prompts) > 160
    codec = codecs.get(name, head_dim=64)
    alone = [greedy_generate(model, p, OscarCache(codec), 6, prefill_chunk=64, chunk_align="end").tolist()
             for p in prompts]
    got, why = greedy_generate_batch(model, prompts, OscarCache(codec), 6, prefill_chunk=64)
    assert got == alone and why == ["budget"] * 3
    first = alone[1][0]
    got, why = greedy_generate_batch(model, prompts, OscarCache(codec), 6, prefill_chunk=64,
                                     stop=lambda b, ids: b == 1 and ids[-1] == first)
    assert got[1] == [first] and why[1] == "stop" and got[0] == alone[0] and why[0] == "budget"


def test_a_dropped_cache_frees_its_buffers_at_once():
    """No reference cycle between the cache and its layers: the buffers go with the last reference,
    not at the next run of Python's cycle collector (at long context a batch's cache is GBs)."""
    import gc
    import weakref

    gc.disable()
    try:
        cache = OscarCache(codecs.get("int2", head_dim=16))
        cache.update(*_kv(2, 2, 40, 16, 0), 0)
        cache.update(*_kv(2, 2, 1, 16, 1), 0)
        view = weakref.ref(cache.layers[0].view_k)
        del cache
        assert view() is None
    finally:
        gc.enable()
