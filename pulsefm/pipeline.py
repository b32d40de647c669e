"""Record -> model-ready segments with per-segment quality: the path shared by `prepare` and the gateway."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from pulsefm.preprocess import PreprocessSpec, filter_and_resample, match_channels, segment, zscore
from pulsefm.quality import Quality, check_segment
from pulsefm.records import Record, RecordError

# channel names that say which signal a column holds (lower case, matched as substrings)
CHANNEL_HINTS = {
    "ecg": ("ecg", "ekg", "lead", "mlii"),
    "ppg": ("ppg", "bvp", "pleth", "green", "red", "infrared", "ir", "channel"),
}


def _says(name: str, hints: tuple[str, ...]) -> bool:
    """Whether a channel name holds a hint: as a word ('ir', 'red'), or inside one for long hints."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return any(w == h or (len(h) >= 4 and h in w) for w in words for h in hints)


@dataclass(frozen=True)
class Segments:
    data: np.ndarray  # (n, channels, window) float32, z-scored if the spec says so
    quality: tuple[Quality, ...]  # one per segment
    start_s: np.ndarray  # (n,) start time of each segment in the recording

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def ok(self) -> np.ndarray:
        return np.array([q.ok for q in self.quality], dtype=bool)


def _fill_nonfinite(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN/inf so that filters do not smear them (flagged segments are kept out)."""
    if np.all(np.isfinite(x)):
        return x
    out = x.copy()
    idx = np.arange(x.shape[-1])
    for ch in out:
        good = np.isfinite(ch)
        ch[~good] = np.interp(idx[~good], idx[good], ch[good]) if good.any() else 0.0
    return out


def process_array(
    x: np.ndarray, fs: float, spec: PreprocessSpec, overlap: float = 0.0, check: bool = True
) -> Segments:
    """Raw (channels, samples) at `fs` -> segments at the spec's rate, with quality checks on each."""
    x = match_channels(np.asarray(x, dtype=np.float64), spec.channels)
    filtered = filter_and_resample(_fill_nonfinite(x), fs, spec)
    segs = segment(filtered, spec.window, overlap)
    hop = max(1, round(spec.window * (1.0 - overlap)))
    starts = np.arange(len(segs)) * hop / spec.fs
    quality: list[Quality] = []
    if check:
        raw_len = round(spec.duration_s * fs)
        for seg, t0 in zip(segs, starts, strict=True):
            a = round(t0 * fs)
            quality.append(check_segment(x[:, a : a + raw_len], fs, seg, spec.fs, spec.modality))
    else:
        quality = [Quality((), float("nan"), float("nan"))] * len(segs)
    data = zscore(segs) if spec.zscore else segs
    return Segments(data.astype(np.float32), tuple(quality), starts)


def process_record(rec: Record, spec: PreprocessSpec, overlap: float = 0.0, check: bool = True) -> Segments:
    return process_array(rec.signal, rec.fs, spec, overlap, check)


def channels_for(rec: Record, spec: PreprocessSpec, channels: str | list[str] | None = None) -> Record:
    """The record's channels the model takes: `channels` (names or indices, a list or "a,b") if
    given; else all of them if they fit (ECG 1, PPG 1-4); else those whose names say the modality
    (ECG: 'ecg', 'lead', 'mlii'...; PPG: 'ppg', 'bvp', 'pleth', 'green', 'red', 'ir'...)."""
    if isinstance(channels, str):
        channels = [c.strip() for c in channels.split(",") if c.strip()]
    if channels:
        rec = rec.select(list(channels))
    elif rec.n_channels > spec.channels:
        hints = CHANNEL_HINTS[str(spec.modality)]
        named = [c for c in rec.channel_names if _says(c, hints)]
        if not 1 <= len(named) <= spec.channels:
            raise RecordError(
                rec.recording_id,
                f"{rec.n_channels} channels {list(rec.channel_names)}; {spec.modality} takes "
                f"{spec.channels_text}: choose with channels= (CLI: --channels)",
            )
        rec = rec.select(named)
    if rec.n_channels > spec.channels:
        raise RecordError(
            rec.recording_id, f"{rec.n_channels} channels chosen; {spec.modality} takes {spec.channels_text}"
        )
    return rec
