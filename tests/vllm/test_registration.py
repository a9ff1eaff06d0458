"""The plugin's entry points as vLLM loads them, and the backend's spec (page size from the artifact)."""

import types
from importlib.metadata import entry_points

import pytest
import torch
from transformers import LlamaConfig
from vllm_support import fitted_codec, needs_vllm

needs_vllm()

import vllm.v1.kv_cache_interface as kv_interface  # noqa: E402
from vllm.platforms import current_platform  # noqa: E402
from vllm.v1.attention.backends.registry import AttentionBackendEnum  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheLayout, SlidingWindowSpec  # noqa: E402

import oscar_cluster.vllm_plugin as plugin  # noqa: E402
from oscar_cluster.artifact import save_artifact  # noqa: E402
from oscar_cluster.errors import ConfigError  # noqa: E402
from oscar_cluster.models import fingerprint  # noqa: E402
from oscar_cluster.vllm_plugin import kv_dtype, settings  # noqa: E402
from oscar_cluster.vllm_plugin.backend import OscarAttentionBackend, OscarCPUAttentionBackend  # noqa: E402
from oscar_cluster.vllm_plugin.metrics import OscarStatLogger  # noqa: E402


@pytest.fixture()
def fresh_registry(monkeypatch):
    monkeypatch.setattr(plugin, "_registered", False)
    yield
    AttentionBackendEnum.CUSTOM.clear_override()
    AttentionBackendEnum.CPU_ATTN.clear_override()


def test_entry_points_are_installed():
    general = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert general["oscar"] == "oscar_cluster.vllm_plugin:register"
    from vllm.v1.metrics.loggers import load_stat_logger_plugin_factories

    assert OscarStatLogger in load_stat_logger_plugin_factories()


def test_register_is_idempotent_and_fills_the_static_slots(fresh_registry):
    plugin.register()
    plugin.register()
    assert AttentionBackendEnum.CUSTOM.get_class() is OscarAttentionBackend
    assert AttentionBackendEnum.CUSTOM.get_class().get_name() == "CUSTOM"
    assert current_platform.is_cpu()  # the CI build of vLLM
    cpu = AttentionBackendEnum.CPU_ATTN.get_class()
    assert cpu is OscarCPUAttentionBackend and AttentionBackendEnum[cpu.get_name()] is AttentionBackendEnum.CPU_ATTN
    assert "CUSTOM_OSCAR" not in AttentionBackendEnum.__members__  # no dynamic member (spawned children unpickle)


def test_kv_dtype_registers_only_where_vllm_has_the_registry(monkeypatch):
    assert kv_dtype.register_kv_dtype() is False  # vLLM 0.32: no vllm.config.kv_cache_dtype
    seen = {}

    def register_kv_cache_dtype(name):  # the 0.33 decorator's contract
        def deco(cls):
            seen[name] = cls()
            return cls
        return deco

    monkeypatch.setitem(__import__("sys").modules, "vllm.config.kv_cache_dtype",
                        types.SimpleNamespace(register_kv_cache_dtype=register_kv_cache_dtype))
    monkeypatch.setattr(kv_interface, "KVQuantMode", types.SimpleNamespace(CUSTOM=12))
    assert kv_dtype.register_kv_dtype() is True
    h = seen["oscar_int2"]
    assert (h.name, h.torch_dtype(), h.is_quantized(), h.quant_mode()) == ("oscar_int2", torch.uint8, True, 12)


@pytest.fixture()
def artifact_env(tmp_path, monkeypatch):
    cfg = LlamaConfig(hidden_size=384, num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=2)
    art = save_artifact(tmp_path / "art", fitted_codec(64, 2, 6, layers=2, seed=9), fingerprint(cfg), {"tokens": 1})
    monkeypatch.setattr(settings, "_recorded", None)
    monkeypatch.setenv("OSCAR_ARTIFACT", str(art))
    return art


def test_customize_spec_sizes_the_page_from_the_artifact(artifact_env):
    spec = FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=64, dtype=torch.bfloat16)
    got = OscarAttentionBackend.customize_spec(spec)
    assert got.dtype == torch.uint8 and got.state_content_bytes == 36  # 2 x 64 x 2 bits + 4 scale bytes
    assert got.page_size_bytes == 16 * 2 * 36 and spec.page_size_bytes == 16 * 2 * 2 * 64 * 2
    assert OscarAttentionBackend.supported_kv_cache_layouts() == (KVCacheLayout.LBNHC,)
    with pytest.raises(ConfigError, match="head size 64; the layer has 128"):
        OscarAttentionBackend.customize_spec(FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=128,
                                                               dtype=torch.bfloat16))
    with pytest.raises(ConfigError, match="sliding-window layers \\(window 512\\)"):
        OscarAttentionBackend.customize_spec(SlidingWindowSpec(block_size=16, num_kv_heads=2, head_size=64,
                                                               dtype=torch.bfloat16, sliding_window=512))


def test_customize_spec_without_an_artifact(monkeypatch):
    monkeypatch.setattr(settings, "_recorded", None)
    monkeypatch.delenv("OSCAR_ARTIFACT", raising=False)
    with pytest.raises(ConfigError, match="needs an artifact"):
        OscarAttentionBackend.customize_spec(FullAttentionSpec(block_size=16, num_kv_heads=2, head_size=64,
                                                               dtype=torch.bfloat16))


def test_stat_logger_is_inert_unless_the_engine_runs_oscar(monkeypatch):
    """vLLM loads stat-logger plugins for every engine; plain vLLM on a GPU must not need an artifact."""
    monkeypatch.setattr(settings, "_recorded", None)
    monkeypatch.delenv("OSCAR_ARTIFACT", raising=False)
    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)  # as on a GPU

    def config(backend, per_kind=None):
        attn = types.SimpleNamespace(backend=backend, backend_per_kind=per_kind or {})
        return types.SimpleNamespace(attention_config=attn, additional_config={})

    plain = OscarStatLogger(config(None))
    assert not plain.active
    plain.log_engine_initialized()
    plain.record(types.SimpleNamespace(kv_cache_usage=0.5), None)
    with pytest.raises(ConfigError, match="needs an artifact"):
        OscarStatLogger(config(AttentionBackendEnum.CUSTOM))
    with pytest.raises(ConfigError, match="needs an artifact"):
        OscarStatLogger(config(AttentionBackendEnum.FLASH_ATTN, {"sliding_window": AttentionBackendEnum.CUSTOM}))
