"""Preprocessing shared by training and the gateway: one spec, one code path.

    raw (channels, samples) @ fs
      -> bandpass (zero-phase Butterworth, scipy)      per modality
      -> resample to the canonical rate (polyphase)     PPG 64 Hz, ECG 128 Hz
      -> segment into fixed windows (optional overlap)  PPG 4 x 3840 (60 s), ECG 1 x 3840 (30 s)
      -> per-channel z-score per segment

The :class:`PreprocessSpec` carries a version string; anything that depends on the exact
preprocessing (the embedding cache key, a model card, a segment store) records it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
from scipy import signal as sps

from pulsefm.records import Modality

Z_EPS = 1e-6


@dataclass(frozen=True)
class PreprocessSpec:
    modality: Modality
    fs: float  # canonical sampling rate (Hz)
    channels: int  # channels the encoder takes
    window: int  # samples per segment at `fs`
    band: tuple[float, float]  # bandpass corner frequencies (Hz)
    filter_order: int = 4
    zscore: bool = True
    min_fs: float = 16.0  # below this a recording is rejected, not upsampled
    max_fs: float = 4096.0
    revision: int = 1  # bump on any change in behaviour not captured by the fields

    @property
    def duration_s(self) -> float:
        return self.window / self.fs

    @property
    def channels_text(self) -> str:
        """How many channels the encoder takes, for messages: 'one channel', '1 to 4 channels'."""
        return "one channel" if self.channels == 1 else f"1 to {self.channels} channels"

    @property
    def version(self) -> str:
        """Stable id of this exact preprocessing, e.g. ``ppg-r1-1a2b3c4d``."""
        fields = asdict(self)
        fields["modality"] = str(self.modality)
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.modality}-r{self.revision}-{digest}"

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["modality"] = str(self.modality)
        d["band"] = list(self.band)
        d["version"] = self.version
        return d


PPG_SPEC = PreprocessSpec(modality=Modality.PPG, fs=64.0, channels=4, window=3840, band=(0.5, 8.0))
ECG_SPEC = PreprocessSpec(modality=Modality.ECG, fs=128.0, channels=1, window=3840, band=(0.5, 40.0))
SPECS: dict[Modality, PreprocessSpec] = {Modality.PPG: PPG_SPEC, Modality.ECG: ECG_SPEC}


def spec_for(modality: Modality | str) -> PreprocessSpec:
    return SPECS[Modality(modality)]


@functools.lru_cache(maxsize=256)
def _butter_sos(order: int, low: float, high: float, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Filter design and its steady-state initial conditions (`sosfilt_zi`), cached: each costs
    about a third of filtering a whole segment, and the zi's linear solve holds the GIL."""
    sos = np.asarray(sps.butter(order, [low, high], btype="bandpass", fs=fs, output="sos"))
    return sos, _frozen(np.asarray(sps.sosfilt_zi(sos)))  # sosfilt takes `sos` as a writable buffer


def _frozen(a: np.ndarray) -> np.ndarray:
    """A cached array made read-only: a caller changing it in place fails instead of changing it
    for every later call."""
    a.setflags(write=False)
    return a


def _odd_ext(x: np.ndarray, n: int) -> np.ndarray:
    """`n` samples of odd extension at both ends of the last axis (scipy's default padding)."""
    left = 2 * x[..., :1] - x[..., n:0:-1]
    right = 2 * x[..., -1:] - x[..., -2 : -(n + 2) : -1]
    return np.concatenate((left, x, right), axis=-1)


def sosfiltfilt(sos: np.ndarray, zi: np.ndarray, x: np.ndarray) -> np.ndarray:
    """scipy.signal.sosfiltfilt along the last axis with its defaults (odd padding of 3 x taps),
    given the filter's `sosfilt_zi`: the same operations in the same order, so the same numbers
    (tests/test_preprocess.py compares them bit for bit)."""
    ntaps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    edge = 3 * ntaps
    if x.ndim == 0 or x.shape[-1] <= edge:  # scipy's own error for a too-short input
        return np.asarray(sps.sosfiltfilt(sos, x, axis=-1))
    ext = _odd_ext(x, edge)
    zi = zi.reshape((len(sos),) + (1,) * (x.ndim - 1) + (2,))
    y, _ = sps.sosfilt(sos, ext, axis=-1, zi=zi * ext[..., :1])
    y, _ = sps.sosfilt(sos, y[..., ::-1], axis=-1, zi=zi * y[..., -1:])
    return np.asarray(y[..., ::-1][..., edge:-edge])


def bandpass(x: np.ndarray, fs: float, band: tuple[float, float], order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth bandpass along the last axis. The upper corner is clipped below Nyquist."""
    low, high = band
    high = min(high, 0.45 * fs)
    sos, zi = _butter_sos(order, float(low), float(high), float(fs))
    return sosfiltfilt(sos, zi, np.asarray(x))


def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliased)."""
    if abs(fs_in - fs_out) < 1e-9:
        return x
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    up, down = ratio.numerator, ratio.denominator
    if x.dtype != np.float64 or up == down:  # scipy designs in x's precision; 1:1 is a copy
        return np.asarray(sps.resample_poly(x, up, down, axis=-1))
    return np.asarray(sps.resample_poly(x, up, down, axis=-1, window=_antialias(up, down)))


@functools.lru_cache(maxsize=256)
def _antialias(up: int, down: int) -> np.ndarray:
    """resample_poly's own low-pass FIR (its default Kaiser window and length), cached: designing
    it costs 25-50 % of a resampling call. The same coefficients, so the same numbers."""
    max_rate = max(up, down)
    return _frozen(np.asarray(sps.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))))


def segment(x: np.ndarray, window: int, overlap: float = 0.0) -> np.ndarray:
    """(channels, samples) -> (n_segments, channels, window); the incomplete tail is dropped.
    A negative overlap leaves gaps (a stride longer than the window)."""
    if not overlap < 1.0:
        raise ValueError(f"overlap must be below 1, got {overlap}")
    hop = max(1, round(window * (1.0 - overlap)))
    if x.shape[-1] < window:
        return np.empty((0, x.shape[0], window), dtype=x.dtype)
    view = np.lib.stride_tricks.sliding_window_view(x, window, axis=-1)[:, ::hop]  # (C, n, W)
    return np.ascontiguousarray(view.transpose(1, 0, 2))


def zscore(segments: np.ndarray) -> np.ndarray:
    """Per-segment, per-channel standardisation along the last axis."""
    mu = segments.mean(axis=-1, keepdims=True)
    sd = segments.std(axis=-1, keepdims=True)
    return (segments - mu) / np.maximum(sd, Z_EPS)


def channel_map(k: int, n: int) -> list[int]:
    """Which of `k` given channels feeds each of the encoder's `n` inputs: input i takes channel
    i mod k (PPG: 1 channel -> all four inputs; green + infrared -> g, ir, g, ir; 3 -> a, b, c, a)."""
    if not 1 <= k <= n:
        raise ValueError(f"expected 1 to {n} channel(s), got {k}")
    return [i % k for i in range(n)]


def match_channels(x: np.ndarray, n: int) -> np.ndarray:
    """Bring (..., C, T) to n channels by `channel_map`; more than n channels is an error."""
    if x.shape[-2] == n:
        return x
    return np.take(x, channel_map(x.shape[-2], n), axis=-2)


def filter_and_resample(x: np.ndarray, fs: float, spec: PreprocessSpec) -> np.ndarray:
    """Bandpass at the native rate, then resample to ``spec.fs``. NaN-free input only."""
    if not spec.min_fs <= fs <= spec.max_fs:
        raise ValueError(
            f"sampling rate {fs:g} Hz outside the supported range [{spec.min_fs:g}, {spec.max_fs:g}]"
        )
    return resample(bandpass(x, fs, spec.band, spec.filter_order), fs, spec.fs)
