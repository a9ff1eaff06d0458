"""rope: apply/unapply are inverse and match transformers; the closed-form position averages equal
brute-force averages over positions (DESIGN.md section 3, "Context length")."""

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from oscar_cluster.rope import apply_rope, mean_rotation, rope_average_mean, rope_average_moment, unapply_rope

HEAD_DIMS = [8, 16, 64]
SMALL_DIMS = [8, 16]
DTYPES = [torch.float32, torch.float64]
ROPE_BASES = [10000.0, 500000.0]
SHORT_CONTEXTS = [1, 2, 37, 64]
MC_CONTEXT = 32768
MC_SAMPLES = 20000


def inv_freq_for(d: int, base: float = 10000.0) -> torch.Tensor:
    """transformers' default RoPE frequencies: base^(-2j/d), j < d/2."""
    return 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)


def rotation_matrices(positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """Independent reference: [P, d, d] float64 matrices R_p of the rotate_half layout
    (channel j pairs with j + d/2 and turns by p * inv_freq[j])."""
    h = inv_freq.shape[0]
    ang = positions[:, None].astype(np.float64) * inv_freq[None, :]  # [P, h]
    c, s = np.cos(ang), np.sin(ang)
    R = np.zeros((positions.shape[0], 2 * h, 2 * h))
    j = np.arange(h)
    R[:, j, j] = c
    R[:, j, j + h] = -s
    R[:, j + h, j] = s
    R[:, j + h, j + h] = c
    return R


def random_moment(d: int, seed: int, batch: int = 2) -> torch.Tensor:
    """A generic [batch, d, d] float64 matrix: PSD part plus a rank-one non-symmetric part, so every
    2x2 block has rotation-like and reflection-like components."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(batch, d, 2 * d, generator=g, dtype=torch.float64)
    return A @ A.transpose(-1, -2) / (2 * d) + 0.3 * torch.randn(batch, d, 1, generator=g, dtype=torch.float64) * \
        torch.randn(batch, 1, d, generator=g, dtype=torch.float64)


# ----- apply / unapply --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_unapply_inverts_apply(d, dtype):
    g = torch.Generator().manual_seed(d)
    x = torch.randn(50, 3, d, generator=g).to(dtype)
    pos = torch.randint(0, 100000, (50,), generator=g)
    inv = inv_freq_for(d)
    y = apply_rope(x, pos, inv)
    assert y.dtype == dtype
    assert not torch.allclose(y, x)  # it did rotate
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(unapply_rope(y, pos, inv), x, atol=tol, rtol=0)
    torch.testing.assert_close(apply_rope(unapply_rope(x, pos, inv), pos, inv), x, atol=tol, rtol=0)
    # rotations keep the norm of every (token, head) vector
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=tol * 10, rtol=0)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_apply_matches_explicit_rotation_matrices(d):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20, 2, d, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 5000, (20,), generator=g)
    R = rotation_matrices(pos.numpy(), inv_freq_for(d).numpy())
    ref = np.einsum("tij,thj->thi", R, x.numpy())
    np.testing.assert_allclose(apply_rope(x, pos, inv_freq_for(d)).numpy(), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("base", ROPE_BASES)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_apply_matches_transformers_float64(d, base):
    """cos/sin built as LlamaRotaryEmbedding does (emb = cat(freqs, freqs)), in float64."""
    g = torch.Generator().manual_seed(2)
    T, H = 33, 4
    x = torch.randn(T, H, d, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 40000, (T,), generator=g)
    inv = inv_freq_for(d, base)
    freqs = pos.double()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)  # [T, d]
    # transformers layout here: [batch, T, heads, d], so unsqueeze the heads dim (2)
    ref, _ = apply_rotary_pos_emb(x[None], x[None], emb.cos()[None], emb.sin()[None], unsqueeze_dim=2)
    torch.testing.assert_close(apply_rope(x, pos, inv), ref[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_apply_matches_llama_rotary_embedding_module(d):
    """The real LlamaRotaryEmbedding (float32 angles) on short positions, and its inv_freq."""
    cfg = LlamaConfig(hidden_size=2 * d, num_attention_heads=2, head_dim=d, rope_theta=10000.0,
                      max_position_embeddings=4096)
    rot = LlamaRotaryEmbedding(cfg)
    torch.testing.assert_close(rot.inv_freq.double(), inv_freq_for(d), atol=1e-7, rtol=1e-6)
    g = torch.Generator().manual_seed(3)
    T, H = 40, 2
    x = torch.randn(1, H, T, d, generator=g)  # transformers' [batch, heads, T, d]
    pos = torch.randint(0, 512, (1, T), generator=g)
    cos, sin = rot(x, pos)
    ref, _ = apply_rotary_pos_emb(x, x, cos, sin)  # unsqueeze_dim=1 (heads)
    ours = apply_rope(x[0].transpose(0, 1), pos[0], rot.inv_freq).transpose(0, 1)[None]
    # float32 angles at p < 512 are off by at most ~512 * 6e-8
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


# ----- mean_rotation ----------------------------------------------------------------------------
def test_mean_rotation_at_zero_frequency_is_identity():
    for L in SHORT_CONTEXTS + [MC_CONTEXT]:
        c, s = mean_rotation(torch.zeros(3), L)
        assert torch.equal(c, torch.ones(3, dtype=torch.float64))
        assert torch.equal(s, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("L", SHORT_CONTEXTS + [1000])
def test_mean_rotation_equals_brute_force(L):
    g = torch.Generator().manual_seed(L)
    omega = torch.cat([torch.rand(50, generator=g, dtype=torch.float64) * 8 - 4,
                       torch.tensor([1e-9, -1e-9, 1e-14, math.pi, -math.pi, 0.5 * math.pi], dtype=torch.float64)])
    p = np.arange(L, dtype=np.float64)
    ang = p[None, :] * omega.numpy()[:, None]
    c, s = mean_rotation(omega, L)
    np.testing.assert_allclose(c.numpy(), np.cos(ang).mean(1), atol=1e-10, rtol=0)
    np.testing.assert_allclose(s.numpy(), np.sin(ang).mean(1), atol=1e-10, rtol=0)


@pytest.mark.parametrize("L", [37, 64])
def test_mean_rotation_at_multiples_of_two_pi(L):
    """R(p w) is the identity at every p when w is a multiple of 2 pi, so the mean is (1, 0):
    the limit sin(L w/2) / (L sin(w/2)) there is (-1)^(k(L-1)), not 1."""
    omega = torch.tensor([2 * math.pi, 4 * math.pi, -2 * math.pi, 6 * math.pi], dtype=torch.float64)
    p = np.arange(L, dtype=np.float64)
    ang = p[None, :] * omega.numpy()[:, None]
    c, s = mean_rotation(omega, L)
    np.testing.assert_allclose(c.numpy(), np.cos(ang).mean(1), atol=1e-9, rtol=0)
    np.testing.assert_allclose(s.numpy(), np.sin(ang).mean(1), atol=1e-9, rtol=0)


# ----- position averages ------------------------------------------------------------------------
def brute_force_moment(X: np.ndarray, inv_freq: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """mean over the given positions of R_p X R_p^T, X: [B, d, d]."""
    out = np.zeros_like(X)
    for s in range(0, positions.shape[0], 4096):
        R = rotation_matrices(positions[s:s + 4096], inv_freq)
        out += np.einsum("pij,bjk,plk->bil", R, X, R)
    return out / positions.shape[0]


@pytest.mark.parametrize("base", ROPE_BASES)
@pytest.mark.parametrize("L", SHORT_CONTEXTS)
@pytest.mark.parametrize("d", SMALL_DIMS)
def test_average_moment_equals_brute_force_short(d, L, base):
    X = random_moment(d, seed=d + L)
    inv = inv_freq_for(d, base)
    ref = brute_force_moment(X.numpy(), inv.numpy(), np.arange(L))
    np.testing.assert_allclose(rope_average_moment(X, inv, L).numpy(), ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("L", [37, 64])
def test_average_moment_with_a_half_turn_plane(L):
    """A plane turning by pi per position (R_p = (-1)^p there): its reflection-like part turns by
    2 pi per position and must not average away."""
    inv = torch.tensor([math.pi, 1.0, 0.1, 0.01], dtype=torch.float64)
    X = random_moment(8, seed=L)
    ref = brute_force_moment(X.numpy(), inv.numpy(), np.arange(L))
    np.testing.assert_allclose(rope_average_moment(X, inv, L).numpy(), ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("d", SMALL_DIMS)
def test_average_moment_equals_brute_force_long(d):
    """Exact average over all 32768 positions (vectorized brute force)."""
    X = random_moment(d, seed=7, batch=1)
    inv = inv_freq_for(d)
    ref = brute_force_moment(X.numpy(), inv.numpy(), np.arange(MC_CONTEXT))
    np.testing.assert_allclose(rope_average_moment(X, inv, MC_CONTEXT).numpy(), ref, atol=1e-9, rtol=0)


@pytest.mark.parametrize("d", SMALL_DIMS)
def test_average_moment_matches_monte_carlo_long(d):
    """20000 uniform positions in [0, 32768): within 5 standard errors entrywise."""
    X = random_moment(d, seed=11, batch=1)
    inv = inv_freq_for(d)
    rng = np.random.default_rng(0)
    pos = rng.integers(0, MC_CONTEXT, MC_SAMPLES)
    R = rotation_matrices(pos, inv.numpy())
    samples = np.einsum("pij,jk,plk->pil", R, X[0].numpy(), R, optimize=True)  # [P, d, d]
    mc, se = samples.mean(0), samples.std(0) / math.sqrt(MC_SAMPLES)
    got = rope_average_moment(X, inv, MC_CONTEXT)[0].numpy()
    assert np.all(np.abs(got - mc) <= 5 * se + 1e-12), float(np.max(np.abs(got - mc) / (se + 1e-12)))


@pytest.mark.parametrize("L", SHORT_CONTEXTS)
@pytest.mark.parametrize("d", SMALL_DIMS)
def test_average_mean_equals_brute_force_short(d, L):
    g = torch.Generator().manual_seed(L)
    m = torch.randn(3, d, generator=g, dtype=torch.float64)
    inv = inv_freq_for(d)
    R = rotation_matrices(np.arange(L), inv.numpy())
    ref = np.einsum("pij,bj->bi", R, m.numpy()) / L
    np.testing.assert_allclose(rope_average_mean(m, inv, L).numpy(), ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("d", SMALL_DIMS)
def test_average_mean_long_brute_force_and_monte_carlo(d):
    m = torch.randn(d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    inv = inv_freq_for(d)
    got = rope_average_mean(m, inv, MC_CONTEXT).numpy()
    exact = np.einsum("pij,j->i", rotation_matrices(np.arange(MC_CONTEXT), inv.numpy()), m.numpy()) / MC_CONTEXT
    np.testing.assert_allclose(got, exact, atol=1e-10, rtol=0)
    pos = np.random.default_rng(1).integers(0, MC_CONTEXT, MC_SAMPLES)
    samples = np.einsum("pij,j->pi", rotation_matrices(pos, inv.numpy()), m.numpy())
    mc, se = samples.mean(0), samples.std(0) / math.sqrt(MC_SAMPLES)
    assert np.all(np.abs(got - mc) <= 5 * se + 1e-12)


@pytest.mark.parametrize("L", [37, MC_CONTEXT])
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_rotation_invariant_moments_are_unchanged(d, L):
    """alpha I, and per-plane alpha_j I + beta_j J blocks, commute with every R_p."""
    inv = inv_freq_for(d)
    X = 2.5 * torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(rope_average_moment(X, inv, L), X, atol=1e-12, rtol=0)
    g = torch.Generator().manual_seed(d)
    h = d // 2
    a, b = torch.rand(h, generator=g, dtype=torch.float64) + 0.5, torch.randn(h, generator=g, dtype=torch.float64)
    Y = torch.zeros(d, d, dtype=torch.float64)
    j = torch.arange(h)
    Y[j, j], Y[j + h, j + h], Y[j, j + h], Y[j + h, j] = a, a, -b, b
    torch.testing.assert_close(rope_average_moment(Y, inv, L), Y, atol=1e-12, rtol=0)


@pytest.mark.parametrize("d", SMALL_DIMS)
def test_average_moment_is_symmetric_and_keeps_trace(d):
    """R_p X R_p^T has the trace of X, and a symmetric X stays symmetric."""
    X = random_moment(d, seed=3)
    X = 0.5 * (X + X.transpose(-1, -2))
    inv = inv_freq_for(d)
    Y = rope_average_moment(X, inv, 1000)
    torch.testing.assert_close(Y, Y.transpose(-1, -2), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.diagonal(Y, dim1=-2, dim2=-1).sum(-1),
                               torch.diagonal(X, dim1=-2, dim2=-1).sum(-1), atol=1e-10, rtol=0)
