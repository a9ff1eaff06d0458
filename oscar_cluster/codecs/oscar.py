"""`oscar`: per-KV-head query-whitened key transforms, W_o-metric value transforms, joint K/V
water-filled bits, one fp16 norm per token (DESIGN.md section 3).

Format of one encoded token and KV head (kind k or v):
    codes  : sum_j b_j bits, channels in importance order, packed segment by segment
             (each segment: `width` channels of b bits, little-endian, whole bytes)
    scale  : fp16, the token's RMS over coded channels in the normalized space
Read path: x'_j = mean_j + s_j * scale * level_{b_j}[code_j] (mean_j where b_j = 0), x = T^-1 x'.
Keys attend in the transformed space with q' = T_k^-T q; values' T_v^-1 maps the output back.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..bits import OSCAR_MEAN_BITS, OSCAR_SCALE_BITS, OSCAR_SINKS, oscar_quantized_bits
from ..errors import ConfigError
from ..rope import apply_rope, rope_average_mean, rope_average_moment
from ..transforms import metric_whitened_transform
from ..waterfill import allocate_bits, runs
from . import register
from .base import Codec
from .quantizers import (MAX_BITS, gaussian_levels, level_distortion, level_midpoints, nearest_level, pack_bits,
                         unpack_bits)

__all__ = ["OscarCodec", "LayerCodebook"]

SCALE_BITS = OSCAR_SCALE_BITS
_TENSORS = ("T", "T_inv", "mean", "std", "bits", "rope_mean", "inv_freq")
_MAX_ABS = 1e6  # far beyond any real transform, mean or scale; larger is corruption
_DTYPES = {"T": torch.float32, "T_inv": torch.float32, "mean": torch.float32, "std": torch.float32,
           "bits": torch.int64, "rope_mean": torch.float32, "inv_freq": torch.float64}


def _second_moment_about(mean: torch.Tensor, w_sum: torch.Tensor, w_sq: torch.Tensor,
                         w_total: torch.Tensor) -> torch.Tensor:
    """Weighted second moment about `mean` (the mean the quantizer removes), from weighted sums.

    mean, w_sum: [H, d]; w_sq: [H, d, d]; w_total: [H] -> E_w[(x - mean)(x - mean)^T]: [H, d, d]."""
    w = w_total.clamp_min(1e-30)
    m_w = w_sum / w[:, None]
    dm = m_w - mean
    return w_sq / w[:, None, None] - m_w[:, :, None] * m_w[:, None, :] + dm[:, :, None] * dm[:, None, :]


@dataclass
class LayerCodebook:
    """Everything one layer needs, for one kind ("k" or "v"); float32.

    T: [H, d, d] forward; T_inv: [H, d, d]; mean, std: [H, d] per channel in the transformed space;
    bits: [d] int per channel (shared by the layer's heads, non-increasing);
    rope_mean: [H, d] pre-RoPE mean subtracted at each position p as R_p rope_mean before the
    transform (zeros for values and for key_mean="global"); inv_freq: [d/2] RoPE frequencies."""

    T: torch.Tensor
    T_inv: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    bits: torch.Tensor
    rope_mean: torch.Tensor
    inv_freq: torch.Tensor

    @cached_property
    def position_mean(self) -> bool:
        return bool(self.rope_mean.abs().max() > 0)

    @cached_property
    def segments(self) -> list[tuple[int, int, int]]:
        """[(start, width, bits)] runs of the layout (computed once: no device sync per token)."""
        out, start = [], 0
        for w, b in runs(self.bits.tolist()):
            out.append((start, w, b))
            start += w
        return out

    def to(self, device) -> "LayerCodebook":
        """A copy with every tensor on `device` (so encode/decode move nothing per call)."""
        return LayerCodebook(**{name: getattr(self, name).to(device) for name in _TENSORS})

    def mean_at(self, positions: torch.Tensor) -> torch.Tensor:
        """R_p rope_mean for each position: [T, H, d] float32."""
        T = positions.shape[0]
        m = self.rope_mean.float().to(positions.device)[None].expand(T, -1, -1).contiguous()
        return apply_rope(m, positions, self.inv_freq.to(positions.device))

    @property
    def query_transform(self) -> torch.Tensor:
        """T^-T: [H, d, d], applied to queries (keys only)."""
        return self.T_inv.transpose(-1, -2)


@register("oscar")
class OscarCodec(Codec):
    needs_calibration = True
    uses_positions = True

    def __init__(
        self,
        sinks: int = OSCAR_SINKS,
        recent: int = 0,
        head_dim: int | None = None,
        mean_bits: float = OSCAR_MEAN_BITS,
        segment_width: int = 8,
        levels: str = "lloyd",
        ridge: float = 0.3,
        whiten: bool = True,
        waterfill: bool = True,
        value_transform: bool = True,
        value_weighting: str = "attention",
        target_context: int | None = None,
        scale_iters: int = 2,
        key_mean: str = "rope",
        key_weighting: str = "attention",
        key_weight: float = 1.0,
    ):
        super().__init__(sinks=sinks, recent=recent, head_dim=head_dim)
        if levels not in ("lloyd", "uniform"):
            raise ConfigError(f"oscar: levels must be 'lloyd' or 'uniform', got {levels!r}")
        if value_weighting not in ("attention", "none"):
            raise ConfigError(f"oscar: value_weighting must be 'attention' or 'none', got {value_weighting!r}")
        if not 0 < mean_bits <= MAX_BITS:
            raise ConfigError(f"oscar: mean_bits must be in (0, {MAX_BITS}], got {mean_bits}")
        if segment_width <= 0 or segment_width % 8:
            raise ConfigError(f"oscar: segment_width must be a positive multiple of 8 (whole bytes at any "
                              f"bit width), got {segment_width}")
        self.mean_bits = float(mean_bits)
        self.segment_width = int(segment_width)
        self.levels = levels
        self.ridge = float(ridge)
        self.whiten = bool(whiten)
        self.waterfill = bool(waterfill)
        self.value_transform = bool(value_transform)
        self.value_weighting = value_weighting
        self.target_context = target_context
        self.scale_iters = int(scale_iters)
        if key_mean not in ("rope", "global"):
            raise ConfigError(f"oscar: key_mean must be 'rope' (position-dependent) or 'global', got {key_mean!r}")
        self.key_mean = key_mean
        if key_weighting not in ("attention", "none"):
            raise ConfigError(f"oscar: key_weighting must be 'attention' or 'none', got {key_weighting!r}")
        self.key_weighting = key_weighting
        if not key_weight > 0:
            raise ConfigError(f"oscar: key_weight must be > 0 (1 = the derived importances), got {key_weight}")
        self.key_weight = float(key_weight)
        self.layers: dict[int, dict[str, LayerCodebook]] = {}
        self._tables = {b: gaussian_levels(b, levels) for b in range(1, MAX_BITS + 1)}
        self._mids: dict = {}  # (bits, device, dtype) -> thresholds, filled by _midpoints

    def options(self) -> dict:
        return {**super().options(), "mean_bits": self.mean_bits, "segment_width": self.segment_width,
                "levels": self.levels, "ridge": self.ridge, "whiten": self.whiten, "waterfill": self.waterfill,
                "value_transform": self.value_transform, "value_weighting": self.value_weighting,
                "target_context": self.target_context, "scale_iters": self.scale_iters,
                "key_mean": self.key_mean, "key_weighting": self.key_weighting, "key_weight": self.key_weight}

    # ----- fitting ---------------------------------------------------------------------------
    def _fit(self, stats) -> None:
        d = self._require_head_dim()
        if d % self.segment_width:
            raise ConfigError(f"oscar: head dim {d} is not a multiple of segment_width {self.segment_width}")
        self.layers = {st.layer: self._fit_layer(st) for st in stats}

    def _key_moments(self, st):
        """(Q [H,d,d], key mean [H,d], key cov [H,d,d], pre-RoPE mean [H,d] removed per position).

        With key_mean="rope" the pre-RoPE mean m is removed at each position (k - R_p m), so the
        key covariance is the pre-RoPE covariance averaged over positions in [0, L); L is the
        target context (default: the calibrated one). With a target context the query moment is
        position-averaged too (closed form, DESIGN.md section 3)."""
        L = self.target_context
        pre = st.has_pre_rope and st.inv_freq is not None
        n = float(st.n_tokens)
        Q = st.query_moment
        if L is not None and pre:
            Q = rope_average_moment(st.q_pre_sq / float(st.n_queries), st.inv_freq, L)
        if self.key_mean == "rope":
            if not pre:
                raise ConfigError("oscar: key_mean='rope' needs pre-RoPE statistics (collect_statistics records "
                                  "them for RoPE models); use key_mean='global' for this model")
            m_pre = st.k_pre_sum / n
            C_pre = st.k_pre_sq / n - m_pre[:, :, None] * m_pre[:, None, :]
            if self.key_weighting == "attention" and bool((st.kw_total > 0).all()):
                # keys weighted by their share of the output error (a^2 ||W_o (v - o)||^2), centred on
                # the plain mean the quantizer removes
                C_pre = _second_moment_about(m_pre, st.kw_sum, st.kw_sq, st.kw_total)
            C = rope_average_moment(C_pre, st.inv_freq, L or st.max_position)
            return Q, torch.zeros_like(m_pre), C, m_pre
        if L is not None and pre:
            m = rope_average_mean(st.k_pre_sum / n, st.inv_freq, L)
            second = rope_average_moment(st.k_pre_sq / n, st.inv_freq, L)
            return Q, m, second - m[:, :, None] * m[:, None, :], torch.zeros_like(m)
        m, C = st.key_mean_cov()
        return Q, m, C, torch.zeros_like(m)

    def _fit_layer(self, st) -> dict[str, LayerCodebook]:
        d, H, G = st.head_dim, st.num_kv_heads, st.num_q_heads // st.num_kv_heads
        Q, k_mean, k_cov, k_rope_mean = self._key_moments(st)
        kt = metric_whitened_transform(Q, k_cov, k_mean, self.ridge, whiten=self.whiten)
        v_mean, v_cov = st.value_mean_cov()
        if self.value_weighting == "attention":  # weighted by a^2, centred on the plain mean
            v_cov = _second_moment_about(v_mean, st.vw_sum, st.vw_sq, st.vw_total)
        vt = metric_whitened_transform(st.w_o_gram, v_cov, v_mean, self.ridge, whiten=self.value_transform)
        if not self.value_transform:  # ablation: no value rotation, channels only sorted by variance
            var = torch.diagonal(v_cov, dim1=-2, dim2=-1).clamp_min(0).double()
            order = torch.argsort(var, dim=-1, descending=True)  # [H, d]
            P = torch.eye(d, dtype=torch.float64)[order]  # [H, d, d] permutation: x' = P x
            vt.T, vt.T_inv = P, P.transpose(-1, -2)
            vt.mean = torch.einsum("hij,hj->hi", P, v_mean.double())
            vt.mu = torch.gather(var, -1, order)
        # Importances in output-error units (see DESIGN.md section 3): keys mu * G * g / d, values mu * a2.
        # key_weight (ablation, default 1) scales the keys' importances before water-filling: above 1
        # keys win bits from values, for tasks where logit errors cost more than the output metric says
        k_imp = (kt.mu * (G * st.g / d)[:, None]).sum(0) * self.key_weight
        v_imp = (vt.mu * st.a2[:, None]).sum(0)
        budget = int(round(self.mean_bits * 2 * d))
        if self.waterfill:
            dist = [level_distortion(b, self.levels) for b in range(MAX_BITS + 1)]
            w = self.segment_width
            budget = (budget // w) * w
            bits = allocate_bits(torch.cat([k_imp, v_imp]).tolist(), budget, dist, width=w)
        else:
            bits = [int(round(self.mean_bits))] * (2 * d)
        k_bits, v_bits = torch.tensor(bits[:d]), torch.tensor(bits[d:])
        inv_freq = st.inv_freq if st.inv_freq is not None else torch.zeros(d // 2, dtype=torch.float64)
        return {"k": self._codebook(kt, k_bits, k_rope_mean, inv_freq),
                "v": self._codebook(vt, v_bits, torch.zeros(H, d), inv_freq)}

    @staticmethod
    def _codebook(t, bits, rope_mean, inv_freq) -> LayerCodebook:
        return LayerCodebook(T=t.T.float(), T_inv=t.T_inv.float(), mean=t.mean.float(),
                             std=t.mu.clamp_min(1e-12).sqrt().float(), bits=bits.to(torch.int64),
                             rope_mean=rope_mean.float(), inv_freq=inv_freq.double())

    # ----- encode / decode -------------------------------------------------------------------
    def codebook(self, layer: int, kind: str) -> LayerCodebook:
        if layer not in self.layers:
            raise ConfigError(f"oscar: no transforms for layer {layer}; the artifact covers layers "
                              f"{min(self.layers)}..{max(self.layers)}" if self.layers else "oscar: not fitted")
        return self.layers[layer][kind]

    def transform(self, x: torch.Tensor, layer: int, kind: str) -> torch.Tensor:
        """x: [T, H, d] -> x' = T x per head."""
        cb = self.codebook(layer, kind)
        return torch.einsum("hij,thj->thi", cb.T.to(x.device), x.float())

    def _segments(self, bits: torch.Tensor) -> list[tuple[int, int, int]]:
        """[(start, width, bits)] runs of the layout."""
        out, start = [], 0
        for w, b in runs(bits.tolist()):
            out.append((start, w, b))
            start += w
        return out

    def to(self, device) -> "OscarCodec":
        """Keep the codebooks and level tables on `device` (the model's), in place; returns self."""
        self.layers = {l: {k: cb.to(device) for k, cb in kinds.items()} for l, kinds in self.layers.items()}
        self._tables = {b: t.to(device) for b, t in self._tables.items()}
        return self

    def _encode(self, x: torch.Tensor, kind: str, layer: int, positions=None) -> dict[str, torch.Tensor]:
        cb = self.codebook(layer, kind)
        T, H, d = x.shape
        dev = x.device
        extra = {}
        if cb.position_mean:
            if positions is None:
                raise ConfigError("oscar: keys need positions (key_mean='rope' removes a position-dependent "
                                  "mean); pass positions=... or calibrate with key_mean='global'")
            x = x - cb.mean_at(positions)
            extra["positions"] = positions.to(torch.int32)  # implicit in a paged cache's slot index
        z = (self.transform(x, layer, kind) - cb.mean.to(dev)) / cb.std.to(dev)  # [T, H, d]
        coded = cb.bits.to(dev) > 0
        scale = z[..., coded].pow(2).mean(-1).sqrt().clamp_min(1e-6)
        weight = cb.std.to(dev).pow(2)  # channel error in output units is std^2 (z - scale * level)^2
        for _ in range(self.scale_iters):
            _, lev = self._quantize(z / scale[..., None], cb.segments, pack=False)
            # least-squares scale for these codes, weighted by the channels' output-error units
            num = (weight * z * lev).sum(-1)
            den = (weight * lev * lev).sum(-1).clamp_min(1e-12)
            scale = torch.where(num > 0, num / den, scale).clamp_min(1e-6)
        scale = scale.half()
        codes, _ = self._quantize(z / scale.float()[..., None], cb.segments, levels=False)
        return {"codes": codes.reshape(T, H, -1), "scale": scale, **extra}

    def _quantize(self, zn: torch.Tensor, segments: list[tuple[int, int, int]], pack: bool = True,
                  levels: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """zn: [T, H, d] normalized, segments: the layout's runs -> (packed codes [T*H, bytes] uint8,
        chosen levels [T, H, d]); either is skipped (None) when not asked for: the scale iterations
        need only the levels, the final pass only the codes (fewer kernel launches per token)."""
        T, H, d = zn.shape
        lev = torch.zeros_like(zn) if levels else None
        packed = []
        for start, w, b in segments:
            if b == 0:
                continue
            table = self._tables[b].to(zn.device)
            idx = nearest_level(zn[..., start:start + w].reshape(T * H, w), table, self._midpoints(b, zn))
            if levels:
                lev[..., start:start + w] = table[idx.long()].reshape(T, H, w)
            if pack:
                packed.append(pack_bits(idx, b))
        if not pack:
            return None, lev
        codes = torch.cat(packed, dim=-1) if packed else torch.zeros(T * H, 0, dtype=torch.uint8, device=zn.device)
        return codes, lev

    def _midpoints(self, b: int, like: torch.Tensor) -> torch.Tensor:
        """Decision thresholds of the b-bit table on like's device and dtype (computed once)."""
        key = (b, like.device, like.dtype)
        mids = self._mids.get(key)
        if mids is None:
            mids = self._mids[key] = level_midpoints(self._tables[b]).to(like.device, like.dtype)
        return mids

    def _decode(self, payload, kind, layer, T, H, D) -> torch.Tensor:
        cb = self.codebook(layer, kind)
        dev = payload["scale"].device
        codes = payload["codes"].reshape(T * H, -1)
        zn = torch.zeros(T * H, D, device=dev)
        byte = 0
        for start, w, b in cb.segments:
            if b == 0:
                continue
            nbytes = w * b // 8
            idx = unpack_bits(codes[:, byte:byte + nbytes], b, w)
            zn[:, start:start + w] = self._tables[b].to(dev)[idx.long()]
            byte += nbytes
        z = zn.reshape(T, H, D) * payload["scale"].float()[..., None]
        xp = cb.mean.to(dev) + cb.std.to(dev) * z
        x = torch.einsum("hij,thj->thi", cb.T_inv.to(dev), xp)
        if cb.position_mean:
            x = x + cb.mean_at(payload["positions"].long())
        return x

    def _quantized_bits(self, kind: str) -> float:
        d = self._require_head_dim()
        if not self.layers:
            return oscar_quantized_bits(d, self.mean_bits)  # before fit: the nominal layout's cost
        per_layer = [float(cb[kind].bits.sum()) / d for cb in self.layers.values()]
        return sum(per_layer) / len(per_layer) + SCALE_BITS / d

    # ----- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for layer, kinds in self.layers.items():
            for kind, cb in kinds.items():
                for name in _TENSORS:
                    out[f"layers.{layer}.{kind}.{name}"] = getattr(cb, name).contiguous()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load per-layer codebooks, checking names, shapes, dtypes and the bit layout."""
        layers: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
        for key, t in state.items():
            parts = key.split(".")
            if (len(parts) != 4 or parts[0] != "layers" or not parts[1].isdigit() or parts[2] not in ("k", "v")
                    or parts[3] not in _TENSORS):
                raise ConfigError(f"oscar: unexpected tensor {key!r} in state dict")
            layers.setdefault(int(parts[1]), {}).setdefault(parts[2], {})[parts[3]] = t
        if not layers:
            raise ConfigError("oscar: state dict holds no layers")
        first = next(iter(layers.values())).get("k", {}).get("T")
        if first is None or first.dim() != 3:
            raise ConfigError("oscar: layer tensors missing or T is not [H, d, d]")
        H, d = int(first.shape[0]), int(first.shape[-1])
        shapes = {"T": (H, d, d), "T_inv": (H, d, d), "mean": (H, d), "std": (H, d), "bits": (d,),
                  "rope_mean": (H, d), "inv_freq": (d // 2,)}
        out = {}
        for layer, kinds in sorted(layers.items()):
            out[layer] = {}
            for kind in ("k", "v"):
                got = kinds.get(kind, {})
                missing = set(_TENSORS) - set(got)
                if missing:
                    raise ConfigError(f"oscar: layer {layer} {kind}: missing tensors {sorted(missing)}")
                for name, shape in shapes.items():
                    if tuple(got[name].shape) != shape:
                        raise ConfigError(f"oscar: layer {layer} {kind}.{name} has shape {tuple(got[name].shape)}, "
                                          f"expected {shape}")
                    if got[name].dtype != _DTYPES[name]:
                        raise ConfigError(f"oscar: layer {layer} {kind}.{name} is {got[name].dtype}, expected "
                                          f"{_DTYPES[name]}")
                bits = got["bits"]
                if bits.is_floating_point() or int(bits.min()) < 0 or int(bits.max()) > MAX_BITS:
                    raise ConfigError(f"oscar: layer {layer} {kind}.bits must be integers in 0..{MAX_BITS}")
                for start, w, b in self._segments(bits):
                    if (w * b) % 8:
                        raise ConfigError(f"oscar: layer {layer} {kind}: segment of {w} channels at {b} bits "
                                          "is not whole bytes")
                if bool((got["std"] < 1e-10).any()):
                    raise ConfigError(f"oscar: layer {layer} {kind}.std must be positive (>= 1e-10)")
                for name in ("T", "T_inv", "mean", "std", "rope_mean"):
                    if not bool(got[name].abs().max() < _MAX_ABS):  # also catches NaN
                        raise ConfigError(f"oscar: layer {layer} {kind}.{name} holds values beyond {_MAX_ABS:g} "
                                          "or non-finite ones; the artifact is corrupt")
                eye = torch.eye(d, dtype=torch.float64)
                err = float((got["T"].double() @ got["T_inv"].double() - eye).abs().max())
                if err > 1e-3:
                    raise ConfigError(f"oscar: layer {layer} {kind}: T_inv is not the inverse of T (error {err:.2e}); "
                                      "the artifact is corrupt")
                out[layer][kind] = LayerCodebook(**{n: got[n] for n in _TENSORS})
        self.layers = out
        self.head_dim = d
        self.fitted = True

    def layouts(self) -> dict[int, dict[str, list[tuple[int, int]]]]:
        """Per layer: {"k": [(width, bits), ...], "v": [...]}."""
        return {l: {k: runs(cb.bits.tolist()) for k, cb in kinds.items()} for l, kinds in self.layers.items()}
