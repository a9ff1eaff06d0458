"""What an artifact's oscar.yaml says, and whether it fits the model vLLM serves.

Reading oscar.yaml is cheap (no tensors), so the backend's class-level hooks (`customize_spec`,
called once per layer) and every impl constructor can check it; the transforms themselves are
loaded once per worker by the metadata builder.

`check_model` is the start-up gate: another model or head layout (the fingerprint names every
differing field), another codec, a head size the kernels do not take, and layers the backend does
not cover (sliding-window or MLA attention, named by index) all stop vLLM before it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import check_fingerprint, read_metadata
from ..bits import OSCAR_SCALE_BITS, true_bits_per_element
from ..errors import ArtifactError, ConfigError, FingerprintMismatchError
from ..kernels.layout import SCALE_BYTES

__all__ = ["ArtifactInfo", "read_artifact_info", "check_model", "uncovered_layers", "KERNEL_HEAD_DIMS"]

KERNEL_HEAD_DIMS = (16, 32, 64, 128, 256)  # kernels/layout.py: powers of two, 16..256


@dataclass(frozen=True)
class ArtifactInfo:
    """oscar.yaml in brief. slot_bytes: bytes of one (token, KV head) slot of the packed page,
    the same for every layer (the widest layer's K+V codes plus 4 bytes of fp16 scales)."""

    path: Path
    codec: str
    fingerprint: dict
    sinks: int
    recent: int
    head_dim: int
    num_layers: int
    slot_bytes: int
    quantized_bits: float  # codec bits per element of a quantized token (codes + fp16 scales, layer mean)

    def bits_per_element(self, context_len: int) -> float:
        """The codec's true cost at `context_len` (the sinks in bf16 included), as Codec.bits_per_element."""
        return true_bits_per_element(self.quantized_bits, context_len, self.sinks + self.recent)


def read_artifact_info(path: str | Path) -> ArtifactInfo:
    meta = read_metadata(path)
    fp, opts = meta["model"], meta["options"]
    layouts = meta.get("layouts")
    if meta["codec"] != "oscar" or not isinstance(layouts, dict) or not layouts:
        raise ArtifactError(f"{path}: the vLLM backend stores the 'oscar' codec's packed slots; this artifact holds "
                            f"codec {meta['codec']!r}{'' if layouts else ' without bit layouts'}. "
                            "Calibrate with oscar-calibrate --codec oscar")
    try:
        per_layer = [sum(int(w) * int(b) for kind in ("k", "v") for w, b in lay[kind]) for lay in layouts.values()]
        head_dim, sinks, recent = int(fp["head_dim"]), int(opts.get("sinks", 0)), int(opts.get("recent", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: oscar.yaml layouts or fingerprint are malformed ({e!r}); "
                            "re-run oscar-calibrate") from None
    widest = max(per_layer)
    if any(bits % 8 for bits in per_layer):
        raise ArtifactError(f"{path}: a layer's K+V layout is not whole bytes; re-run oscar-calibrate")
    quantized = sum(per_layer) / len(per_layer) / (2 * head_dim) + OSCAR_SCALE_BITS / head_dim
    return ArtifactInfo(path=Path(path), codec=str(meta["codec"]), fingerprint=dict(fp), sinks=sinks, recent=recent,
                        head_dim=head_dim, num_layers=len(layouts), slot_bytes=widest // 8 + SCALE_BYTES,
                        quantized_bits=quantized)


def _text_config(hf_config: Any) -> Any:
    return hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config


def _ranges(idx: list[int]) -> str:
    """[0, 1, 2, 4, 6, 7] -> '0-2, 4, 6-7'."""
    out, start = [], None
    for i, x in enumerate(idx):
        if start is None:
            start = x
        if i + 1 == len(idx) or idx[i + 1] != x + 1:
            out.append(f"{start}" if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)


def uncovered_layers(hf_config: Any) -> list[str]:
    """Reasons, naming layer indices, why the backend cannot serve some layers of this model."""
    cfg = _text_config(hf_config)
    n = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    out = []
    if getattr(cfg, "kv_lora_rank", None):
        out.append(f"layers {_ranges(list(range(n)))} use MLA (kv_lora_rank={cfg.kv_lora_rank})")
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if types:
        by_type: dict[str, list[int]] = {}
        for i, t in enumerate(types):
            if t != "full_attention":
                by_type.setdefault(str(t), []).append(i)
        for t, idx in by_type.items():
            w = f", window {window}" if window and "sliding" in t else ""
            out.append(f"layers {_ranges(idx)} use {t}{w}")
    elif window and getattr(cfg, "use_sliding_window", True):
        out.append(f"layers {_ranges(list(range(n)))} use sliding-window attention (window {window})")
    return out


def check_model(info: ArtifactInfo, hf_config: Any) -> None:
    """Raise naming the problem if `info`'s artifact cannot serve the model of `hf_config`."""
    from ..models import fingerprint

    try:
        check_fingerprint(info.fingerprint, fingerprint(hf_config), where="artifact")
    except FingerprintMismatchError as e:
        raise FingerprintMismatchError(f"OSCAR artifact {info.path}: {e}") from None
    if info.recent:
        raise ConfigError(f"OSCAR artifact {info.path} keeps a bf16 recent window (recent={info.recent}); the packed "
                          "pages have none: calibrate with recent 0")
    if info.head_dim not in KERNEL_HEAD_DIMS:
        raise ConfigError(f"head size {info.head_dim} is not supported by the OSCAR kernels "
                          f"(supported: {list(KERNEL_HEAD_DIMS)})")
    problems = uncovered_layers(hf_config)
    if problems:
        raise ConfigError("the OSCAR backend covers full causal attention only and has no bf16 fallback per layer: "
                          + "; ".join(problems) + ". Serve this model without OSCAR (leave out --attention-backend "
                          "CUSTOM / set VLLM_PLUGINS=\"\")")
