"""The one typed record every reader returns, and the modality enum."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Modality(enum.StrEnum):
    PPG = "ppg"
    ECG = "ecg"


class RecordError(ValueError):
    """A recording could not be read or is malformed. The message names the file and the problem."""

    def __init__(self, source: object, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


@dataclass(frozen=True)
class Record:
    """A multi-channel recording at one sampling rate.

    `signal` is float64 with shape (channels, samples).
    """

    signal: np.ndarray
    channel_names: tuple[str, ...]
    fs: float
    participant_id: str
    recording_id: str
    modality: Modality | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sig = np.asarray(self.signal, dtype=np.float64)
        if sig.ndim == 1:
            sig = sig[None, :]
        if sig.ndim != 2:
            raise RecordError(self.recording_id, f"signal must be 1-D or 2-D, got shape {sig.shape}")
        if sig.shape[1] == 0:
            raise RecordError(self.recording_id, "signal has no samples")
        if len(self.channel_names) != sig.shape[0]:
            raise RecordError(
                self.recording_id,
                f"{len(self.channel_names)} channel names for {sig.shape[0]} channels",
            )
        if not (np.isfinite(self.fs) and self.fs > 0):
            raise RecordError(self.recording_id, f"sampling rate must be positive, got {self.fs}")
        object.__setattr__(self, "signal", sig)
        object.__setattr__(self, "channel_names", tuple(str(c) for c in self.channel_names))
        object.__setattr__(self, "fs", float(self.fs))
        if self.modality is not None:
            object.__setattr__(self, "modality", Modality(self.modality))

    @property
    def n_channels(self) -> int:
        return int(self.signal.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def select(self, channels: list[str] | tuple[str, ...] | list[int]) -> Record:
        """A record with only `channels` (names, or indices such as 0 or "0"), in that order."""
        n = len(self.channel_names)
        channels = [
            self.channel_names[int(c)]
            if str(c) not in self.channel_names and str(c).isdigit() and int(c) < n
            else str(c)
            for c in channels
        ]
        missing = [c for c in channels if c not in self.channel_names]
        if missing:
            raise RecordError(
                self.recording_id, f"channels {missing} not found; available: {list(self.channel_names)}"
            )
        idx = [self.channel_names.index(c) for c in channels]
        return Record(
            signal=self.signal[idx],
            channel_names=tuple(channels),
            fs=self.fs,
            participant_id=self.participant_id,
            recording_id=self.recording_id,
            modality=self.modality,
            metadata=self.metadata,
        )
