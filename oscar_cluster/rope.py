"""RoPE helpers and the closed-form position average of second moments (DESIGN.md section 3).

Layout is transformers' "rotate_half": channel j pairs with j + d/2 and turns at frequency
`inv_freq[j]`, so position p applies R(p * inv_freq[j]) = [[cos, -sin], [sin, cos]] to
(x_j, x_{j+d/2}).

For a pre-RoPE second moment X (d x d), the post-RoPE moment averaged over positions p in [0, L)
is E_p[R_p X R_p^T]. Per pair of planes (a, b) the 2x2 block splits into a rotation-like part
(commutes with rotations: turns at theta_a - theta_b) and a reflection-like part (turns at
-(theta_a + theta_b)); the mean of R(p w) over p has a closed form (a geometric series), so the
average needs no sampling.
"""

from __future__ import annotations

import torch

__all__ = ["apply_rope", "unapply_rope", "mean_rotation", "rope_average_moment", "rope_average_mean"]


def _angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    return positions.to(torch.float64)[:, None] * inv_freq.to(positions.device, torch.float64)[None, :]  # [T, d/2]


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """x: [T, heads, d] -> rotated by position (sign=-1 undoes it); angles in float64, the
    rotation in x's dtype."""
    h = x.shape[-1] // 2
    ang = sign * _angles(positions, inv_freq)
    cos, sin = ang.cos()[:, None, :].to(x.dtype), ang.sin()[:, None, :].to(x.dtype)
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def unapply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Inverse of `apply_rope`: post-RoPE [T, heads, d] -> pre-RoPE."""
    return apply_rope(x, positions, inv_freq, sign=-1.0)


def mean_rotation(omega: torch.Tensor, context_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cos(p w), mean sin(p w)) over p = 0..L-1, elementwise in omega (float64)."""
    w = omega.to(torch.float64)
    L = float(context_len)
    half = 0.5 * w
    s_half = torch.sin(half)
    small = s_half.abs() < 1e-12
    ratio = torch.sin(L * half) / (L * torch.where(small, torch.ones_like(s_half), s_half))
    phase = (L - 1) * half
    # w a multiple of 2 pi: every term is 1
    return (torch.where(small, torch.ones_like(w), ratio * torch.cos(phase)),
            torch.where(small, torch.zeros_like(w), ratio * torch.sin(phase)))


def rope_average_moment(X: torch.Tensor, inv_freq: torch.Tensor, context_len: int) -> torch.Tensor:
    """X: [..., d, d] pre-RoPE second moment -> E_p[R_p X R_p^T], p uniform in [0, context_len)."""
    d = X.shape[-1]
    h = d // 2
    X = X.to(torch.float64)
    x11, x12 = X[..., :h, :h], X[..., :h, h:]
    x21, x22 = X[..., h:, :h], X[..., h:, h:]
    alpha, beta = 0.5 * (x11 + x22), 0.5 * (x21 - x12)  # alpha I + beta J (J = [[0,-1],[1,0]])
    gamma, delta = 0.5 * (x11 - x22), 0.5 * (x12 + x21)  # gamma K + delta L (K = diag(1,-1), L = [[0,1],[1,0]])
    th = inv_freq.to(torch.float64)
    cd, sd = mean_rotation(th[:, None] - th[None, :], context_len)  # E R(p(ta - tb))
    cs, ss = mean_rotation(-(th[:, None] + th[None, :]), context_len)  # E R(-p(ta + tb))
    # (alpha I + beta J) [[c,-s],[s,c]] = [[a c - b s, -(a s + b c)], [a s + b c, a c - b s]]
    r11 = alpha * cd - beta * sd
    r21 = alpha * sd + beta * cd
    # (gamma K + delta L) [[c,-s],[s,c]] = [[g c + e s, -g s + e c], [e c - g s, -e s - g c]]
    f11 = gamma * cs + delta * ss
    f12 = -gamma * ss + delta * cs
    out = torch.empty_like(X)
    out[..., :h, :h] = r11 + f11
    out[..., :h, h:] = -r21 + f12
    out[..., h:, :h] = r21 + f12
    out[..., h:, h:] = r11 - f11
    return out


def rope_average_mean(m: torch.Tensor, inv_freq: torch.Tensor, context_len: int) -> torch.Tensor:
    """m: [..., d] pre-RoPE mean -> E_p[R_p m]."""
    h = m.shape[-1] // 2
    c, s = mean_rotation(inv_freq, context_len)
    m1, m2 = m[..., :h].double(), m[..., h:].double()
    return torch.cat([c * m1 - s * m2, s * m1 + c * m2], dim=-1)
