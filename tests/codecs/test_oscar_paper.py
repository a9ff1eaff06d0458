"""`oscar-paper`: orthogonal rotations, percentile clipping, true bits."""

import pytest
import torch

from oscar_cluster import codecs
from oscar_cluster.calibration import LayerStatistics
from oscar_cluster.codecs.oscar_paper import bit_reversal, hadamard_matrix


def _stats(d=64):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(200, 4, d, generator=g)
    k = torch.randn(200, 2, d, generator=g)
    v = torch.randn(200, 2, d, generator=g)
    return [LayerStatistics.from_samples(q, k, v, layer=0, sinks=4)]


def test_hadamard_and_bit_reversal():
    h = hadamard_matrix(16)
    assert torch.allclose(h @ h.T, torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert bit_reversal(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]


def test_rotation_is_orthogonal_and_decode_inverts():
    c = codecs.get("oscar-paper", sinks=0, recent=0).fit(_stats())
    R = c.rotation(0, "k").double()
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(64, dtype=torch.float64).expand(2, 64, 64), atol=1e-5)
    x = torch.randn(64, 2, 64, generator=torch.Generator().manual_seed(1))
    y = c.roundtrip(x, "k", 0)
    assert (y - x).pow(2).mean() < 0.3 * x.pow(2).mean()


def test_percentile_clipping_bounds_codes():
    c = codecs.get("oscar-paper", sinks=0, recent=0).fit(_stats())
    x = torch.randn(16, 2, 64, generator=torch.Generator().manual_seed(2))
    enc = c.encode(x, "v", 0)
    assert enc.payload["codes"].max() <= 3
    xr = torch.einsum("hij,thj->thi", c.rotation(0, "v"), x)
    lo = torch.quantile(xr, 1 - 0.92, dim=-1, keepdim=True)
    assert torch.allclose(enc.payload["zero"].float(), lo, atol=1e-2)


def test_true_bits_include_windows():
    c = codecs.get("oscar-paper").fit(_stats())
    expect = ((64 + 256) * 16 + (32768 - 320) * (2 + 32 / 64)) / 32768
    assert c.bits_per_element(32768) == pytest.approx(expect)
