from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsefm.pipeline import process_array
from pulsefm.preprocess import ECG_SPEC
from pulsefm.quality import (
    CLIP_FRACTION,
    CLIP_PLATEAU_S,
    CLIPPING,
    FLAT_FRACTION,
    FLAT_LINE,
    IMPLAUSIBLE_HR,
    NONFINITE,
    raw_checks,
)
from tests.conftest import synthetic_ecg

FS = 500.0


def test_clean_synthetic_ecg_passes() -> None:
    out = process_array(synthetic_ecg(FS, 31)[None], FS, ECG_SPEC)
    assert [q.reasons for q in out.quality] == [()]
    assert abs(out.quality[0].heart_rate_bpm - 72) < 4


def test_nan_is_flagged_and_does_not_poison_other_segments() -> None:
    x = synthetic_ecg(FS, 61)
    x[100:150] = np.nan
    out = process_array(x[None], FS, ECG_SPEC)
    assert NONFINITE in out.quality[0].reasons
    assert out.quality[1].ok
    assert np.all(np.isfinite(out.data))


def test_flat_line_and_clipping() -> None:
    x = synthetic_ecg(FS, 31)
    flat = x.copy()
    flat[: int(12 * FS)] = flat[0]
    assert FLAT_LINE in raw_checks(flat[None], FS)
    clipped = np.clip(x, None, np.quantile(x, 0.9))  # saturates every R peak and T wave
    assert CLIPPING in raw_checks(clipped[None], FS)
    assert raw_checks(x[None], FS) == []


def test_implausible_heart_rate_on_noise() -> None:
    rng = np.random.default_rng(0)
    out = process_array(rng.normal(size=(1, int(31 * FS))), FS, ECG_SPEC)
    assert not out.quality[0].ok
    assert set(out.quality[0].reasons) & {IMPLAUSIBLE_HR, "low_sqi"}


def per_channel_raw_checks(x: np.ndarray, fs: float) -> list[str]:
    """The checks as their definition reads, one channel at a time (raw_checks does all at once)."""
    reasons = [NONFINITE] if not np.all(np.isfinite(x)) else []
    x = np.where(np.isfinite(x), x, 0.0)
    n, min_plateau = x.shape[-1], max(3, round(CLIP_PLATEAU_S * fs))

    def runs(mask: np.ndarray) -> list[int]:
        out, length = [], 0
        for v in [*mask.tolist(), False]:
            if v:
                length += 1
            elif length:
                out.append(length)
                length = 0
        return out

    flat = clip = False
    for ch in x:
        if ch.max() == ch.min() or max(runs(np.diff(ch) == 0), default=0) + 1 >= FLAT_FRACTION * n:
            flat = True
            continue
        at_plateaus = sum(
            sum(r for r in runs(ch == extreme) if r >= min_plateau) / n for extreme in (ch.max(), ch.min())
        )
        clip = clip or at_plateaus >= CLIP_FRACTION
    return reasons + [FLAT_LINE] * flat + [CLIPPING] * clip


@st.composite
def raw_windows(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    """Channels of few distinct levels (runs, plateaus at the extremes), held stretches, and now
    and then NaN or inf, in float32 or float64."""
    channels, n = draw(st.integers(1, 4)), draw(st.integers(2, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    levels = draw(st.integers(1, 6))
    x = rng.integers(0, levels, size=(channels, n)).astype(float) * draw(st.sampled_from([1.0, 0.1, 1e3]))
    for _ in range(draw(st.integers(0, 3))):  # a held stretch: a flat line or a plateau
        c, a = draw(st.integers(0, channels - 1)), draw(st.integers(0, n - 1))
        x[c, a : a + draw(st.integers(1, n))] = x[c, a]
    if draw(st.booleans()):
        x[draw(st.integers(0, channels - 1)), draw(st.integers(0, n - 1))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf])
        )
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return x.astype(dtype), draw(st.sampled_from([1.0, 25.0, 64.0, 100.0, 128.0, 250.0, 500.0]))


@settings(max_examples=300, deadline=None)
@given(raw_windows())
def test_raw_checks_match_their_per_channel_definition(case: tuple[np.ndarray, float]) -> None:
    x, fs = case
    assert raw_checks(x, fs) == per_channel_raw_checks(x, fs)
