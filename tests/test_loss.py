from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.loss import ContrastiveLoss, info_nce, koleo, symmetric_info_nce


def slow_info_nce(q, k, tau, groups=None):
    """Reference: explicit loops over anchors and candidates."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / tau)
        denom = 0.0
        for j in range(k.shape[0]):
            if j != i and groups is not None and groups[i] == groups[j]:
                continue
            denom += math.exp(float(q[i] @ k[j]) / tau)
        total += -math.log(pos / denom)
    return total / q.shape[0]


def slow_koleo(z):
    z = F.normalize(z, dim=1)
    out = 0.0
    for i in range(z.shape[0]):
        out += -math.log(min(float((z[i] - z[j]).norm()) for j in range(z.shape[0]) if j != i))
    return out / z.shape[0]


@pytest.fixture
def qk():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(12, 16, generator=gen, dtype=torch.float64), torch.randn(
        12, 16, generator=gen, dtype=torch.float64
    )


@pytest.mark.parametrize("tau", [0.04, 0.5])
def test_info_nce_matches_reference(qk, tau) -> None:
    q, k = qk
    groups = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 7])
    assert float(info_nce(q, k, tau)) == pytest.approx(slow_info_nce(q, k, tau), rel=1e-9)
    assert float(info_nce(q, k, tau, groups)) == pytest.approx(slow_info_nce(q, k, tau, groups), rel=1e-9)


def test_koleo_matches_reference(qk) -> None:
    assert float(koleo(qk[0])) == pytest.approx(slow_koleo(qk[0]), rel=1e-6)


def test_symmetry(qk) -> None:
    q, k = qk
    g = torch.arange(12) // 3
    torch.testing.assert_close(symmetric_info_nce(q, k, 0.1, g), symmetric_info_nce(k, q, 0.1, g))
    loss = ContrastiveLoss(0.1, 0.1)
    a = loss(q, k, q, k, g)["loss"]
    b = loss(k, q, k, q, g)["loss"]
    torch.testing.assert_close(a, b)


def test_masking_removes_same_participant_negatives(qk) -> None:
    q, k = qk
    torch.testing.assert_close(info_nce(q, k, 0.1, torch.arange(12)), info_nce(q, k, 0.1))  # nothing to mask
    groups = torch.tensor([0, 0, *range(1, 11)])
    # a same-participant candidate that looks exactly like row 0's query: a hard negative for
    # row 0 when unmasked, ignored when masked
    k2 = k.clone()
    k2[1] = q[0] * 3
    unmasked = info_nce(q, k2, 0.1, reduction="none")[0] - info_nce(q, k, 0.1, reduction="none")[0]
    masked = info_nce(q, k2, 0.1, groups, "none")[0] - info_nce(q, k, 0.1, groups, "none")[0]
    assert float(unmasked) > 0.1
    assert float(masked) == 0.0
    assert float(info_nce(q, k, 0.1, groups)) < float(info_nce(q, k, 0.1))  # fewer negatives, lower loss


def test_perfect_alignment_gives_low_loss() -> None:
    z = torch.eye(8, dtype=torch.float64)
    assert float(info_nce(z, z, 0.04)) < 1e-6
    assert float(info_nce(z, torch.roll(z, 1, 0), 0.04)) > 10


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveLoss(0.0)
    with pytest.raises(ValueError, match="koleo_weight"):
        ContrastiveLoss(0.1, -1)
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="four"):
        ContrastiveLoss()(z, z, z, torch.randn(3, 8), None)
    with pytest.raises(ValueError, match="groups"):
        ContrastiveLoss()(z, z, z, z, torch.arange(5))
