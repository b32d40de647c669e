from __future__ import annotations

import numpy as np

from pulsefm.pipeline import process_array
from pulsefm.preprocess import ECG_SPEC
from pulsefm.quality import CLIPPING, FLAT_LINE, IMPLAUSIBLE_HR, NONFINITE, raw_checks
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
