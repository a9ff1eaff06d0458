"""Memory figures against hand computation and the bugs other calculators have had.

Sources: KV per token = 2 x L x kv_heads x head_dim x bytes (GQA), L x (kv_lora_rank + rope) x bytes
(MLA), sliding layers capped at the window: ../shared/reference/serving.md "Planner facts" and
DESIGN.md section 8; preset shapes are the models' published config.json values.
"""

import pytest

from oscar_cluster.planner import find_model
from oscar_cluster.planner import memory
from oscar_cluster.planner.memory import kv_bytes_per_token, overhead, weight_bytes
from oscar_cluster.planner.specs import GIB, KVFormat, WeightFormat

# (preset, bf16 KV bytes per token for a context inside every window), computed by hand
BF16_KV_PER_TOKEN = [
    ("Llama-3.1-8B", 2 * 32 * 8 * 128 * 2),  # 131072
    ("Llama-3.1-70B", 2 * 80 * 8 * 128 * 2),  # 327680
    ("Llama-3.1-405B", 2 * 126 * 8 * 128 * 2),  # 516096
    ("Qwen2.5-7B", 2 * 28 * 4 * 128 * 2),  # 57344
    ("Qwen2.5-72B", 2 * 80 * 8 * 128 * 2),  # 327680
    ("Qwen3-32B", 2 * 64 * 8 * 128 * 2),  # 262144
    ("Mistral-7B-v0.1", 2 * 32 * 8 * 128 * 2),  # 131072 (below the 4096 window)
    ("Mixtral-8x7B", 2 * 32 * 8 * 128 * 2),  # 131072
    ("DeepSeek-V3", 61 * (512 + 64) * 2),  # 70272: MLA, no x2
    ("gpt-oss-120b", 2 * 36 * 8 * 64 * 2),  # 73728 (below the 128 window)
]
# (preset, total params, active params) from the model cards
PARAMS = [("Llama-3.1-70B", 70.6e9, 70.6e9), ("Mixtral-8x7B", 46.7e9, 12.9e9), ("DeepSeek-V3", 671e9, 37e9),
          ("gpt-oss-120b", 116.83e9, 5.13e9)]


@pytest.mark.parametrize("name,expected", BF16_KV_PER_TOKEN)
def test_bf16_kv_bytes_per_token_by_hand(name, expected):
    kv = kv_bytes_per_token(find_model(name), KVFormat.BF16, 100)
    assert kv.bytes_per_token == expected
    assert kv.bytes_per_sequence == expected * 100


@pytest.mark.parametrize("name,expected", BF16_KV_PER_TOKEN)
def test_fp8_and_int4_scale_from_bf16(name, expected):
    m = find_model(name)
    d = m.kv_lora_rank + m.qk_rope_head_dim if m.is_mla else m.head_dim
    assert kv_bytes_per_token(m, KVFormat.FP8, 100).bytes_per_token == expected / 2
    assert kv_bytes_per_token(m, KVFormat.INT4, 100).bytes_per_token == pytest.approx(expected * (4 + 32 / d) / 16)


def test_llama8b_bf16_is_131072_bytes_per_token():
    assert kv_bytes_per_token(find_model("8b"), "bf16", 131072).bytes_per_token == 131072


def test_kv_uses_kv_heads_not_query_heads():
    # bug: sizing the cache with 64 query heads gives 8x too much for Llama-3.1-70B
    kv = kv_bytes_per_token(find_model("70b"), KVFormat.BF16, 1024)
    assert kv.bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert kv.bytes_per_token != 2 * 80 * 64 * 128 * 2


def test_mla_is_latent_not_per_head():
    # bug: treating DeepSeek-V3 as 128 KV heads x 128 dims x 2 gives 57x too much
    kv = kv_bytes_per_token(find_model("deepseek-v3"), KVFormat.BF16, 4096)
    assert kv.elements_per_token_layer == 576
    assert kv.bytes_per_token == 61 * 576 * 2
    assert kv.bytes_per_token < 2 * 61 * 128 * 128 * 2 / 50


def test_sliding_window_caps_mistral_at_4096_tokens():
    m = find_model("mistral-7b")
    kv = kv_bytes_per_token(m, KVFormat.BF16, 32768)
    assert kv.bytes_per_sequence == 32 * 4096 * 2 * 8 * 128 * 2
    assert kv.bytes_per_token == 131072 * 4096 / 32768  # averaged over the context


def test_gpt_oss_alternating_layers_by_hand():
    kv = kv_bytes_per_token(find_model("gpt-oss-120b"), KVFormat.BF16, 131072)
    per_layer_token = 2 * 8 * 64 * 2
    assert kv.bytes_per_sequence == 18 * 131072 * per_layer_token + 18 * 128 * per_layer_token
    assert kv.bytes_per_token == 36900


def test_published_llama70b_128k_x32_figures():
    # reference/serving.md: BF16 KV is 1280 GiB (+131 GiB weights); INT2 at ~2.25 bpe is ~180 GiB
    m = find_model("70b")
    assert kv_bytes_per_token(m, "bf16", 131072).bytes_per_sequence * 32 / GIB == 1280
    assert weight_bytes(m, WeightFormat.BF16).bytes / GIB == pytest.approx(131.5, abs=0.1)
    assert kv_bytes_per_token(m, "oscar-int2", 131072, oscar_bits=2.25).bytes_per_sequence * 32 / GIB == 180


def test_oscar_bits_come_from_the_codec():
    from oscar_cluster.codecs import get

    for ctx in (64, 4096, 131072):
        kv = kv_bytes_per_token(find_model("70b"), KVFormat.OSCAR_INT2, ctx)
        assert kv.bits_full == get("oscar", head_dim=128).bits_per_element(ctx)
        assert "codec" in kv.bits_source
    # 2 + 16/128 plus 4 bf16 sinks over 128K tokens: 170 GiB for the seed example
    kv = kv_bytes_per_token(find_model("70b"), KVFormat.OSCAR_INT2, 131072)
    assert kv.bits_full == pytest.approx(2.125 + 4 * (16 - 2.125) / 131072)
    assert kv.bytes_per_sequence * 32 / GIB == pytest.approx(170.0, abs=0.1)


def test_oscar_bits_equal_the_codecs_own_figure():
    from oscar_cluster import codecs

    for d, ctx in ((64, 4096), (128, 131072), (256, 32768)):
        bits, _ = memory.element_bits(KVFormat.OSCAR_INT2, d, ctx)
        assert bits == pytest.approx(codecs.get("oscar", head_dim=d).bits_per_element(ctx))


def test_oscar_default_when_codec_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "oscar_cluster.bits", None)  # import fails as if not installed
    kv = kv_bytes_per_token(find_model("70b"), KVFormat.OSCAR_INT2, 131072)
    assert kv.bits_full == memory.OSCAR_DEFAULT_BITS == 2.25
    assert "default" in kv.bits_source
    assert kv.bytes_per_sequence * 32 / GIB == 180


@pytest.mark.parametrize("name,total,active", PARAMS)
def test_moe_memory_uses_total_parameters(name, total, active):
    # bug: sizing Mixtral's memory by its 12.9B active parameters
    m = find_model(name)
    assert m.params_total == pytest.approx(total)
    assert m.active == pytest.approx(active)
    assert weight_bytes(m, WeightFormat.BF16).bytes == pytest.approx(total * 2)


def test_weight_formats():
    m = find_model("8b")
    assert weight_bytes(m, "bf16").bytes == pytest.approx(8.03e9 * 2)
    assert weight_bytes(m, "fp8").bytes == pytest.approx(8.03e9)
    assert weight_bytes(m, "int4").bytes == pytest.approx(8.03e9 * 4.25 / 8)


def test_activation_and_workspace_overhead_present():
    # bug: no activation overhead. 70B: 8192 tokens x 8192 hidden x 2 B x 16 = 2 GiB, plus 3 GiB workspace
    ov = overhead(find_model("70b"), gpus_per_replica=8)
    assert ov.activation_bytes == 2 * GIB
    assert ov.workspace_bytes == 3 * GIB
    assert overhead(find_model("70b"), 1).workspace_bytes == 2 * GIB  # no NCCL buffers on one GPU
    assert 2 * GIB <= ov.workspace_bytes <= 6 * GIB  # reference/serving.md: 2-6 GiB in practice
