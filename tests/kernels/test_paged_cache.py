"""`PagedKVCache` (packed pages + kernels) against `OscarCache` (the PyTorch reference path) on a
small random Llama, through transformers' attention interface. CPU: kernels interpreted."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from oscar_cluster import codecs
from oscar_cluster.cache import OscarCache
from oscar_cluster.calibration import LayerStatistics
from oscar_cluster.capture import rope_inv_freq
from oscar_cluster.errors import ConfigError
from oscar_cluster.kernels.paged_cache import PagedKVCache, paged_attention_enabled, paged_generate


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).eval()
    inv_freq = rope_inv_freq(model)
    g = torch.Generator().manual_seed(1)
    stats = []
    for layer, attn in enumerate(m for m in model.modules() if hasattr(m, "o_proj")):
        q, k, v = torch.randn(160, 4, 32, generator=g), torch.randn(160, 2, 32, generator=g) + 0.5, \
            torch.randn(160, 2, 32, generator=g)
        stats.append(LayerStatistics.from_samples(q, k, v, attn.o_proj.weight.detach(), layer=layer, sinks=4,
                                                  inv_freq=inv_freq))
    return model, codecs.get("oscar").fit(stats)


def _logits_chunked(model, ids, cache, chunk, paged):
    out = []
    for s in range(0, ids.shape[1], chunk):
        part = ids[:, s:s + chunk]
        pos = torch.arange(s, s + part.shape[1])[None].expand(ids.shape[0], -1)
        kw = {"oscar_cache": cache} if paged else {}
        out.append(model(input_ids=part, position_ids=pos, past_key_values=cache, use_cache=True, **kw).logits)
    return torch.cat(out, dim=1)


@torch.inference_mode()
def test_paged_cache_matches_oscar_cache(tiny):
    model, codec = tiny
    ids = torch.randint(0, 96, (1, 41), generator=torch.Generator().manual_seed(2))
    want = _logits_chunked(model, ids, OscarCache(codec, prefill="chunked"), 16, paged=False)
    cache = PagedKVCache(codec, batch_size=1, max_tokens=64, block_size=16)
    with paged_attention_enabled(model):
        got = _logits_chunked(model, ids, cache, 16, paged=True)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)
    assert model.config._attn_implementation != "oscar_paged", "attention implementation restored"
    assert cache.nbytes() == 2 * (4 * 16 * 2 * cache.slot_bytes + 2 * 4 * 2 * 32 * 2)


@torch.inference_mode()
def test_paged_generate_batch_equals_single(tiny):
    model, codec = tiny
    ids = torch.randint(0, 96, (2, 20), generator=torch.Generator().manual_seed(3))
    both = paged_generate(model, ids, PagedKVCache(codec, batch_size=2, max_tokens=32), 6, prefill_chunk=8)
    one = paged_generate(model, ids[1:], PagedKVCache(codec, batch_size=1, max_tokens=32), 6, prefill_chunk=8)
    assert both.shape == (2, 6)
    assert torch.equal(both[1], one[0])


def test_paged_cache_errors(tiny):
    model, codec = tiny
    with pytest.raises(ConfigError, match="fitted 'oscar' codec"):
        PagedKVCache(codecs.get("int2", head_dim=32), batch_size=1, max_tokens=8)
    cache = PagedKVCache(codec, batch_size=1, max_tokens=8)
    ids = torch.zeros(1, 9, dtype=torch.long)
    with pytest.raises(ConfigError, match="holds 8 tokens"), paged_attention_enabled(model):
        model(input_ids=ids, past_key_values=cache, oscar_cache=cache, use_cache=True)
    with pytest.raises(ConfigError, match="oscar_cache=cache"), paged_attention_enabled(model):
        model(input_ids=ids[:, :4], past_key_values=PagedKVCache(codec, batch_size=1, max_tokens=8), use_cache=True)


@torch.inference_mode()
def test_kernel_encoder_under_a_recent_window(tiny):
    """A codec with a bf16 recent window (the cache keeps the last 4 tokens in bf16 and encodes each
    token once it leaves): the Triton write_kv stores what the codec's encode stores (the paged
    attention kernels still refuse such a codec: they keep no window)."""
    from oscar_cluster.kernels import KernelEncoder

    model, base = tiny
    codec = codecs.get("oscar", recent=4)
    codec.load_state_dict(base.state_dict())
    ids = torch.randint(0, 96, (1, 20), generator=torch.Generator().manual_seed(5))
    runs = []
    for encoder in (None, KernelEncoder(codec, "cpu")):
        cache = OscarCache(codec, encoder=encoder)
        logits = [model(input_ids=ids[:, :12], past_key_values=cache, use_cache=True).logits]
        for t in range(12, 20):  # decode steps: a token leaves the window at each
            logits.append(model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
        runs.append((cache, torch.cat(logits, 1)))
    (ref, ref_logits), (got, got_logits) = runs
    for layer in (0, 1):
        torch.testing.assert_close(got.layers[layer].view_k[:, :, :20], ref.layers[layer].view_k[:, :, :20],
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(got.layers[layer].view_v[:, :, :20], ref.layers[layer].view_v[:, :, :20],
                                   atol=1e-4, rtol=0)
    torch.testing.assert_close(got_logits, ref_logits, atol=1e-3, rtol=0)
    # the window is there: against the same codec without one, layer 0 (whose inputs are the same
    # embeddings) stores tokens 0-15 alike and keeps the last 4 unquantized (different)
    plain = OscarCache(base, encoder=KernelEncoder(base, "cpu"))
    model(input_ids=ids, past_key_values=plain, use_cache=True)
    a, b = got.layers[0], plain.layers[0]
    a.settle()
    b.settle()
    torch.testing.assert_close(a.view_k[:, :, :16], b.view_k[:, :, :16], atol=1e-4, rtol=0)
    assert float((a.view_k[:, :, 16:20] - b.view_k[:, :, 16:20]).abs().max()) > 1e-2


@torch.inference_mode()
def test_kernel_encoder_stores_what_the_codec_stores(tiny):
    """OscarCache with the Triton write_kv (KernelEncoder) = OscarCache with the codec's encode:
    same decoded view over a left-padded batch (sinks in bf16, pads at position 0), logits alike."""
    from oscar_cluster.kernels import KernelEncoder

    model, codec = tiny
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[1, :5] = 0
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    caches = []
    for encoder in (None, KernelEncoder(codec, "cpu")):
        cache = OscarCache(codec, encoder=encoder)
        cache.set_left_padding([0, 5])
        logits = [model(input_ids=ids[:, :16], attention_mask=mask[:, :16], position_ids=pos[:, :16],
                        past_key_values=cache, use_cache=True).logits]
        logits.append(model(input_ids=ids[:, 16:], attention_mask=mask, position_ids=pos[:, 16:],
                            past_key_values=cache, use_cache=True).logits)
        caches.append((cache, torch.cat(logits, 1)))
    (ref, ref_logits), (got, got_logits) = caches
    for layer in (0, 1):
        a, b = ref.layers[layer], got.layers[layer]
        a.settle()
        b.settle()
        torch.testing.assert_close(b.view_k[:, :, :24], a.view_k[:, :, :24], atol=1e-4, rtol=0)
        torch.testing.assert_close(b.view_v[:, :, :24], a.view_v[:, :, :24], atol=1e-4, rtol=0)
    torch.testing.assert_close(got_logits, ref_logits, atol=1e-3, rtol=0)
    slot_bytes = KernelEncoder(codec, "cpu").tables(0).slot_bytes
    assert got.stored_bytes() == 2 * (2 * 24 * 2 * slot_bytes + 2 * 2 * 2 * 32 * (4 + 4 + 5))  # slots + bf16 sinks
    with pytest.raises(ConfigError, match="'oscar' codec"):
        KernelEncoder(codecs.get("int2", head_dim=32), "cpu")
    with pytest.raises(ConfigError, match="another codec object"):
        OscarCache(codecs.get("int2", head_dim=32), encoder=KernelEncoder(codec, "cpu"))
