"""transforms: the query-whitened key transform keeps every logit, whitens queries and
decorrelates keys with descending variances (DESIGN.md section 3, "Keys")."""

from functools import lru_cache

import pytest
import torch

from oscar_cluster.transforms import metric_whitened_transform, sqrt_and_inv_sqrt

HEAD_DIMS = [64, 128]
KV_HEADS = 2
RIDGES = [0.0, 0.3]
SEED = 0


def random_spd(H: int, d: int, seed: int, decay: float = 3.0) -> torch.Tensor:
    """[H, d, d] float64 SPD with eigenvalues spread over ~e^decay and a random basis."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(H, d, d, generator=g, dtype=torch.float64)
    V, _ = torch.linalg.qr(A)
    w = torch.exp(-decay * torch.rand(H, d, generator=g, dtype=torch.float64)) + 1e-2
    return (V * w[:, None, :]) @ V.transpose(-1, -2)


@lru_cache(maxsize=None)
def problem(d: int, seed: int = SEED):
    Q = random_spd(KV_HEADS, d, seed)
    C = random_spd(KV_HEADS, d, seed + 1, decay=6.0)
    mean = torch.randn(KV_HEADS, d, generator=torch.Generator().manual_seed(seed + 2), dtype=torch.float64)
    return Q, C, mean


@lru_cache(maxsize=None)
def fitted(d: int, ridge: float, whiten: bool = True):
    """metric_whitened_transform on problem(d), computed once per case (eigendecompositions are
    the slow part; the tests only read the result)."""
    Q, C, m = problem(d)
    return metric_whitened_transform(Q, C, m, ridge=ridge, whiten=whiten)


def eye(d: int) -> torch.Tensor:
    return torch.eye(d, dtype=torch.float64).expand(KV_HEADS, d, d)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_inverse(d):
    Q, C, m = problem(d)
    t = fitted(d, 0.0)
    assert t.T.shape == t.T_inv.shape == (KV_HEADS, d, d) and t.T.dtype == torch.float64
    torch.testing.assert_close(t.T_inv @ t.T, eye(d), atol=1e-9, rtol=0)
    torch.testing.assert_close(t.T @ t.T_inv, eye(d), atol=1e-9, rtol=0)


@pytest.mark.parametrize("ridge", RIDGES)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_logits_preserved(d, ridge):
    """(T^-T q).(T k) = q.k for any q, k (any ridge: it only changes which T)."""
    Q, C, m = problem(d)
    t = fitted(d, ridge)
    g = torch.Generator().manual_seed(5)
    q = torch.randn(KV_HEADS, d, 200, generator=g, dtype=torch.float64) * 3
    k = torch.randn(KV_HEADS, d, 200, generator=g, dtype=torch.float64) * 3
    qp = t.T_inv.transpose(-1, -2) @ q
    kp = t.T @ k
    ref = q.transpose(-1, -2) @ k  # [H, 200, 200] all pairs
    got = qp.transpose(-1, -2) @ kp
    err = float((got - ref).abs().max())
    print(f"d={d} ridge={ridge}: max |q'.k' - q.k| = {err:.3e} (|q.k| up to {float(ref.abs().max()):.1f})")
    assert err < 1e-9


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_queries_white_without_ridge(d):
    Q, C, m = problem(d)
    t = fitted(d, 0.0)
    torch.testing.assert_close(t.T_inv.transpose(-1, -2) @ Q @ t.T_inv, eye(d), atol=1e-9, rtol=0)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_queries_white_for_the_ridged_metric(d):
    ridge = 0.3
    Q, C, m = problem(d)
    t = fitted(d, ridge)
    tr = torch.diagonal(Q, dim1=-2, dim2=-1).sum(-1)
    Q_r = Q + (ridge * tr / d)[:, None, None] * torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(t.T_inv.transpose(-1, -2) @ Q_r @ t.T_inv, eye(d), atol=1e-9, rtol=0)


@pytest.mark.parametrize("ridge", RIDGES)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_keys_decorrelated_with_descending_variances(d, ridge):
    Q, C, m = problem(d)
    t = fitted(d, ridge)
    KC = t.T @ C @ t.T.transpose(-1, -2)
    torch.testing.assert_close(KC, torch.diag_embed(t.mu), atol=1e-9, rtol=0)
    assert bool((t.mu[:, :-1] >= t.mu[:, 1:]).all())
    assert bool((t.mu > 0).all())
    torch.testing.assert_close(t.mean, torch.einsum("hij,hj->hi", t.T, m), atol=1e-12, rtol=0)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_mu_are_generalized_eigenvalues(d):
    """mu solve det(C - mu Q^-1) = 0: the eigenvalues of Q C, here via the Cholesky factor
    Q = L L^T (Q C is similar to L^T C L)."""
    Q, C, m = problem(d)
    t = fitted(d, 0.0)
    L = torch.linalg.cholesky(Q)
    ref = torch.linalg.eigvalsh(L.transpose(-1, -2) @ C @ L).flip(-1)
    torch.testing.assert_close(t.mu, ref, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_without_whitening_is_pca_rotation(d):
    Q, C, m = problem(d)
    t = fitted(d, 0.0, whiten=False)
    torch.testing.assert_close(t.T @ t.T.transpose(-1, -2), eye(d), atol=1e-10, rtol=0)
    torch.testing.assert_close(t.T @ C @ t.T.transpose(-1, -2), torch.diag_embed(t.mu), atol=1e-10, rtol=0)
    torch.testing.assert_close(t.mu, torch.linalg.eigvalsh(C).flip(-1), atol=1e-10, rtol=0)


@pytest.mark.parametrize("ridge", RIDGES)
@pytest.mark.parametrize("d", HEAD_DIMS)
def test_sqrt_and_inv_sqrt(d, ridge):
    A = random_spd(KV_HEADS, d, 7)
    sq, isq = sqrt_and_inv_sqrt(A, ridge)
    tr = torch.diagonal(A, dim1=-2, dim2=-1).sum(-1)
    A_r = A + (ridge * tr / d)[:, None, None] * torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(sq @ sq, A_r, atol=1e-10, rtol=0)
    torch.testing.assert_close(sq @ isq, eye(d), atol=1e-9, rtol=0)
    torch.testing.assert_close(isq @ sq, eye(d), atol=1e-9, rtol=0)
    torch.testing.assert_close(isq @ A_r @ isq, eye(d), atol=1e-9, rtol=0)
    torch.testing.assert_close(sq, sq.transpose(-1, -2), atol=1e-12, rtol=0)
    assert bool((torch.linalg.eigvalsh(sq) > 0).all())  # the principal (PSD) root


def test_sqrt_symmetrizes_a_float32_input():
    A = random_spd(1, 16, 3).float()
    A_asym = A + 1e-3 * torch.triu(torch.ones(16, 16))  # symmetric part is A + 5e-4 (J + I)
    sq, _ = sqrt_and_inv_sqrt(A_asym, 0.0)
    sym = 0.5 * (A_asym + A_asym.transpose(-1, -2)).double()
    assert sq.dtype == torch.float64
    torch.testing.assert_close(sq @ sq, sym, atol=1e-10, rtol=0)
