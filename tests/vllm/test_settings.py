"""settings: where the backend finds its artifact (OSCAR_ARTIFACT or vLLM's additional config)."""

import pytest

from oscar_cluster.errors import ConfigError
from oscar_cluster.vllm_plugin import settings
from oscar_cluster.vllm_plugin.settings import PluginSettings, resolve_settings


def test_artifact_from_env_or_additional_config(tmp_path):
    assert resolve_settings(None, {"OSCAR_ARTIFACT": str(tmp_path)}).artifact == tmp_path
    got = resolve_settings({"oscar": {"artifact": str(tmp_path), "sink_rows": 64}}, {})
    assert got == PluginSettings(artifact=tmp_path, sink_rows=64)
    # the same directory from both sources is fine
    both = resolve_settings({"oscar": {"artifact": str(tmp_path)}}, {"OSCAR_ARTIFACT": str(tmp_path)})
    assert both.artifact == tmp_path


def test_without_an_artifact_the_message_names_both_ways():
    with pytest.raises(ConfigError, match="OSCAR_ARTIFACT=DIR.*additional-config.*oscar-calibrate"):
        resolve_settings({"other": 1}, {})


@pytest.mark.parametrize("config, message", [
    ({"oscar": "DIR"}, "must be a mapping"),
    ({"oscar": {"artifact": "A", "rows": 3}}, "unknown key\\(s\\) \\['rows'\\]"),
    ({"oscar": {"artifact": 7}}, "must be a directory path"),
    ({"oscar": {"artifact": "A", "sink_rows": 0}}, "sink_rows must be a positive integer"),
    ({"oscar": {"artifact": "A", "sink_rows": True}}, "sink_rows must be a positive integer"),
])
def test_bad_additional_config(config, message):
    with pytest.raises(ConfigError, match=message):
        resolve_settings(config, {})


def test_two_different_artifacts_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="two OSCAR artifacts"):
        resolve_settings({"oscar": {"artifact": str(tmp_path / "a")}}, {"OSCAR_ARTIFACT": str(tmp_path / "b")})


def test_the_process_record_is_written_once(tmp_path, monkeypatch):
    """Class-level hooks without a config read the record; a second artifact needs its own process."""
    class Cfg:
        def __init__(self, path):
            self.additional_config = {"oscar": {"artifact": str(path)}}

    monkeypatch.setattr(settings, "_recorded", None)
    monkeypatch.delenv("OSCAR_ARTIFACT", raising=False)
    with pytest.raises(ConfigError, match="needs an artifact"):
        settings.recorded_settings()
    settings.settings_for(Cfg(tmp_path / "a"))
    assert settings.recorded_settings().artifact == tmp_path / "a"
    settings.settings_for(Cfg(tmp_path / "a"))
    with pytest.raises(ConfigError, match="needs its own process"):
        settings.settings_for(Cfg(tmp_path / "b"))
