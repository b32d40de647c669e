"""Recordings -> model windows, with a verdict per window.

A request carries recordings `[recording][channel][sample]` at one rate. Each is cut into windows
of the model's duration (PPG 60 s, ECG 30 s) every `stride_s` seconds (default: one window, no
overlap). A recording within `duration_tolerance` of one window is that one window (the exact
segments of the API's first version keep working); of a longer one the tail shorter than a window
is dropped, and the answer says how much.

Every window is checked on its own, on the float32 samples the encoder will see: NaN/inf or
missing samples (`nonfinite`), values beyond float32 (`out_of_range`), a flat line, clipping. A
bad window is reported with its reasons and the others are served; only when no window is left
does the request fail (422 naming every window's reasons).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pulsefm.preprocess import PreprocessSpec
from pulsefm.quality import NONFINITE, raw_checks
from service.errors import NonFiniteOutput, Problem, ValidationFailed
from service.textnumbers import decimal

OUT_OF_RANGE = "out_of_range"
NON_FINITE_OUTPUT = "non_finite_output"
MIN_STRIDE_S = 1.0
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Windows:
    """The windows of one request's recordings; window `w` is recording `w // per_recording`."""

    x: np.ndarray  # (recordings, channels, samples) float32, as received
    fs: float
    length: int  # samples per window at fs
    starts: np.ndarray  # (per_recording,) first sample of each window, the same in every recording
    stride_s: float
    dropped_tail_s: float  # samples after the last whole window, per recording (seconds)
    problems: dict[int, list[Problem]] = field(default_factory=dict)  # window -> why it is unusable

    @property
    def per_recording(self) -> int:
        return int(self.starts.size)

    def __len__(self) -> int:
        return int(self.x.shape[0]) * self.per_recording

    def recording(self, w: int) -> int:
        return w // self.per_recording

    def start_s(self, w: int) -> float:
        return float(self.starts[w % self.per_recording]) / self.fs

    def usable(self) -> list[int]:
        return [w for w in range(len(self)) if w not in self.problems]

    def reject(self, w: int, reason: str, what: str) -> None:
        self.problems.setdefault(w, []).append(Problem(reason, f"{self.where(w)}: {what}", w))

    def where(self, w: int) -> str:
        t0 = self.start_s(w)
        return f"window {w} (recording {self.recording(w)}, {t0:.1f}-{t0 + self.length / self.fs:.1f} s)"

    def unusable(self) -> ValidationFailed:
        """The 422 for a request none of whose windows is usable: every window's reasons."""
        problems = [p for w in sorted(self.problems) for p in self.problems[w]]
        if problems and all(p.reason == NON_FINITE_OUTPUT for p in problems):
            return NonFiniteOutput(problems)
        return ValidationFailed(problems)

    def take(self, ws: list[int]) -> np.ndarray:
        """(len(ws), channels, length) float32, contiguous (cache keys hash these bytes)."""
        k = self.per_recording
        return np.stack(
            [self.x[w // k, :, self.starts[w % k] : self.starts[w % k] + self.length] for w in ws]
        )


def parse_stride(value: object, spec: PreprocessSpec) -> float:
    """Seconds between window starts: default one window; at least MIN_STRIDE_S."""
    if value is None or value == "":
        return spec.duration_s
    if isinstance(value, str):
        stride = decimal(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        stride = float(value)
    else:
        stride = None
    if stride is None:
        stride = math.nan
    if not MIN_STRIDE_S <= stride <= 100 * spec.duration_s:  # nan too
        raise ValidationFailed(
            [
                Problem(
                    "stride_s",
                    f"stride_s must be a number of seconds in [{MIN_STRIDE_S:g}, {100 * spec.duration_s:g}], "
                    f"got {value!r:.40}",
                )
            ]
        )
    return stride


def cut(
    source: np.ndarray,
    x32: np.ndarray,
    fs: float,
    spec: PreprocessSpec,
    stride_s: float,
    tolerance: float,
    max_windows: int,
) -> Windows:
    """Cut (recordings, channels, samples) into windows and check each one.

    `source` is the array as received (float64 from JSON or a float64 .npy), `x32` its float32
    cast: a value finite in `source` but not in `x32` is `out_of_range`.
    """
    n, _, samples = x32.shape
    want = spec.duration_s * fs
    if samples < want * (1 - tolerance):
        raise ValidationFailed(
            [
                Problem(
                    "too_short",
                    f"{samples} samples at {fs:g} Hz = {samples / fs:.2f} s; {spec.modality} needs at least "
                    f"one window of {spec.duration_s:g} s",
                )
            ]
        )
    if samples <= want * (1 + tolerance):
        length, starts = samples, np.zeros(1, dtype=np.int64)
    else:
        length = round(want)
        starts = np.arange(0, samples - length + 1, max(1, round(stride_s * fs)), dtype=np.int64)
    if n * starts.size > max_windows:
        raise ValidationFailed(
            [
                Problem(
                    "too_many_windows",
                    f"{n} recording(s) x {starts.size} windows = {n * starts.size} windows; the limit is "
                    f"{max_windows} per request (send less, or a longer stride_s)",
                )
            ]
        )
    tail = (samples - int(starts[-1]) - length) / fs
    win = Windows(x32, fs, length, starts, stride_s, tail)
    finite32 = np.isfinite(x32).all(axis=1)  # (n, samples)
    finite_src = finite32 if source.dtype == np.float32 else np.isfinite(source).all(axis=1)
    for w in range(len(win)):
        r, a = win.recording(w), int(starts[w % starts.size])
        span = slice(a, a + length)
        if not finite_src[r, span].all():
            win.reject(w, NONFINITE, "NaN, inf or missing (null) samples")
        elif not finite32[r, span].all():
            win.reject(w, OUT_OF_RANGE, f"samples beyond float32's range (|x| > {_FLOAT32_MAX:.3g})")
        else:
            for reason in raw_checks(x32[r, :, span], fs):
                win.reject(w, reason, reason.replace("_", " "))
    if not win.usable():
        raise win.unusable()
    return win
