from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

import numpy as np
import pytest
import scipy.signal as sps
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsefm.pipeline import process_array
from pulsefm.preprocess import ECG_SPEC, PPG_SPEC, bandpass, match_channels, resample, segment, zscore


def _power_at(x: np.ndarray, fs: float, f: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / fs)
    return float(spec[np.argmin(np.abs(freqs - f))])


def test_bandpass_keeps_band_and_removes_outside() -> None:
    fs = 256.0
    t = np.arange(int(60 * fs)) / fs
    x = np.sin(2 * np.pi * 1.5 * t) + np.sin(2 * np.pi * 0.05 * t) + np.sin(2 * np.pi * 30 * t)
    y = bandpass(x, fs, PPG_SPEC.band)
    assert _power_at(y, fs, 1.5) / _power_at(x, fs, 1.5) > 0.9
    assert _power_at(y, fs, 30) / _power_at(x, fs, 30) < 1e-4
    assert _power_at(y, fs, 0.05) / _power_at(x, fs, 0.05) < 1e-2


@pytest.mark.parametrize(("fs_in", "fs_out"), [(500.0, 128.0), (360.0, 128.0), (100.0, 64.0), (25.0, 64.0)])
def test_resample_length_and_frequency(fs_in: float, fs_out: float) -> None:
    t = np.arange(int(30 * fs_in)) / fs_in
    y = resample(np.sin(2 * np.pi * 2.0 * t), fs_in, fs_out)
    assert abs(y.size - 30 * fs_out) <= 1
    freqs = np.fft.rfftfreq(y.size, 1 / fs_out)
    assert freqs[np.argmax(np.abs(np.fft.rfft(y)))] == pytest.approx(2.0, abs=0.05)


def test_segment_shapes_and_overlap() -> None:
    x = np.arange(2 * 10000, dtype=float).reshape(2, 10000)
    assert segment(x, 3840).shape == (2, 2, 3840)
    s = segment(x, 3840, overlap=0.5)
    assert s.shape == (4, 2, 3840)
    np.testing.assert_array_equal(s[1, :, 0], x[:, 1920])
    assert segment(x[:, :100], 3840).shape == (0, 2, 3840)
    with pytest.raises(ValueError, match="overlap"):
        segment(x, 3840, overlap=1.0)


def test_zscore_per_channel() -> None:
    rng = np.random.default_rng(0)
    z = zscore(rng.normal(5, 3, size=(3, 4, 1000)))
    np.testing.assert_allclose(z.mean(-1), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(-1), 1, atol=1e-9)
    assert np.all(np.isfinite(zscore(np.ones((1, 1, 10)))))


def test_match_channels_maps_one_to_four_channels_cyclically() -> None:
    x = np.arange(3)[:, None] * np.ones((3, 5))  # channel c holds the value c
    assert match_channels(x[:1], 4)[:, 0].tolist() == [0, 0, 0, 0]
    assert match_channels(x[:2], 4)[:, 0].tolist() == [0, 1, 0, 1]  # e.g. green, infrared
    assert match_channels(x, 4)[:, 0].tolist() == [0, 1, 2, 0]
    assert match_channels(np.stack([x[:2]] * 3), 4).shape == (3, 4, 5)  # a batch (n, C, T)
    with pytest.raises(ValueError, match="expected 1 to 4 channel"):
        match_channels(np.zeros((5, 5)), 4)


def test_spec_version_is_stable_and_tracks_fields() -> None:
    assert PPG_SPEC.version == dataclasses.replace(PPG_SPEC).version
    assert PPG_SPEC.version.startswith("ppg-r1-")
    assert dataclasses.replace(PPG_SPEC, band=(0.4, 8.0)).version != PPG_SPEC.version
    assert PPG_SPEC.window / PPG_SPEC.fs == 60.0 and ECG_SPEC.window / ECG_SPEC.fs == 30.0


def test_process_array_model_ready_shapes() -> None:
    from tests.conftest import synthetic_ecg

    out = process_array(synthetic_ecg(fs=512, seconds=65)[None], 512.0, ECG_SPEC)
    assert out.data.shape == (2, 1, 3840) and out.data.dtype == np.float32
    assert out.ok.all()
    np.testing.assert_allclose(out.start_s, [0.0, 30.0])
    with pytest.raises(ValueError, match="outside the supported range"):
        process_array(np.zeros((1, 1000)), 8.0, ECG_SPEC)


@settings(max_examples=150, deadline=None)
@given(
    shape=st.sampled_from([(20,), (40,), (3, 200), (2, 4, 640), (1, 1, 3840), (5, 1, 90)]),
    fs=st.sampled_from([25.0, 64.0, 100.0, 128.0, 250.0, 360.0, 500.0]),
    band=st.sampled_from([PPG_SPEC.band, ECG_SPEC.band, (1.0, 3.0)]),
    order=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_bandpass_is_scipys_sosfiltfilt_bit_for_bit(
    shape: tuple[int, ...], fs: float, band: tuple[float, float], order: int, seed: int
) -> None:
    """bandpass reuses each filter's initial conditions instead of solving for them per call."""
    x = np.random.default_rng(seed).normal(size=shape) * 100
    low, high = band[0], min(band[1], 0.45 * fs)
    sos = sps.butter(order, [low, high], btype="bandpass", fs=fs, output="sos")
    try:
        want = sps.sosfiltfilt(sos, x, axis=-1)
    except ValueError as e:  # shorter than scipy's padding: the same error
        with pytest.raises(ValueError, match=re.escape(str(e))):
            bandpass(x, fs, band, order)
        return
    np.testing.assert_array_equal(bandpass(x, fs, band, order), want)


@settings(max_examples=60, deadline=None)
@given(
    fs_in=st.sampled_from(
        [25.0, 50.0, 64.00001, 128.00001, 100.0, 125.0, 200.0, 250.0, 256.0, 300.0, 360.0, 500.0, 1000.0]
    ),
    fs_out=st.sampled_from([PPG_SPEC.fs, ECG_SPEC.fs]),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_resample_is_scipys_resample_poly_bit_for_bit(
    fs_in: float, fs_out: float, dtype: type, seed: int
) -> None:
    """resample reuses each rate pair's anti-aliasing filter instead of designing it per call."""
    x: np.ndarray = np.random.default_rng(seed).normal(size=(2, 3, 1000)).astype(dtype)
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    want = sps.resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)
    np.testing.assert_array_equal(resample(x, fs_in, fs_out), want)
