"""The `oscar_int2` KV cache dtype, where vLLM can register one (0.33+).

vLLM 0.28-0.32 validate `--kv-cache-dtype` against a closed list: there the backend keeps
`--kv-cache-dtype auto` and `customize_spec` alone turns the page into uint8 slots. vLLM 0.33 adds
`vllm.config.kv_cache_dtype.register_kv_cache_dtype(name)`, a decorator for a handler class
(`name`, `torch_dtype()`, `is_quantized()`, `quant_mode()`, `supports_platform()`); with it
`--kv-cache-dtype oscar_int2` names the format explicitly. The quant mode is the one vLLM reserves
for backend-managed formats (`BACKEND`, else `CUSTOM`), so no generic kernel touches the pages.
"""

from __future__ import annotations

import importlib
import logging

import torch

__all__ = ["KV_DTYPE", "register_kv_dtype"]

KV_DTYPE = "oscar_int2"
log = logging.getLogger("vllm.oscar")  # under vLLM's logger, so vLLM's handlers print it


def _handler_class(quant_mode):
    class OscarInt2KVCacheDType:
        """Packed OSCAR slots: uint8 storage, laid out and read by the OSCAR backend only."""

        name = KV_DTYPE

        def torch_dtype(self) -> torch.dtype:
            return torch.uint8

        def is_quantized(self) -> bool:
            return True

        def quant_mode(self):
            return quant_mode

        def supports_platform(self, platform) -> bool:
            return True

    return OscarInt2KVCacheDType


def register_kv_dtype() -> bool:
    """Register `oscar_int2` if this vLLM has the registry; returns whether it did."""
    try:
        registry = importlib.import_module("vllm.config.kv_cache_dtype")
    except ImportError:
        log.debug("vLLM has no register_kv_cache_dtype: use --kv-cache-dtype auto with the OSCAR backend")
        return False
    register = getattr(registry, "register_kv_cache_dtype", None)
    if register is None:
        return False
    from vllm.v1.kv_cache_interface import KVQuantMode

    mode = getattr(KVQuantMode, "BACKEND", None) or getattr(KVQuantMode, "CUSTOM", None)
    if mode is None:
        log.warning("vLLM has register_kv_cache_dtype but no backend-managed KVQuantMode; %s not registered",
                    KV_DTYPE)
        return False
    register(KV_DTYPE)(_handler_class(mode))
    return True
