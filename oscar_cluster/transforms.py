"""Query-whitened key transforms and W_o-metric value transforms (DESIGN.md section 3). Pure maths.

Keys: with Q = E[q q^T] (ridge-regularized) and key covariance C,
    T_k = U^T Q^(1/2),  U = eigenvectors of Q^(1/2) C Q^(1/2) (eigenvalues mu, descending),
so that q' = T_k^-T q is white, k' = T_k k has uncorrelated channels of variance mu, and
q'.k' = q.k exactly.
Values: with M = sum_g W_o,g^T W_o,g and value covariance C_v, T_v = U_v^T M^(1/2); the output
error of a value error e is e'^T e' with e' = T_v e.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["HeadTransform", "sqrt_and_inv_sqrt", "metric_whitened_transform"]


@dataclass
class HeadTransform:
    """One transform per KV head, float64.

    T: [H, d, d] forward (x' = T x); T_inv: [H, d, d]; mu: [H, d] variances of x' (descending);
    mean: [H, d] mean of x' (T times the mean of x)."""

    T: torch.Tensor
    T_inv: torch.Tensor
    mu: torch.Tensor
    mean: torch.Tensor


def sqrt_and_inv_sqrt(A: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric PSD A: [..., d, d] -> (A_r^(1/2), A_r^(-1/2)) with A_r = A + ridge * tr(A)/d * I."""
    d = A.shape[-1]
    A = 0.5 * (A + A.transpose(-1, -2)).double()
    tr = torch.diagonal(A, dim1=-2, dim2=-1).sum(-1).clamp_min(1e-30)
    A = A + (ridge * tr / d)[..., None, None] * torch.eye(d, dtype=A.dtype)
    w, V = torch.linalg.eigh(A)
    w = w.clamp_min(1e-12 * w.amax(-1, keepdim=True).clamp_min(1e-30))
    sq = (V * w.sqrt()[..., None, :]) @ V.transpose(-1, -2)
    isq = (V * w.rsqrt()[..., None, :]) @ V.transpose(-1, -2)
    return sq, isq


def metric_whitened_transform(metric: torch.Tensor, cov: torch.Tensor, mean: torch.Tensor, ridge: float,
                              whiten: bool = True) -> HeadTransform:
    """metric: [H, d, d] (Q for keys, M for values); cov: [H, d, d]; mean: [H, d].

    whiten=False drops the metric (T = U^T with U the eigenvectors of cov): a plain PCA rotation,
    for ablations."""
    H, d, _ = cov.shape
    if whiten:
        S, S_inv = sqrt_and_inv_sqrt(metric, ridge)
    else:
        S = S_inv = torch.eye(d, dtype=torch.float64).expand(H, d, d)
    A = S @ cov.double() @ S
    A = 0.5 * (A + A.transpose(-1, -2))
    mu, U = torch.linalg.eigh(A)
    mu, U = mu.flip(-1), U.flip(-1)  # descending
    T = U.transpose(-1, -2) @ S
    T_inv = S_inv @ U
    x_mean = torch.einsum("hij,hj->hi", T, mean.double())
    return HeadTransform(T=T, T_inv=T_inv, mu=mu.clamp_min(0.0), mean=x_mean)
