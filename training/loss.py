"""Contrastive objective: symmetric InfoNCE with same-participant masking, plus KoLeo.

Pure functions on (B, D) tensors, and a thin module that checks shapes (lightly-style).
Positives are row-aligned (a[i] <-> b[i]). `groups` (B,) holds a positive-group id per row
(the participant); off-diagonal pairs of the same group are removed from the negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def info_nce(
    q: torch.Tensor, k: torch.Tensor, tau: float, groups: torch.Tensor | None = None, reduction: str = "mean"
) -> torch.Tensor:
    """One direction: row i of `q` must pick row i of `k` among all rows of `k`.  q, k: (B, D).

    reduction 'mean' -> scalar, 'none' -> (B,) per-anchor losses."""
    q = F.normalize(q, dim=1)
    k = F.normalize(k, dim=1)
    logits = q @ k.T / tau  # (B, B)
    if groups is not None:
        same = groups[:, None] == groups[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(q.shape[0], device=q.device)
    return F.cross_entropy(logits, target, reduction=reduction)


def symmetric_info_nce(
    a: torch.Tensor, b: torch.Tensor, tau: float, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """0.5 (InfoNCE(a -> b) + InfoNCE(b -> a))."""
    return 0.5 * (info_nce(a, b, tau, groups) + info_nce(b, a, tau, groups))


def koleo(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko regulariser: -mean_i log(min_{j != i} ||z_i - z_j||) on normalised z (B, D)."""
    z = F.normalize(z, dim=1)
    dist = torch.cdist(z, z)  # (B, B)
    dist = dist + torch.eye(z.shape[0], device=z.device, dtype=z.dtype) * 1e9  # exclude self
    return -torch.log(dist.min(dim=1).values + eps).mean()


class ContrastiveLoss(nn.Module):
    """InfoNCE(student view 1 -> teacher view 2) and the swap, + weight * KoLeo(student views).

    Without a teacher (plain SimCLR) pass the student's own projections as `t1`, `t2`.
    """

    def __init__(self, temperature: float = 0.04, koleo_weight: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if koleo_weight < 0:
            raise ValueError(f"koleo_weight must be >= 0, got {koleo_weight}")
        self.temperature = temperature
        self.koleo_weight = koleo_weight

    def forward(
        self,
        s1: torch.Tensor,
        s2: torch.Tensor,
        t1: torch.Tensor,
        t2: torch.Tensor,
        groups: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        if not (s1.shape == s2.shape == t1.shape == t2.shape) or s1.ndim != 2:
            raise ValueError(
                f"expected four (B, D) tensors of one shape, got {[tuple(t.shape) for t in (s1, s2, t1, t2)]}"
            )
        if groups is not None and groups.shape != (s1.shape[0],):
            raise ValueError(f"groups must be ({s1.shape[0]},), got {tuple(groups.shape)}")
        nce = 0.5 * (info_nce(s1, t2, self.temperature, groups) + info_nce(s2, t1, self.temperature, groups))
        reg = 0.5 * (koleo(s1) + koleo(s2))
        return {"loss": nce + self.koleo_weight * reg, "info_nce": nce, "koleo": reg}
