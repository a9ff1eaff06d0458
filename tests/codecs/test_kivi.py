"""kivi2 (arXiv 2402.02750): per-channel keys over 32-token groups, per-token values, true ~3 bpe."""

import numpy as np
import pytest
import torch

from oscar_cluster.codecs import get
from oscar_cluster.errors import ConfigError

SEQ_LENS = [32, 80, 7]  # whole groups, two groups + a partial one, a partial group only


def gaussian(T: int, H: int = 2, D: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, H, D, generator=torch.Generator().manual_seed(seed))


def _q(v: np.ndarray, bits: int) -> np.ndarray:
    """Independent asymmetric min/max quantize-dequantize of one group (fp16 scale and zero)."""
    qmax = 2**bits - 1
    lo, hi = np.float32(v.min()), np.float32(v.max())
    scale = np.float32(np.float16(max(np.float32(hi - lo) / np.float32(qmax), 1e-8)))
    zero = np.float32(np.float16(lo))
    return np.clip(np.round((v - zero) / scale), 0, qmax) * scale + zero


def ref_keys(x: np.ndarray, n: int = 32, bits: int = 2) -> np.ndarray:
    """Per (head, channel), min/max over each run of n tokens; the last run may be short."""
    out = np.zeros_like(x)
    for t0 in range(0, x.shape[0], n):
        for h in range(x.shape[1]):
            for c in range(x.shape[2]):
                out[t0 : t0 + n, h, c] = _q(x[t0 : t0 + n, h, c], bits)
    return out


def ref_values(x: np.ndarray, g: int = 32, bits: int = 2) -> np.ndarray:
    """Per token and head, min/max over each run of g channels."""
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            for c0 in range(0, x.shape[2], g):
                out[t, h, c0 : c0 + g] = _q(x[t, h, c0 : c0 + g], bits)
    return out


def test_defaults():
    codec = get("kivi2")
    assert (codec.sinks, codec.recent, codec.token_group, codec.bits) == (0, 128, 32, 2)
    assert codec.needs_calibration is False
    assert codec.options() == {"sinks": 0, "recent": 128, "head_dim": None, "bits": 2,
                               "key_group_tokens": 32, "value_group": 32}
    assert get("kivi2", key_group_tokens=16).token_group == 16


@pytest.mark.parametrize("T", SEQ_LENS)
def test_keys_match_reference(T):
    x = gaussian(T, seed=T) * 3 + 1
    codec = get("kivi2")
    enc = codec.encode(x, "k", 0)
    assert enc.payload["codes"].dtype == torch.uint8 and int(enc.payload["codes"].max()) <= 3
    assert enc.payload["scale"].shape == (-(-T // 32), 2, 64)
    np.testing.assert_allclose(codec.decode(enc).numpy(), ref_keys(x.numpy()), atol=1e-6, rtol=0)


@pytest.mark.parametrize("D", [16, 64, 128])
def test_values_match_reference(D):
    x = gaussian(40, D=D, seed=D)
    codec = get("kivi2")
    enc = codec.encode(x, "v", 0)
    assert enc.payload["scale"].shape == (40, 2, D // min(32, D))
    ref = ref_values(x.numpy(), g=min(32, D))
    np.testing.assert_allclose(codec.decode(enc).numpy(), ref, atol=1e-6, rtol=0)


def test_key_groups_are_independent_runs_of_32():
    x = gaussian(64, seed=1)
    codec = get("kivi2")
    whole = codec.roundtrip(x, "k", 0)
    parts = torch.cat([codec.roundtrip(x[:32], "k", 0), codec.roundtrip(x[32:], "k", 0)])
    assert torch.equal(whole, parts)


def test_per_channel_keys_beat_per_token_on_channel_outliers():
    x = gaussian(256, D=64, seed=2)
    x[..., [3, 17, 40]] = x[..., [3, 17, 40]] * 4 + 12  # a few large, offset key channels
    codec = get("kivi2")
    err_channel = (codec.roundtrip(x, "k", 0) - x).pow(2).mean()
    err_token = (codec.roundtrip(x, "v", 0) - x).pow(2).mean()  # per-token groups of 32, same bits
    assert err_channel < 0.5 * err_token


def test_bits_per_element():
    codec = get("kivi2", head_dim=128)
    assert codec._quantized_bits("k") == 3.0 and codec._quantized_bits("v") == 3.0
    assert codec.bits_per_element(32768) == pytest.approx((128 * 16 + (32768 - 128) * 3) / 32768)
    assert codec.bits_per_element(100) == 16.0
    assert get("kivi2", head_dim=16).quantized_bits_per_element() == 0.5 * (3.0 + 4.0)  # v group = 16


def test_sinks_bit_exact():
    x = gaussian(40, seed=3)
    codec = get("kivi2", sinks=4)
    positions = torch.arange(40)
    y = codec.roundtrip(x, "k", 0, positions)
    assert torch.equal(y[:4], x[:4].to(torch.bfloat16).float())
    # the 36 quantized tokens form their own groups: 32 + 4
    np.testing.assert_allclose(y[4:].numpy(), ref_keys(x[4:].numpy()), atol=1e-6, rtol=0)


def test_errors():
    with pytest.raises(ConfigError):
        get("kivi2").encode(gaussian(32), "x", 0)
    with pytest.raises(ConfigError):
        get("kivi2", bits=0)
    with pytest.raises(ConfigError):
        get("kivi2", key_group_tokens=0)
    with pytest.raises(ConfigError):
        get("kivi2", head_dim=48)  # 48 is not a multiple of the value group 32
