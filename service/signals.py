"""Validated raw segments -> model-ready segments, with the training code's preprocessing.

Soft flags (returned with the result): implausible heart rate, low signal quality
(`quality=full` only: they need beat detection, ~10 ms per segment). A channel with no signal
left in the model's band after filtering is a hard failure (the encoder would see a constant).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pulsefm.preprocess import Z_EPS, PreprocessSpec, filter_and_resample, match_channels, zscore
from pulsefm.quality import check_segment


def fit_length(x: np.ndarray, window: int) -> np.ndarray:
    """Crop or edge-pad the last axis to `window` (the duration check bounds the change to a few %)."""
    if x.shape[-1] >= window:
        return x[..., :window]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, window - x.shape[-1])], mode="edge")


@dataclass
class Prepared:
    data: np.ndarray  # (n, channels, window) float32, what the encoder takes
    flags: list[list[str]]
    heart_rate_bpm: list[float | None]
    sqi: list[float | None]
    flat: list[int]  # segments (indices into x) the encoder must not see: a channel flat in the model's band


def preprocess(x: np.ndarray, fs: float, spec: PreprocessSpec, full_quality: bool = False) -> Prepared:
    """The training pipeline's filter/resample/z-score (+ heart rate and SQI if asked).

    The same functions as `pulsefm.pipeline`, applied to the whole (n, C, T) batch at once (scipy
    filters along the last axis), which costs far fewer Python calls than a loop per segment.
    """
    x64 = match_channels(x.astype(np.float64), spec.channels)  # 1..C channels (validated before)
    filtered = fit_length(filter_and_resample(x64, fs, spec), spec.window)
    band_std = filtered.std(axis=-1)  # (n, C)
    flat = [int(i) for i in np.flatnonzero(((band_std <= Z_EPS) | ~np.isfinite(band_std)).any(axis=1))]
    flags: list[list[str]] = [[] for _ in range(len(x))]
    hrs: list[float | None] = [None] * len(x)
    sqis: list[float | None] = [None] * len(x)
    if full_quality:
        for i in sorted(set(range(len(x))) - set(flat)):
            q = check_segment(x64[i], fs, filtered[i], spec.fs, spec.modality)
            flags[i] = list(q.reasons)
            hrs[i] = None if not np.isfinite(q.heart_rate_bpm) else round(float(q.heart_rate_bpm), 2)
            sqis[i] = None if not np.isfinite(q.sqi) else round(float(q.sqi), 3)
    out = zscore(filtered) if spec.zscore else filtered
    return Prepared(out.astype(np.float32), flags, hrs, sqis, flat)
