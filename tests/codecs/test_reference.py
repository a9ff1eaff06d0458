"""Reference codecs (bf16, fp8, int8, int4): exact roundtrips, SQNR floors, true bits, sinks."""

import numpy as np
import pytest
import torch

from oscar_cluster.codecs import get, names
from oscar_cluster.errors import ConfigError

HEAD_DIMS = [64, 128]
SQNR_FLOOR_DB = {"bf16": 45.0, "fp8": 25.0, "int8": 35.0, "int4": 15.0}


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(10 * torch.log10(x.pow(2).sum() / (x - y).pow(2).sum()))


def gaussian(T: int = 64, H: int = 2, D: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, H, D, generator=torch.Generator().manual_seed(seed))


def test_registration_order():
    assert names()[:4] == ["bf16", "fp8", "int8", "int4"]
    for n in ("bf16", "fp8", "int8", "int4"):
        assert get(n).needs_calibration is False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bf16_roundtrip_equals_cast(dtype):
    x = gaussian().to(dtype) * 3
    y = get("bf16").roundtrip(x, "k", 0)
    assert y.dtype == dtype
    assert torch.equal(y, x.to(torch.bfloat16).to(dtype))


def test_fp8_matches_independent_reference():
    x = gaussian(D=64) * torch.linspace(0.01, 10, 64)
    enc = get("fp8").encode(x, "v", 0)
    assert enc.payload["codes"].dtype == torch.float8_e4m3fn
    assert enc.payload["scale"].shape == (64, 2) and enc.payload["scale"].dtype == torch.float16
    scale = (x.abs().amax(-1, keepdim=True) / 448).half().float()
    ref = (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale
    assert torch.equal(get("fp8").roundtrip(x, "v", 0), ref)


def _ref_minmax(x: np.ndarray, bits: int) -> np.ndarray:
    """Independent per-token, per-head asymmetric quantizer over the whole head dim."""
    out = np.empty_like(x)
    qmax = 2**bits - 1
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            v = x[t, h]
            lo, hi = np.float32(v.min()), np.float32(v.max())
            scale = np.float32(np.float16(max(np.float32(hi - lo) / np.float32(qmax), 1e-8)))
            zero = np.float32(np.float16(lo))
            q = np.clip(np.round((v - zero) / scale), 0, qmax)
            out[t, h] = q * scale + zero
    return out


@pytest.mark.parametrize("name,bits", [("int8", 8), ("int4", 4)])
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_int_matches_independent_reference(name, bits, D):
    x = gaussian(T=16, D=D, seed=1)
    codec = get(name)
    enc = codec.encode(x, "k", 0)
    codes = enc.payload["codes"]
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    assert enc.payload["scale"].shape == (16, 2, 1)
    np.testing.assert_allclose(codec.decode(enc).numpy(), _ref_minmax(x.numpy(), bits), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["bf16", "fp8", "int8", "int4"])
@pytest.mark.parametrize("kind", ["k", "v"])
def test_sqnr_floor(name, kind):
    x = gaussian()
    assert sqnr_db(x, get(name).roundtrip(x, kind, 3)) > SQNR_FLOOR_DB[name]


@pytest.mark.parametrize("D", HEAD_DIMS)
def test_bits_per_element(D):
    assert get("bf16").bits_per_element(1000) == 16.0
    assert get("fp8", head_dim=D).quantized_bits_per_element() == 8 + 16 / D
    assert get("int8", head_dim=D).quantized_bits_per_element() == 8 + 32 / D
    assert get("int4", head_dim=D).quantized_bits_per_element() == 4 + 32 / D
    # sinks + recent in bf16: (64 * 16 + (4096 - 64) * (4 + 32/D)) / 4096
    c = get("int4", head_dim=D, sinks=32, recent=32)
    assert c.bits_per_element(4096) == pytest.approx((64 * 16 + 4032 * (4 + 32 / D)) / 4096)
    assert c.bits_per_element(50) == 16.0


@pytest.mark.parametrize("name", ["fp8", "int8", "int4"])
def test_sinks_are_bit_exact_bf16(name):
    x = gaussian(T=20, seed=2)
    positions = torch.arange(4, 24)  # positions 4..7 are sinks
    codec = get(name, sinks=8)
    enc = codec.encode(x, "k", 0, positions)
    assert int(enc.raw_mask.sum()) == 4
    y = codec.decode(enc)
    keep = positions < 8
    assert torch.equal(y[keep], x[keep].to(torch.bfloat16).float())
    assert not torch.equal(y[~keep], x[~keep])


def test_errors():
    with pytest.raises(ConfigError):
        get("int8").encode(gaussian(), "q", 0)
    with pytest.raises(ConfigError):
        get("int4", head_dim=64).encode(gaussian(D=128), "k", 0)
    with pytest.raises(ConfigError):
        get("fp8").bits_per_element(1024)  # head dim unknown
    with pytest.raises(ConfigError):
        get("int8", bogus=1)
