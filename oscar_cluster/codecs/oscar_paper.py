"""`oscar-paper`: the published OSCAR recipe (arXiv 2605.17757), written from its description in
reference/published-results.md, not from its code.

Per KV head: keys are rotated into the eigenbasis of the GQA-grouped query second moment, values
into the eigenbasis of the attention-weighted value covariance; then channels are put in
bit-reversal order and mixed by a normalized Hadamard matrix (R = H P U^T, orthogonal, so queries
use the same R). Each token is quantized per head to uniform INT2 (group = head dim, fp16 scale
and minimum) after percentile clipping: the range is [quantile(x, 1 - p), quantile(x, p)] with
p = 0.96 for keys and 0.92 for values. Sinks (64) and a recent window (256) stay in bf16.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from . import register
from .base import Codec
from .quantizers import minmax_dequantize

__all__ = ["OscarPaperCodec", "hadamard_matrix", "bit_reversal"]


def hadamard_matrix(d: int) -> torch.Tensor:
    """Normalized Sylvester Hadamard matrix [d, d] float64 (d a power of two)."""
    if d < 1 or d & (d - 1):
        raise ConfigError(f"Hadamard transform needs a power-of-two head dim, got {d}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / d ** 0.5


def bit_reversal(d: int) -> torch.Tensor:
    """Permutation [d] long: index i -> i with its log2(d) bits reversed."""
    n = d.bit_length() - 1
    return torch.tensor([int(format(i, f"0{n}b")[::-1], 2) if n else 0 for i in range(d)], dtype=torch.long)


@register("oscar-paper")
class OscarPaperCodec(Codec):
    needs_calibration = True

    def __init__(self, sinks: int = 64, recent: int = 256, head_dim: int | None = None, bits: int = 2,
                 clip_k: float = 0.96, clip_v: float = 0.92):
        super().__init__(sinks=sinks, recent=recent, head_dim=head_dim)
        for name, p in (("clip_k", clip_k), ("clip_v", clip_v)):
            if not 0.5 < p <= 1.0:
                raise ConfigError(f"oscar-paper: {name} must be in (0.5, 1], got {p}")
        self.bits, self.clip = int(bits), {"k": float(clip_k), "v": float(clip_v)}
        self.rotations: dict[int, dict[str, torch.Tensor]] = {}

    def options(self) -> dict:
        return {**super().options(), "bits": self.bits, "clip_k": self.clip["k"], "clip_v": self.clip["v"]}

    def _fit(self, stats) -> None:
        d = self._require_head_dim()
        mix = hadamard_matrix(d) @ torch.eye(d, dtype=torch.float64)[bit_reversal(d)]  # H P
        for st in stats:
            _, Uq = torch.linalg.eigh(st.query_moment)
            _, v_cov = st.value_mean_cov(weighted=True)
            _, Uv = torch.linalg.eigh(0.5 * (v_cov + v_cov.transpose(-1, -2)))
            Uq, Uv = Uq.flip(-1), Uv.flip(-1)  # descending eigenvalues
            self.rotations[st.layer] = {
                "k": (mix @ Uq.transpose(-1, -2)).float(),
                "v": (mix @ Uv.transpose(-1, -2)).float(),
            }

    def to(self, device) -> "OscarPaperCodec":
        self.rotations = {l: {k: r.to(device) for k, r in kr.items()} for l, kr in self.rotations.items()}
        return self

    def rotation(self, layer: int, kind: str) -> torch.Tensor:
        """R: [H, d, d] orthogonal; x' = R x (queries too, since R^-T = R)."""
        if layer not in self.rotations:
            raise ConfigError(f"oscar-paper: no rotation for layer {layer}; fit or load an artifact first")
        return self.rotations[layer][kind]

    def _encode(self, x, kind, layer):
        R = self.rotation(layer, kind).to(x.device)
        xr = torch.einsum("hij,thj->thi", R, x)
        p = self.clip[kind]
        lo = torch.quantile(xr, 1 - p, dim=-1, keepdim=True)
        hi = torch.quantile(xr, p, dim=-1, keepdim=True)
        qmax = (1 << self.bits) - 1
        scale = ((hi - lo) / qmax).clamp_min(1e-8).half()
        zero = lo.half()
        codes = torch.round((xr.clamp(lo, hi) - zero.float()) / scale.float()).clamp(0, qmax).to(torch.uint8)
        return {"codes": codes, "scale": scale, "zero": zero}

    def _decode(self, payload, kind, layer, T, H, D):
        xr = minmax_dequantize(payload["codes"], payload["scale"], payload["zero"], D)
        R = self.rotation(layer, kind).to(xr.device)
        return torch.einsum("hji,thj->thi", R, xr)

    def _quantized_bits(self, kind: str) -> float:
        return self.bits + 32 / self._require_head_dim()

    def state_dict(self):
        return {f"layers.{l}.{k}.R": r.contiguous() for l, kr in self.rotations.items() for k, r in kr.items()}

    def load_state_dict(self, state):
        rot: dict[int, dict[str, torch.Tensor]] = {}
        for key, t in state.items():
            parts = key.split(".")
            if len(parts) != 4 or parts[0] != "layers" or parts[2] not in ("k", "v") or parts[3] != "R":
                raise ConfigError(f"oscar-paper: unexpected tensor {key!r} in state dict")
            rot.setdefault(int(parts[1]), {})[parts[2]] = t
        for layer, kr in rot.items():
            if set(kr) != {"k", "v"}:
                raise ConfigError(f"oscar-paper: layer {layer} lacks a k or v rotation")
        self.rotations = rot
        if rot:
            self.head_dim = int(next(iter(rot.values()))["k"].shape[-1])
        self.fitted = True
