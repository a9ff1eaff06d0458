"""artifact_info: what the backend reads from oscar.yaml, and the start-up checks against the model
(another model or head layout, another codec, head sizes, sliding-window and MLA layers)."""

import pytest
from transformers import DeepseekV3Config, Gemma3TextConfig, LlamaConfig, MistralConfig
from vllm_support import fitted_codec

from oscar_cluster import codecs
from oscar_cluster.artifact import save_artifact
from oscar_cluster.errors import ArtifactError, ConfigError, FingerprintMismatchError
from oscar_cluster.kernels.layout import slot_bytes_for
from oscar_cluster.models import fingerprint
from oscar_cluster.vllm_plugin.artifact_info import check_model, read_artifact_info, uncovered_layers

CFG = LlamaConfig(hidden_size=384, num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=2,
                  max_position_embeddings=4096)  # head dim 64
CALIBRATION = {"data_sha256": "0" * 64, "tokens": 192}


@pytest.fixture(scope="module")
def codec():
    return fitted_codec(64, 2, 6, layers=2, seed=9)


@pytest.fixture(scope="module")
def artifact(codec, tmp_path_factory):
    return save_artifact(tmp_path_factory.mktemp("a") / "art", codec, fingerprint(CFG), CALIBRATION)


def test_info_agrees_with_the_codec(codec, artifact):
    info = read_artifact_info(artifact)
    assert (info.codec, info.sinks, info.recent, info.head_dim, info.num_layers) == ("oscar", 4, 0, 64, 2)
    assert info.slot_bytes == slot_bytes_for(codec) == 2 * 2 * 64 // 8 + 4
    for L in (64, 2048, 32768):
        assert info.bits_per_element(L) == pytest.approx(codec.bits_per_element(L))


def test_the_model_it_was_calibrated_for_passes(artifact):
    check_model(read_artifact_info(artifact), CFG)


def test_another_head_layout_is_named(artifact):
    other = LlamaConfig(**{**CFG.to_dict(), "num_key_value_heads": 3})
    with pytest.raises(FingerprintMismatchError,
                       match="calibrated for another model; differing fields: num_kv_heads: artifact 2 vs model 3"):
        check_model(read_artifact_info(artifact), other)


def test_another_codec_is_refused(tmp_path):
    art = save_artifact(tmp_path / "int2", codecs.get("int2", head_dim=64), fingerprint(CFG), CALIBRATION)
    with pytest.raises(ArtifactError, match="holds codec 'int2'"):
        read_artifact_info(art)


def test_recent_window_and_head_size(tmp_path):
    codec = fitted_codec(64, 2, 6, layers=2, seed=9)
    codec.recent = 16
    art = save_artifact(tmp_path / "recent", codec, fingerprint(CFG), CALIBRATION)
    with pytest.raises(ConfigError, match="recent=16.*calibrate with recent 0"):
        check_model(read_artifact_info(art), CFG)
    cfg80 = LlamaConfig(hidden_size=480, num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=1)
    art80 = save_artifact(tmp_path / "d80", fitted_codec(80, 2, 6, seed=1), fingerprint(cfg80), CALIBRATION)
    with pytest.raises(ConfigError, match="head size 80 is not supported"):
        check_model(read_artifact_info(art80), cfg80)


def test_uncovered_layers_are_named():
    gemma = Gemma3TextConfig(num_hidden_layers=18, sliding_window=512)
    assert uncovered_layers(gemma) == ["layers 0-4, 6-10, 12-16 use sliding_attention, window 512"]
    assert uncovered_layers(MistralConfig(num_hidden_layers=4, sliding_window=4096)) == [
        "layers 0-3 use sliding-window attention (window 4096)"]
    assert uncovered_layers(DeepseekV3Config(num_hidden_layers=3)) == ["layers 0-2 use MLA (kv_lora_rank=512)"]
    assert uncovered_layers(CFG) == []


def test_uncovered_layers_stop_start_up(tmp_path):
    gemma = Gemma3TextConfig(num_hidden_layers=2, hidden_size=384, head_dim=64, num_attention_heads=6,
                             num_key_value_heads=2, sliding_window=512, max_position_embeddings=4096,
                             layer_types=["sliding_attention", "full_attention"])
    art = save_artifact(tmp_path / "g", fitted_codec(64, 2, 6, layers=2, seed=2), fingerprint(gemma), CALIBRATION)
    with pytest.raises(ConfigError, match="layers 0 use sliding_attention, window 512.*without OSCAR"):
        check_model(read_artifact_info(art), gemma)
