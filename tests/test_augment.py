from __future__ import annotations

import pytest
import torch

from training.augment import (
    AUGMENT_PRESETS,
    ECG_AUGMENT,
    PPG_AUGMENT,
    ChannelPermute,
    CutOut,
    GaussianNoise,
    MagnitudeWarp,
    TimeWarp,
    spline_basis,
)
from training.config import PRESETS

X = torch.randn(64, 4, 3840, generator=torch.Generator().manual_seed(0))


def g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    "aug", [CutOut(1.0), MagnitudeWarp(1.0), TimeWarp(1.0), GaussianNoise(1.0), ChannelPermute(1.0)]
)
def test_seeded_shape_preserving_and_probability(aug) -> None:
    y1, y2 = aug(X, g(1)), aug(X, g(1))
    assert y1.shape == X.shape and y1.dtype == X.dtype
    torch.testing.assert_close(y1, y2)  # same generator state -> same result
    assert not torch.equal(y1, aug(X, g(2)))
    off = type(aug)(**{**aug.__dict__, "p": 0.0})
    torch.testing.assert_close(off(X, g(1)), X)


def test_probability_is_per_sample() -> None:
    y = GaussianNoise(0.5)(X, g(3))
    changed = (y != X).flatten(1).any(1).float().mean().item()
    assert 0.3 < changed < 0.7


def test_cutout_zeroes_a_contiguous_span_of_30_to_50_percent() -> None:
    y = CutOut(1.0)(X, g(4))
    zero = (y == 0).all(dim=1)  # (B, T)
    frac = zero.float().mean(1)
    assert ((frac >= 0.29) & (frac <= 0.51)).all()
    # contiguous: exactly one rising edge per sample
    edges = (zero[:, 1:].int() - zero[:, :-1].int() == 1).sum(1) + zero[:, 0].int()
    assert (edges == 1).all()


def test_magnitude_warp_is_a_smooth_multiplier() -> None:
    ones = torch.ones(8, 1, 1000)
    curve = MagnitudeWarp(1.0, sigma=0.2)(ones, g(5))[:, 0]
    assert (curve - 1).abs().mean() < 0.5
    assert curve.diff(dim=1).abs().max() < 0.01  # smooth: no jumps between samples


def test_time_warp_keeps_end_points_and_is_identity_at_zero_sigma() -> None:
    ramp = torch.linspace(0, 1, 3840).expand(4, 2, 3840).contiguous()
    y = TimeWarp(1.0, sigma=0.1)(ramp, g(6))
    torch.testing.assert_close(y[..., 0], ramp[..., 0])
    torch.testing.assert_close(y[..., -1], ramp[..., -1], atol=1e-4, rtol=0)
    assert (y.diff(dim=-1) >= -1e-6).all()  # monotone warp of a ramp stays monotone
    torch.testing.assert_close(TimeWarp(1.0, sigma=0.0)(ramp, g(6)), ramp, atol=1e-5, rtol=0)


def test_channel_permute_permutes_channels() -> None:
    y = ChannelPermute(1.0)(X, g(7))
    assert torch.equal(y.sort(dim=1).values, X.sort(dim=1).values)


def test_spline_basis_interpolates_knots() -> None:
    b = spline_basis(5, 601)  # knots at 0, 100, ..., 600
    assert b.shape == (7, 601)
    torch.testing.assert_close(b[:, ::100], torch.eye(7), atol=1e-5, rtol=0)


def test_presets_match_recipe() -> None:
    probs = {type(a).__name__: a.p for a in PPG_AUGMENT.augmentations}
    assert probs == {
        "CutOut": 0.4,
        "MagnitudeWarp": 0.25,
        "TimeWarp": 0.15,
        "GaussianNoise": 0.25,
        "ChannelPermute": 0.25,
    }
    assert "ChannelPermute" not in {type(a).__name__ for a in ECG_AUGMENT.augmentations}
    assert ECG_AUGMENT(torch.randn(4, 1, 3840), g()).shape == (4, 1, 3840)


def names(preset: str) -> list[str]:
    return [type(a).__name__ for a in AUGMENT_PRESETS[preset].augmentations]


def test_departures_from_the_recipe_drop_exactly_one_augmentation() -> None:
    assert names("ppg-no-noise") == ["CutOut", "MagnitudeWarp", "TimeWarp", "ChannelPermute"]
    assert names("ecg-no-timewarp") == ["CutOut", "MagnitudeWarp", "GaussianNoise"]
    assert names("ecg-no-magwarp") == ["CutOut", "TimeWarp", "GaussianNoise"]
    # the rest keep the recipe's probabilities
    assert [a.p for a in AUGMENT_PRESETS["ppg-no-noise"].augmentations] == [0.4, 0.25, 0.15, 0.25]
    with pytest.raises(ValueError, match="ChannelPermute"):
        ECG_AUGMENT.without(ChannelPermute)


def test_without_noise_a_clean_signal_keeps_its_noise_floor() -> None:
    """What ppg-no-noise is for: no view gets a high-frequency floor the input did not have."""
    t = torch.arange(3840) / 64.0
    clean = torch.sin(2 * torch.pi * 1.2 * t).repeat(512, 4, 1)

    def noised_fraction(preset: str) -> float:
        view = AUGMENT_PRESETS[preset](clean, g())
        floor = torch.diff(view, n=2, dim=-1).std(dim=-1).amax(dim=1)  # a slow sine's is ~0.02
        return (floor > 0.1).float().mean().item()

    assert noised_fraction("ppg") == pytest.approx(0.25, abs=0.06)
    assert noised_fraction("ppg-no-noise") == 0.0


def test_config_rejects_unknown_augment_and_positives() -> None:
    with pytest.raises(ValueError, match="ppg-no-noise"):
        PRESETS["tiny"].replace(augment="ppg-quiet")
    with pytest.raises(ValueError, match="participant or segment"):
        PRESETS["tiny"].replace(positives="recording")
    assert PRESETS["tiny"].replace(augment="ppg-no-noise").augment == "ppg-no-noise"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the lent GPU machine)")
@pytest.mark.parametrize("preset", ["ppg", "ecg", "ppg-no-noise"])
def test_augmenting_on_the_gpu_draws_the_same_augmentations(preset: str) -> None:
    # the training loader augments where the model runs; the random draws stay on a CPU generator
    aug = AUGMENT_PRESETS[preset]
    x = X[:, :1] if preset == "ecg" else X
    on_gpu = aug(x.cuda(), g(5)).cpu()
    torch.testing.assert_close(on_gpu, aug(x, g(5)), rtol=1e-4, atol=1e-4)
