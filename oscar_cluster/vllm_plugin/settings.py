"""Where the backend's options come from: `OSCAR_ARTIFACT` or vLLM's additional config.

    vllm serve MODEL --attention-backend CUSTOM --additional-config '{"oscar": {"artifact": "DIR"}}'
    OSCAR_ARTIFACT=DIR vllm serve MODEL --attention-backend CUSTOM

Keys under "oscar": `artifact` (the oscar-calibrate directory) and `sink_rows` (rows of the bf16
attention-sink pool per layer; default twice `max_num_seqs`). Unknown keys are refused by name.
If both sources name an artifact they must agree.

vLLM calls some backend hooks as classmethods with no config in reach (`customize_spec` from the
worker's `get_kv_cache_spec`), so `settings_for(vllm_config)` records the first settings resolved
in a process and `recorded_settings()` returns them there. The record is written once: a second,
different artifact in the same process is refused rather than silently mixed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError

__all__ = ["ENV_ARTIFACT", "CONFIG_KEY", "PluginSettings", "resolve_settings", "settings_for", "recorded_settings"]

ENV_ARTIFACT = "OSCAR_ARTIFACT"
CONFIG_KEY = "oscar"
_KEYS = ("artifact", "sink_rows")
_recorded: "PluginSettings | None" = None  # write-once per process (see the module docstring)


@dataclass(frozen=True)
class PluginSettings:
    artifact: Path
    sink_rows: int | None = None

    def __post_init__(self):
        if self.sink_rows is not None and (isinstance(self.sink_rows, bool) or not isinstance(self.sink_rows, int)
                                           or self.sink_rows < 1):
            raise ConfigError(f"additional_config.oscar.sink_rows must be a positive integer, got {self.sink_rows!r}")


def resolve_settings(additional_config: Any = None, environ: Mapping[str, str] | None = None) -> PluginSettings:
    """The backend's settings from vLLM's `additional_config` (a dict or None) and the environment."""
    environ = os.environ if environ is None else environ
    section = {}
    if isinstance(additional_config, Mapping) and CONFIG_KEY in additional_config:
        section = additional_config[CONFIG_KEY]
        if not isinstance(section, Mapping):
            raise ConfigError(f"additional_config.{CONFIG_KEY} must be a mapping such as "
                              f'{{"artifact": "DIR"}}, got {section!r}')
        unknown = sorted(set(section) - set(_KEYS))
        if unknown:
            raise ConfigError(f"additional_config.{CONFIG_KEY}: unknown key(s) {unknown}; known: {list(_KEYS)}")
    from_config = section.get("artifact")
    from_env = environ.get(ENV_ARTIFACT) or None
    if from_config is not None and (not isinstance(from_config, str) or not from_config):
        raise ConfigError(f"additional_config.{CONFIG_KEY}.artifact must be a directory path, got {from_config!r}")
    if from_config and from_env and Path(from_config).resolve() != Path(from_env).resolve():
        raise ConfigError(f"two OSCAR artifacts given: additional_config.{CONFIG_KEY}.artifact={from_config} and "
                          f"{ENV_ARTIFACT}={from_env}; keep one")
    path = from_config or from_env
    if not path:
        raise ConfigError(
            "the OSCAR attention backend needs an artifact: set OSCAR_ARTIFACT=DIR or pass "
            f'--additional-config \'{{"{CONFIG_KEY}": {{"artifact": "DIR"}}}}\' (create DIR with oscar-calibrate). '
            "To run vLLM without OSCAR, leave the plugin out with VLLM_PLUGINS (e.g. VLLM_PLUGINS=\"\")")
    return PluginSettings(artifact=Path(path), sink_rows=section.get("sink_rows"))


def settings_for(vllm_config: Any) -> PluginSettings:
    """Resolve from a vLLM config (its additional_config and the environment) and record them."""
    global _recorded
    settings = resolve_settings(getattr(vllm_config, "additional_config", None))
    if _recorded is None:
        _recorded = settings
    elif _recorded.artifact.resolve() != settings.artifact.resolve():
        raise ConfigError(f"this process already serves OSCAR artifact {_recorded.artifact}; a second engine with "
                          f"{settings.artifact} needs its own process")
    return settings


def recorded_settings() -> PluginSettings:
    """The settings recorded in this process, else the environment's."""
    return _recorded if _recorded is not None else resolve_settings(None)
