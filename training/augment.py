"""Batched, seeded augmentations for (B, C, T) tensors.

Each augmentation is a small callable ``aug(x, g) -> x`` that draws everything it needs from the
given ``torch.Generator`` and applies itself to a random subset of the batch (probability ``p``
per sample) without a Python loop over samples. Presets follow docs/recipe.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from scipy.interpolate import CubicSpline


def _chosen(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """(B, 1, 1) boolean mask of the samples an augmentation applies to."""
    return (torch.rand(x.shape[0], generator=g, device=g.device) < p).to(x.device)[:, None, None]


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)


@lru_cache(maxsize=32)
def spline_basis(n_knots: int, length: int) -> torch.Tensor:
    """(n_knots + 2, length) natural-cubic-spline basis: curve = knot_values @ basis.

    Knots sit at equal spacing including both ends, so a curve through K+2 values is a matrix
    product, batched for free.
    """
    xk = np.linspace(0, length - 1, n_knots + 2)
    basis = CubicSpline(xk, np.eye(n_knots + 2), axis=0, bc_type="natural")(np.arange(length))
    return torch.from_numpy(basis.T.astype(np.float32))


def random_curves(n: int, length: int, n_knots: int, sigma: float, g: torch.Generator) -> torch.Tensor:
    """(n, length) smooth random curves around 1 (cubic spline through N(1, sigma) knots)."""
    knots = 1.0 + sigma * torch.randn(n, n_knots + 2, generator=g, device=g.device)
    return knots.cpu() @ spline_basis(n_knots, length)


@dataclass(frozen=True)
class CutOut:
    """Zero a random contiguous span of `min_frac`..`max_frac` of the length (all channels)."""

    p: float
    min_frac: float = 0.3
    max_frac: float = 0.5

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, t = x.shape
        span = (_uniform(b, self.min_frac, self.max_frac, g) * t).long().cpu()
        start = (torch.rand(b, generator=g, device=g.device).cpu() * (t - span + 1)).long()
        pos = torch.arange(t)[None, :]
        inside = ((pos >= start[:, None]) & (pos < (start + span)[:, None]))[:, None, :].to(x.device)
        return torch.where(inside & _chosen(x, self.p, g), torch.zeros((), dtype=x.dtype, device=x.device), x)


@dataclass(frozen=True)
class MagnitudeWarp:
    """Multiply by a smooth random curve (cubic spline through `knots` N(1, sigma) values)."""

    p: float
    sigma: float = 0.2
    knots: int = 5

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        curve = random_curves(x.shape[0], x.shape[-1], self.knots, self.sigma, g).to(x.device, x.dtype)
        return torch.where(_chosen(x, self.p, g), x * curve[:, None, :], x)


@dataclass(frozen=True)
class TimeWarp:
    """Resample along time with a smooth random speed curve (monotone warp, same end points)."""

    p: float
    sigma: float = 0.1
    knots: int = 5

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, c, t = x.shape
        speed = random_curves(b, t, self.knots, self.sigma, g).clamp_min(0.1)  # (B, T)
        pos = torch.cumsum(speed, dim=1)
        pos = (pos - pos[:, :1]) / (pos[:, -1:] - pos[:, :1]) * (t - 1)  # monotone, 0 .. T-1
        lo = pos.floor().long().clamp(0, t - 2)
        frac = (pos - lo).to(x.device, x.dtype)[:, None, :]
        lo = lo.to(x.device)[:, None, :].expand(b, c, t)
        warped = torch.gather(x, 2, lo) * (1 - frac) + torch.gather(x, 2, lo + 1) * frac
        return torch.where(_chosen(x, self.p, g), warped, x)


@dataclass(frozen=True)
class GaussianNoise:
    """Add N(0, sigma^2) noise, sigma ~ U(min_sigma, max_sigma) per sample (inputs are z-scored)."""

    p: float
    min_sigma: float = 0.05
    max_sigma: float = 0.1

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        sigma = _uniform(x.shape[0], self.min_sigma, self.max_sigma, g).to(x.device, x.dtype)[:, None, None]
        noise = torch.randn(x.shape, generator=g, device=g.device).to(x.device, x.dtype)
        return torch.where(_chosen(x, self.p, g), x + sigma * noise, x)


@dataclass(frozen=True)
class ChannelPermute:
    """Shuffle the channel order, a different permutation per sample (PPG only)."""

    p: float

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, c, t = x.shape
        perm = torch.argsort(torch.rand(b, c, generator=g, device=g.device), dim=1).to(x.device)
        shuffled = torch.gather(x, 1, perm[:, :, None].expand(b, c, t))
        return torch.where(_chosen(x, self.p, g), shuffled, x)


Augmentation = CutOut | MagnitudeWarp | TimeWarp | GaussianNoise | ChannelPermute


@dataclass(frozen=True)
class Compose:
    augmentations: tuple[Augmentation, ...]

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for aug in self.augmentations:
            x = aug(x, g)
        return x

    def without(self, *kinds: type) -> Compose:
        """The same pipeline minus the augmentations of the given classes."""
        missing = [k.__name__ for k in kinds if not any(isinstance(a, k) for a in self.augmentations)]
        if missing:
            raise ValueError(f"not in this pipeline: {', '.join(missing)}")
        return Compose(tuple(a for a in self.augmentations if not isinstance(a, kinds)))


PPG_AUGMENT = Compose(
    (CutOut(0.4), MagnitudeWarp(0.25), TimeWarp(0.15), GaussianNoise(0.25), ChannelPermute(0.25))
)
# ECG probabilities are marked "unverified" in the recipe
ECG_AUGMENT = Compose((CutOut(0.8), MagnitudeWarp(0.5), TimeWarp(0.3), GaussianNoise(0.5)))
NO_AUGMENT = Compose(())
AUGMENT_PRESETS = {
    "ppg": PPG_AUGMENT,
    "ecg": ECG_AUGMENT,
    "none": NO_AUGMENT,
    # Departures from the recipe, each removing one invariance that erases a participant trait.
    # Added noise (sigma 0.05-0.1 of a z-scored signal) is larger than the sensor noise whose
    # level tracks perfusion, and so BMI; a +-10 % time warp is as large as the sex difference
    # in QRS width and QT. Positives then differ by more than the trait, and InfoNCE learns to
    # ignore it. README "Results" compares each with the recipe.
    "ppg-no-noise": PPG_AUGMENT.without(GaussianNoise),
    "ecg-no-timewarp": ECG_AUGMENT.without(TimeWarp),
    # a +-20 % magnitude warp moves each beat's z-scored R height by more than the sex difference
    # in R amplitude (+8 %), the one sex cue that random weights read better (round 4)
    "ecg-no-magwarp": ECG_AUGMENT.without(MagnitudeWarp),
}
