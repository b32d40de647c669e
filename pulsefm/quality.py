"""Signal-quality checks and heart-rate estimation, with reasons a person can read.

Checks on the raw samples of a segment (before any filtering):
  ``nonfinite``      NaN or +-inf present
  ``flat_line``      a channel is constant for >= 25 % of the segment
  ``clipping``       >= 1 % of a channel's samples sit in plateaus (>= 50 ms) at its min or max value

Checks on the filtered signal at the canonical rate (channel 0):
  ``implausible_heart_rate``  no beats found, or median-RR heart rate outside [30, 220] bpm
  ``low_sqi``        neurokit2 template-matching quality below the modality's threshold
                     (ECG 0.6, PPG 0.5: chosen on the real recordings listed in docs/data.md;
                     the MIT-BIH/ecg-noise-detector noisy file scores 0.44, clean files >= 0.72)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from pulsefm.records import Modality

FLAT_FRACTION = 0.25
CLIP_FRACTION = 0.01
CLIP_PLATEAU_S = 0.05
HR_RANGE_BPM = (30.0, 220.0)
SQI_THRESHOLD = {Modality.ECG: 0.6, Modality.PPG: 0.5}

NONFINITE = "nonfinite"
FLAT_LINE = "flat_line"
CLIPPING = "clipping"
IMPLAUSIBLE_HR = "implausible_heart_rate"
LOW_SQI = "low_sqi"
REASONS = (NONFINITE, FLAT_LINE, CLIPPING, IMPLAUSIBLE_HR, LOW_SQI)


@dataclass(frozen=True)
class Quality:
    reasons: tuple[str, ...]
    heart_rate_bpm: float  # NaN when not estimated
    sqi: float  # NaN when not estimated

    @property
    def ok(self) -> bool:
        return not self.reasons


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs of True along each row of a 2-D boolean array: each run's row and length."""
    width = mask.shape[1] + 2
    padded = np.zeros((mask.shape[0], width), dtype=np.int8)  # a False at both ends of each row
    padded[:, 1:-1] = mask
    edges = np.flatnonzero(np.diff(padded.ravel()))  # a run's start, then its end, row by row
    return edges[::2] // width, edges[1::2] - edges[::2]


def _longest_runs(mask: np.ndarray) -> np.ndarray:
    """The longest run of True in each row (0 for a row without one)."""
    rows, lengths = _runs(mask)
    longest = np.zeros(mask.shape[0], dtype=np.int64)
    np.maximum.at(longest, rows, lengths)
    return longest


def _plateau_fractions(at_extreme: np.ndarray, min_len: int) -> np.ndarray:
    """Per row, the fraction of samples inside runs of >= min_len consecutive True."""
    rows, lengths = _runs(at_extreme)
    inside = np.bincount(rows, weights=np.where(lengths >= min_len, lengths, 0), minlength=len(at_extreme))
    return inside / at_extreme.shape[1]


def raw_checks(x: np.ndarray, fs: float) -> list[str]:
    """Checks on raw samples (channels, samples): non-finite values, flat line, clipping.

    All channels at once, and runs are measured only where a count allows one long enough (a row
    with fewer True than a run needs cannot hold that run): these checks run for every window on
    the gateway's request path, where each numpy call holds the GIL."""
    reasons: list[str] = []
    if not np.all(np.isfinite(x)):
        reasons.append(NONFINITE)
        x = np.where(np.isfinite(x), x, 0.0)
    n = x.shape[-1]
    min_plateau = max(3, round(CLIP_PLATEAU_S * fs))
    hi, lo = x.max(axis=-1, keepdims=True), x.min(axis=-1, keepdims=True)
    flat = hi[:, 0] - lo[:, 0] == 0
    same = np.diff(x, axis=-1) == 0
    if (same.sum(axis=-1) + 1 >= FLAT_FRACTION * n).any():
        flat |= _longest_runs(same) + 1 >= FLAT_FRACTION * n
    clipped = np.zeros(len(x))
    for at_extreme in (x == hi, x == lo):
        if (at_extreme.sum(axis=-1) >= min_plateau).any():
            clipped = clipped + _plateau_fractions(at_extreme, min_plateau)
    if flat.any():
        reasons.append(FLAT_LINE)
    if ((clipped >= CLIP_FRACTION) & ~flat).any():  # a flat channel is not also counted as clipped
        reasons.append(CLIPPING)
    return reasons


def beat_indices(x: np.ndarray, fs: float, modality: Modality) -> np.ndarray:
    """Sample indices of beats (R peaks / systolic peaks) in a filtered 1-D signal (neurokit2)."""
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if modality == Modality.ECG:
                _, info = nk.ecg_peaks(x, sampling_rate=round(fs))
                return np.asarray(info["ECG_R_Peaks"], dtype=np.int64)
            _, info = nk.ppg_peaks(x, sampling_rate=round(fs))
            return np.asarray(info["PPG_Peaks"], dtype=np.int64)
        except (ValueError, IndexError, ZeroDivisionError):
            return np.empty(0, dtype=np.int64)


def heart_rate(x: np.ndarray, fs: float, modality: Modality) -> float:
    """Median-RR heart rate (bpm) of a filtered 1-D signal; NaN if fewer than 3 beats."""
    beats = beat_indices(x, fs, modality)
    if beats.size < 3:
        return float("nan")
    return float(60.0 / np.median(np.diff(beats) / fs))


def sqi(x: np.ndarray, fs: float, modality: Modality) -> float:
    """Mean neurokit2 template-matching quality in [-1, 1] (1 = every beat like the average beat)."""
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn = nk.ecg_quality if modality == Modality.ECG else nk.ppg_quality
            q = fn(x, sampling_rate=round(fs), method="templatematch")
            return float(np.nanmean(q))
        except (ValueError, IndexError, ZeroDivisionError):
            return float("nan")


def check_segment(
    raw: np.ndarray, fs_raw: float, filtered: np.ndarray, fs: float, modality: Modality
) -> Quality:
    """All checks for one segment: raw samples (C, T_raw) and its filtered, resampled version (C, W)."""
    reasons = raw_checks(raw, fs_raw)
    hr = q = float("nan")
    if FLAT_LINE not in reasons:
        hr = heart_rate(filtered[0], fs, modality)
        if not (HR_RANGE_BPM[0] <= hr <= HR_RANGE_BPM[1]):  # NaN fails too
            reasons.append(IMPLAUSIBLE_HR)
        else:
            q = sqi(filtered[0], fs, modality)
            if not q >= SQI_THRESHOLD[modality]:
                reasons.append(LOW_SQI)
    return Quality(tuple(reasons), hr, q)
