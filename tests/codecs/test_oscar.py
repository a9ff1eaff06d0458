"""The `oscar` codec on synthetic statistics: exactness, bit layout, quality floors, state."""

import pytest
import torch

from oscar_cluster import codecs
from oscar_cluster.calibration import LayerStatistics
from oscar_cluster.errors import ConfigError

HEAD_DIMS = [64, 128]
D_MODEL = 96


def _sequence(T, Hq, H, d, seed, outlier=True):
    """Keys with a large mean and outlier channels, queries correlated with them."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(T, H, d, generator=g)
    if outlier:
        k[..., :4] = k[..., :4] * 8 + 5.0
    q = torch.randn(T, Hq, d, generator=g) * torch.linspace(3, 0.2, d)
    v = torch.randn(T, H, d, generator=g) * torch.linspace(2, 0.5, d)
    return q, k, v


def _stats(d, layers=2, Hq=4, H=2, T=256, seeds=(0, 1)):
    inv_freq = 1e4 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    w_o = torch.randn(D_MODEL, Hq * d, generator=torch.Generator().manual_seed(9)) / d ** 0.5
    out = []
    for layer in range(layers):
        st = None
        for s in seeds:
            q, k, v = _sequence(T, Hq, H, d, 100 * layer + s)
            part = LayerStatistics.from_samples(q, k, v, w_o, layer=layer, sinks=4, inv_freq=inv_freq)
            st = part if st is None else st + part
        out.append(st)
    return out, w_o


@pytest.fixture(scope="module", params=HEAD_DIMS)
def fitted(request):
    d = request.param
    stats, w_o = _stats(d)
    return codecs.get("oscar").fit(stats), stats, w_o, d


def test_query_key_transform_is_exact(fitted):
    codec, _, _, d = fitted
    cb = codec.codebook(0, "k")
    g = torch.Generator().manual_seed(3)
    q = torch.randn(50, 2, d, generator=g, dtype=torch.float64)
    k = torch.randn(50, 2, d, generator=g, dtype=torch.float64)
    qp = torch.einsum("hij,thj->thi", cb.query_transform.double(), q)
    kp = torch.einsum("hij,thj->thi", cb.T.double(), k)
    err = ((qp * kp).sum(-1) - (q * k).sum(-1)).abs().max()
    assert err < 1e-3 * (q * k).sum(-1).abs().max()  # float32 transforms


def test_layout_is_budgeted_monotone_and_segmented(fitted):
    codec, _, _, d = fitted
    for layer in codec.layers:
        kb, vb = codec.codebook(layer, "k").bits, codec.codebook(layer, "v").bits
        assert int(kb.sum() + vb.sum()) == 2 * 2 * d  # mean 2.0 bits over 2d channels
        for bits in (kb, vb):
            assert bool((bits[:-1] >= bits[1:]).all()), "bits must not increase along importance order"
            assert bits.min() >= 0 and bits.max() <= 4
            seg = bits.reshape(-1, codec.segment_width)
            assert bool((seg == seg[:, :1]).all()), "bits constant within each segment"
    expect = (4 * 16 + (32768 - 4) * (2.0 + 16 / d)) / 32768  # 4 bf16 sinks + codes + 2 fp16 scales
    assert codec.bits_per_element(32768) == pytest.approx(expect, abs=1e-9)


def _logit_error(q, k, k_hat, G=2):
    kr, khr = k.repeat_interleave(G, 1), k_hat.repeat_interleave(G, 1)
    return float(((q * (khr - kr)).sum(-1).pow(2).mean() / (q * kr).sum(-1).pow(2).mean()).sqrt())


def _value_error(M, v, v_hat):
    """Output-space error of values: mean e^T M e over tokens / mean v^T M v."""
    e = v_hat - v
    return float(torch.einsum("thi,hij,thj->", e, M.float(), e) / torch.einsum("thi,hij,thj->", v, M.float(), v))


def test_errors_in_the_attention_metric_beat_int2_and_hadamard(fitted):
    """oscar optimizes logit error for keys and W_o-output error for values: check those."""
    codec, stats, _, d = fitted
    q, k, v = _sequence(512, 4, 2, d, seed=77)
    pos = torch.arange(512)
    M = stats[0].w_o_gram
    ours_k = _logit_error(q, k, codec.roundtrip(k, "k", 0, pos))
    ours_v = _value_error(M, v, codec.roundtrip(v, "v", 0, pos))
    for name in ("int2", "hadamard2"):
        base = codecs.get(name)
        assert ours_k < _logit_error(q, k, base.roundtrip(k, "k", 0, pos))
        assert ours_v < _value_error(M, v, base.roundtrip(v, "v", 0, pos))
    assert ours_k < 0.35


def test_packed_codes_have_true_size(fitted):
    codec, _, _, d = fitted
    _, k, _ = _sequence(64, 4, 2, d, seed=5)
    enc = codec.encode(k, "k", 1, torch.arange(64))
    bits = int(codec.codebook(1, "k").bits.sum())
    assert enc.payload["codes"].dtype == torch.uint8
    assert enc.payload["codes"].shape == (60, 2, bits // 8)  # 4 sinks are raw
    assert enc.payload["scale"].dtype == torch.float16
    assert torch.equal(codec.decode(enc)[:4], k[:4].to(torch.bfloat16).float())


def test_state_dict_roundtrip(fitted):
    codec, _, _, d = fitted
    other = codecs.get("oscar", **codec.options())
    other.load_state_dict(codec.state_dict())
    _, k, v = _sequence(32, 4, 2, d, seed=11)
    pos = torch.arange(100, 132)
    for x, kind in ((k, "k"), (v, "v")):
        assert torch.equal(codec.roundtrip(x, kind, 1, pos), other.roundtrip(x, kind, 1, pos))


def test_to_device_keeps_results_and_caches_the_layout(fitted):
    """`to(device)` moves every codebook tensor (the eval keeps codecs beside the model, so nothing
    is copied per token); results are unchanged and the layout runs are computed once."""
    codec, _, _, d = fitted
    moved = codecs.get("oscar", **codec.options())
    moved.load_state_dict(codec.state_dict())
    assert moved.to(torch.device("cpu")) is moved
    for kinds in moved.layers.values():
        for cb in kinds.values():
            assert cb.segments == moved._segments(cb.bits) and cb.segments is cb.segments
            assert sum(w * b for _, w, b in cb.segments) == int(cb.bits.sum())
            assert all(getattr(cb, n).device.type == "cpu" for n in ("T", "T_inv", "mean", "std", "bits"))
    _, k, v = _sequence(32, 4, 2, d, seed=12)
    pos = torch.arange(7, 39)
    for x, kind in ((k, "k"), (v, "v")):
        assert torch.equal(codec.roundtrip(x, kind, 0, pos), moved.roundtrip(x, kind, 0, pos))
    assert moved.codebook(0, "k").position_mean == codec.codebook(0, "k").position_mean


def test_rope_mean_needs_positions(fitted):
    codec, _, _, d = fitted
    _, k, v = _sequence(8, 4, 2, d, seed=1)
    with pytest.raises(ConfigError, match="positions"):
        codec.encode(k, "k", 0)
    codec.encode(v, "v", 0)  # values carry no position-dependent mean


@pytest.mark.parametrize("opts", [{"waterfill": False}, {"whiten": False}, {"value_transform": False},
                                  {"levels": "uniform"}, {"key_mean": "global"}, {"target_context": 4096}])
def test_ablations_fit_and_encode(opts):
    stats, _ = _stats(64, layers=1, seeds=(0,))
    codec = codecs.get("oscar", **opts).fit(stats)
    _, k, v = _sequence(64, 4, 2, 64, seed=2)
    pos = torch.arange(64)
    for x, kind in ((k, "k"), (v, "v")):
        y = codec.roundtrip(x, kind, 0, pos)
        assert torch.isfinite(y).all()
        assert (y - x).pow(2).mean() < x.pow(2).mean()


def test_key_weight_moves_bits_from_values_to_keys_at_the_same_budget():
    stats, _ = _stats(64, layers=1, seeds=(0,))
    plain = codecs.get("oscar").fit(stats).codebook(0, "k"), codecs.get("oscar").fit(stats).codebook(0, "v")
    keyed = codecs.get("oscar", key_weight=4.0).fit(stats)
    k, v = keyed.codebook(0, "k"), keyed.codebook(0, "v")
    assert int(k.bits.sum() + v.bits.sum()) == int(plain[0].bits.sum() + plain[1].bits.sum())
    assert int(k.bits.sum()) > int(plain[0].bits.sum())
    assert codecs.get("oscar", key_weight=4.0).options()["key_weight"] == 4.0


@pytest.mark.parametrize("bad", [{"segment_width": 4}, {"levels": "nf4"}, {"mean_bits": 0}, {"key_mean": "x"},
                                 {"key_weight": 0}])
def test_bad_options(bad):
    with pytest.raises(ConfigError):
        codecs.get("oscar", **bad)


def test_unfitted_codec_refuses_to_encode():
    with pytest.raises(ConfigError, match="calibration"):
        codecs.get("oscar").encode(torch.zeros(2, 2, 64), "k", 0)


def test_unknown_codec_lists_names():
    with pytest.raises(ConfigError) as e:
        codecs.get("int3")
    for name in ("oscar", "oscar-paper", "kivi2", "hadamard2"):
        assert name in str(e.value)
