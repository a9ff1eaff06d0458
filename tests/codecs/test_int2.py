"""int2: matches a hand-written per-group quantizer, error within half a step, true bits."""

import numpy as np
import pytest
import torch

from oscar_cluster.codecs import get
from oscar_cluster.errors import ConfigError

HEAD_DIMS = [32, 64, 128, 256]
FP16_EPS = 2.0**-10  # relative rounding of the fp16 scale and zero (half ulp is 2**-11)


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(10 * torch.log10(x.pow(2).sum() / (x - y).pow(2).sum()))


def gaussian(T: int = 32, H: int = 2, D: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, H, D, generator=torch.Generator().manual_seed(seed))


def ref_int2(x: np.ndarray, group: int):
    """Independent INT2: every run of `group` channels of every token and head on its own."""
    T, H, D = x.shape
    codes = np.zeros(x.shape, np.uint8)
    out = np.zeros_like(x)
    scales = np.zeros((T, H, D // group), np.float32)
    for t in range(T):
        for h in range(H):
            for g in range(D // group):
                v = x[t, h, g * group : (g + 1) * group]
                lo, hi = np.float32(v.min()), np.float32(v.max())
                scale = np.float32(np.float16(max(np.float32(hi - lo) / np.float32(3), 1e-8)))
                zero = np.float32(np.float16(lo))
                q = np.clip(np.round((v - zero) / scale), 0, 3)
                codes[t, h, g * group : (g + 1) * group] = q
                out[t, h, g * group : (g + 1) * group] = q * scale + zero
                scales[t, h, g] = scale
    return codes, out, scales


@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("kind", ["k", "v"])
def test_matches_reference(D, kind):
    x = gaussian(D=D, seed=D) * 2 + 0.5
    codec = get("int2")
    enc = codec.encode(x, kind, 0)
    group = min(64, D)
    codes, ref, _ = ref_int2(x.numpy(), group)
    assert enc.payload["codes"].dtype == torch.uint8
    assert int(enc.payload["codes"].min()) >= 0 and int(enc.payload["codes"].max()) <= 3
    assert enc.payload["scale"].shape == (32, 2, D // group)
    assert enc.payload["scale"].dtype == enc.payload["zero"].dtype == torch.float16
    np.testing.assert_array_equal(enc.payload["codes"].numpy(), codes)
    np.testing.assert_allclose(codec.decode(enc).numpy(), ref, atol=1e-6, rtol=0)


def test_error_within_half_step():
    x = gaussian(T=64, D=128, seed=3) * 5
    codec = get("int2")
    enc = codec.encode(x, "k", 0)
    err = (codec.decode(enc) - x).abs()
    scale = enc.payload["scale"].float().repeat_interleave(64, -1)
    zero = enc.payload["zero"].float().repeat_interleave(64, -1)
    slack = FP16_EPS * (zero.abs() + 3 * scale) + 1e-6  # fp16 rounding of zero and scale
    assert bool((err <= scale / 2 + slack).all())
    assert float((err / scale).max()) > 0.4  # the bound is tight, not vacuous


def test_sqnr_floor_gaussian():
    x = gaussian(T=256, D=128, seed=4)
    assert sqnr_db(x, get("int2").roundtrip(x, "v", 0)) > 3.0


@pytest.mark.parametrize("D,bits", [(64, 2.5), (128, 2.5), (32, 3.0)])
def test_bits_per_element(D, bits):
    codec = get("int2", head_dim=D)
    assert codec.quantized_bits_per_element() == bits
    assert codec.bits_per_element(1024) == bits
    codec = get("int2", head_dim=D, sinks=64, recent=256)
    assert codec.bits_per_element(32768) == pytest.approx((320 * 16 + (32768 - 320) * bits) / 32768)


def test_sinks_bit_exact():
    x = gaussian(T=16, seed=5)
    codec = get("int2", sinks=4)
    y = codec.roundtrip(x, "k", 0, positions=torch.arange(16))
    assert torch.equal(y[:4], x[:4].to(torch.bfloat16).float())
    assert not torch.allclose(y[4:], x[4:], atol=1e-2)


def test_errors():
    with pytest.raises(ConfigError):
        get("int2").encode(gaussian(), "kv", 0)
    with pytest.raises(ConfigError, match="96"):
        get("int2", head_dim=96)
    with pytest.raises(ConfigError):
        get("int2").encode(gaussian(D=96), "k", 0)
    with pytest.raises(ConfigError):
        get("int2").encode(gaussian()[0], "k", 0)
