"""Presets and the GPU catalog: published figures pinned, sources and dates present, strict YAML.

GPU figures and price ranges: ../shared/reference/serving.md "Planner facts" (memory, HBM TB/s,
dense bf16 TFLOP/s, on-demand $/GPU-h ranges seen in 2026 sources).
"""

import json

import pytest
import yaml

from oscar_cluster.errors import ConfigError
from oscar_cluster.planner import find_gpu, find_model, load_gpus, load_models
from oscar_cluster.planner.presets import PRESET_DIR

# (alias, HBM TB/s, bf16 TFLOP/s, interconnect, $/GPU-h range from serving.md)
GPUS = [("h100", 3.35, 989, "nvlink", (2, 5)), ("h200", 4.8, 989, "nvlink", (2.5, 7)),
        ("a100", 2.0, 312, "nvlink", (0.8, 3)), ("l40s", 0.864, 362, "pcie", (0.9, 2.3)),
        ("b200", 8.0, 2250, "nvlink", (4.5, 6))]
# (alias, layers, q heads, kv heads, head_dim, hidden, params B, max ctx) from serving.md
MODELS = [("8b", 32, 32, 8, 128, 4096, 8.03, 131072), ("70b", 80, 64, 8, 128, 8192, 70.6, 131072),
          ("405b", 126, 128, 8, 128, 16384, 405, 131072), ("qwen2.5-7b", 28, 28, 4, 128, 3584, 7.6, 32768),
          ("72b", 80, 64, 8, 128, 8192, 72.7, 32768), ("qwen3-32b", 64, 64, 8, 128, 5120, 32.8, 40960),
          ("mistral-7b", 32, 32, 8, 128, 4096, 7.24, 32768), ("mixtral", 32, 32, 8, 128, 4096, 46.7, 32768),
          ("gpt-oss-120b", 36, 64, 8, 64, 2880, 117, 131072)]


@pytest.mark.parametrize("alias,tbs,tflops,link,price_range", GPUS)
def test_gpu_catalog_figures(alias, tbs, tflops, link, price_range):
    g = find_gpu(alias)
    assert (g.hbm_tb_per_s, g.bf16_tflops, g.interconnect, g.gpus_per_node) == (tbs, tflops, link, 8)
    lo, hi = price_range
    assert g.usd_per_gpu_hour == pytest.approx((lo + hi) / 2)  # midpoint, as the catalog says
    assert g.price_source and g.price_date and g.spec_source


@pytest.mark.parametrize("alias,layers,q,kv,d,hidden,params_b,ctx", MODELS)
def test_model_presets(alias, layers, q, kv, d, hidden, params_b, ctx):
    m = find_model(alias)
    assert (m.layers, m.q_heads, m.kv_heads, m.head_dim, m.hidden_size, m.max_context) == (layers, q, kv, d, hidden, ctx)
    assert m.params_total / 1e9 == pytest.approx(params_b, rel=0.01)


def test_special_presets():
    ds, oss, mis, mix = (find_model(n) for n in ("deepseek-v3", "gpt-oss-120b", "mistral-7b", "mixtral"))
    assert (ds.layers, ds.kv_lora_rank, ds.qk_rope_head_dim, ds.q_heads) == (61, 512, 64, 128)
    assert (ds.params_total, ds.active) == (671e9, 37e9)
    assert (oss.sliding_window, oss.sliding_layers, oss.num_experts, oss.experts_per_token) == (128, 18, 128, 4)
    assert (mis.sliding_window, mis.sliding_layers) == (4096, 32)
    assert (mix.params_total, mix.active) == (46.7e9, 12.9e9)


def test_every_preset_has_source_and_date():
    assert len(load_models()) >= 10
    for m in load_models():
        assert m.source and m.date and m.hf_id and m.aliases


def test_short_aliases():
    assert find_model("8b").name == "Llama-3.1-8B"
    assert find_model("70b").name == "Llama-3.1-70B"
    assert find_model("405b").name == "Llama-3.1-405B"
    assert find_model("meta-llama/Llama-3.1-70B-Instruct").name == "Llama-3.1-70B"
    owner = {}
    for m in load_models():
        for a in {m.name.lower(), *m.aliases}:
            assert owner.setdefault(a, m.name) == m.name, f"{a!r} names {owner[a]} and {m.name}"


def _entry(**over):
    base = yaml.safe_load((PRESET_DIR / "gpus.yaml").read_text())["gpus"][0]
    return {**base, **over}


def _catalog(tmp_path, *entries):
    p = tmp_path / "catalog.yaml"
    p.write_text(yaml.safe_dump({"version": 1, "gpus": list(entries)}))
    return p


def test_catalog_overrides_and_adds(tmp_path):
    p = _catalog(tmp_path, _entry(usd_per_gpu_hour=9.99, price_source="my contract", price_date="2026-12-01"),
                 _entry(name="MI300X", aliases=["mi300x"], memory_gib=192.0, hbm_tb_per_s=5.3,
                        ray_accelerator_type="AMD-Instinct-MI300X-OAM"))
    assert find_gpu("h100", p).usd_per_gpu_hour == 9.99
    assert find_gpu("mi300x", p).memory_gib == 192.0
    assert len(load_gpus(p)) == len(load_gpus()) + 1


def test_catalog_unknown_key_rejected_by_name(tmp_path):
    p = _catalog(tmp_path, _entry(hbm_tbps=3.0))
    with pytest.raises(ConfigError, match="unknown key.*hbm_tbps"):
        load_gpus(p)


def test_catalog_missing_key_named(tmp_path):
    e = _entry()
    del e["usd_per_gpu_hour"]
    with pytest.raises(ConfigError, match="missing key.*usd_per_gpu_hour"):
        load_gpus(_catalog(tmp_path, e))


def test_catalog_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="hbm_tb_per_s"):
        load_gpus(_catalog(tmp_path, _entry(hbm_tb_per_s=-1)))
    with pytest.raises(ConfigError, match="interconnect"):
        load_gpus(_catalog(tmp_path, _entry(interconnect="infiniband")))
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus: [\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_gpus(bad)


def test_catalog_through_cli(cli, tmp_path):
    p = _catalog(tmp_path, _entry(usd_per_gpu_hour=1.0))
    rc, out, _ = cli("--model", "8b", "--ctx", "4k", "--catalog", p, "--format", "json")
    assert rc == 0 and json.loads(out)["gpu"]["usd_per_gpu_hour"] == 1.0
    rc, _, err = cli("--model", "8b", "--ctx", "4k", "--catalog", _catalog(tmp_path, _entry(foo=1)))
    assert rc == 2 and "foo" in err and len(err.strip().splitlines()) == 1


def test_catalog_needs_price_source(tmp_path):
    with pytest.raises(ConfigError, match="price_source must not be empty"):
        load_gpus(_catalog(tmp_path, _entry(price_source="")))


def test_gpu_too_small_for_any_shape(cli, tmp_path):
    tiny = _entry(name="Tiny-4GB", aliases=["tiny"], memory_gib=4.0)
    rc, out, _ = cli("--model", "70b", "--ctx", "8k", "--gpu", "tiny", "--catalog", _catalog(tmp_path, tiny),
                     "--format", "json")
    assert rc == 0
    for o in json.loads(out)["options"]:
        assert o["fits"] is False and o["gpus"] is None and o["cost_per_hour"] is None
        assert o["notes"][0].startswith("no shape holds one sequence on Tiny-4GB")
        assert any(n.startswith("would fit:") and "H100-SXM-80GB" in n for n in o["notes"])
    rc, out, _ = cli("--model", "70b", "--ctx", "8k", "--gpu", "tiny", "--catalog", _catalog(tmp_path, tiny))
    assert rc == 0 and out.count(" NO ") == 4
