"""OSCAR inside vLLM: the attention backend on packed 2-bit KV pages (DESIGN.md section 7).

Entry points (pyproject.toml), loaded by vLLM itself:

- `vllm.general_plugins`: `oscar = oscar_cluster.vllm_plugin:register`. Runs in every vLLM
  process (API server, engine core, workers), so it is idempotent. It registers the backend in
  the static `CUSTOM` slot (select it with `--attention-backend CUSTOM`); on the CPU platform,
  whose selector ignores `--attention-backend`, it also overrides `CPU_ATTN`. Where vLLM has
  `register_kv_cache_dtype` (0.33+) it registers the `oscar_int2` KV dtype.
- `vllm.stat_logger_plugins`: `oscar = oscar_cluster.vllm_plugin.metrics:OscarStatLogger`, the
  `oscar:` Prometheus gauges (bits per element, KV bytes per token, capacity vs bf16).

The artifact comes from `OSCAR_ARTIFACT` or `--additional-config '{"oscar": {"artifact": DIR}}'`
(`settings.py`); without one the backend stops vLLM at start-up with a message saying so.

Modules: `settings` (where the artifact comes from), `artifact_info` (what oscar.yaml says, and
the checks against the served model), `tp` (per-rank slices), `sinks` (rows of the bf16 sink
pool), `capacity` (the figures), `backend` / `impl` (vLLM classes), `metrics`, `kv_dtype`, `check`
(a runner for plain vLLM vs OSCAR). Only `backend`, `impl`, `metrics`, `kv_dtype` and `check`
import vLLM.
"""

from __future__ import annotations

import logging

__all__ = ["register", "BACKEND_PATH", "CPU_BACKEND_PATH"]

BACKEND_PATH = "oscar_cluster.vllm_plugin.backend.OscarAttentionBackend"
CPU_BACKEND_PATH = "oscar_cluster.vllm_plugin.backend.OscarCPUAttentionBackend"

log = logging.getLogger("vllm.oscar")  # under vLLM's logger, so vLLM's handlers print it
_registered = False  # the one piece of process state: registration runs once per process


def register() -> None:
    """The `vllm.general_plugins` entry point. Safe to call any number of times."""
    global _registered
    if _registered:
        return
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    from .kv_dtype import register_kv_dtype

    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)
    if current_platform.is_cpu():
        # vLLM's CPU platform always returns CPU_ATTN's path; the override puts OSCAR there.
        register_backend(AttentionBackendEnum.CPU_ATTN, CPU_BACKEND_PATH)
    register_kv_dtype()
    _registered = True
    log.info("OSCAR attention backend registered (CUSTOM%s)", ", CPU_ATTN" if current_platform.is_cpu() else "")
