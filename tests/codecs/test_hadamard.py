"""hadamard2: orthogonal seeded rotation, INT2 in the rotated basis, beats int2 on outlier channels."""

import numpy as np
import pytest
import torch

from oscar_cluster.codecs import get
from oscar_cluster.errors import ConfigError

HEAD_DIMS = [16, 64, 128]


def gaussian(T: int = 64, H: int = 2, D: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(T, H, D, generator=torch.Generator().manual_seed(seed))


def kron_hadamard(d: int) -> np.ndarray:
    """Independent Sylvester construction: H_d = H_2 (x) H_{d/2}, normalized."""
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.kron(np.array([[1.0, 1.0], [1.0, -1.0]]), h)
    return h / np.sqrt(d)


@pytest.mark.parametrize("D", HEAD_DIMS)
def test_rotation_is_orthogonal_signed_hadamard(D):
    codec = get("hadamard2", head_dim=D)
    r = codec.rotation(2).double()
    torch.testing.assert_close(r @ r.T, torch.eye(D, dtype=torch.float64), atol=1e-6, rtol=0)
    signs = (r.numpy() / kron_hadamard(D))[:, 0]  # R = diag(s) H / sqrt(d)
    assert set(np.round(signs).tolist()) <= {-1.0, 1.0}
    np.testing.assert_allclose(r.numpy(), signs[:, None] * kron_hadamard(D), atol=1e-6)


def test_rotation_deterministic_per_seed_and_layer():
    a, b = get("hadamard2", head_dim=64), get("hadamard2", head_dim=64)
    assert torch.equal(a.rotation(0), b.rotation(0))
    assert not torch.equal(a.rotation(0), a.rotation(1))
    assert not torch.equal(a.rotation(0), get("hadamard2", head_dim=64, seed=1).rotation(0))


@pytest.mark.parametrize("kind", ["k", "v"])
def test_equals_int2_in_rotated_basis(kind):
    x = gaussian(D=128, seed=1)
    codec = get("hadamard2")
    enc = codec.encode(x, kind, 5)
    codes = enc.payload["codes"]
    assert codes.dtype == torch.uint8 and int(codes.min()) >= 0 and int(codes.max()) <= 3
    r = codec.rotation(5)
    ref = get("int2").roundtrip(x @ r, kind, 5) @ r.T
    torch.testing.assert_close(codec.decode(enc), ref, atol=1e-5, rtol=0)


def test_decode_is_in_input_space():
    x = gaussian(T=256, seed=2)
    y = get("hadamard2").roundtrip(x, "k", 0)
    err = (y - x).pow(2).sum() / x.pow(2).sum()
    assert float(err) < 0.5  # a wrong inverse would give ~2


def test_beats_int2_on_outlier_channels():
    x = gaussian(T=256, D=128, seed=3)
    x[..., [5, 70, 101]] *= 25  # a few large channels dominate each token's range
    mse_h = (get("hadamard2").roundtrip(x, "k", 0) - x).pow(2).mean()
    mse_i = (get("int2").roundtrip(x, "k", 0) - x).pow(2).mean()
    assert mse_h < 0.7 * mse_i


def test_options_bits_and_state():
    codec = get("hadamard2", head_dim=128, seed=7)
    assert codec.options() == {"sinks": 0, "recent": 0, "head_dim": 128, "seed": 7}
    assert codec.state_dict() == {}
    assert codec.needs_calibration is False
    assert codec.quantized_bits_per_element() == 2.5
    assert get("hadamard2", head_dim=32).quantized_bits_per_element() == 3.0


def test_sinks_bit_exact():
    x = gaussian(T=16, seed=4)
    y = get("hadamard2", sinks=3).roundtrip(x, "v", 1, positions=torch.arange(16))
    assert torch.equal(y[:3], x[:3].to(torch.bfloat16).float())


def test_errors():
    with pytest.raises(ConfigError, match="48"):
        get("hadamard2", head_dim=48)
    with pytest.raises(ConfigError, match="48"):
        get("hadamard2").encode(gaussian(D=48), "k", 0)
    with pytest.raises(ConfigError):
        get("hadamard2").encode(gaussian(), "kv", 0)
    with pytest.raises(ConfigError):
        get("hadamard2").rotation(0)  # head dim unknown
