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
