"""Batches of positive pairs: two different segments of one participant (or one segment twice).

A batch is a pure function of (seed, step): resuming at step s reproduces the exact batches, and
every DDP rank can cut its slice out of the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairBatch:
    rows_a: np.ndarray  # (B,) store rows of view 1
    rows_b: np.ndarray  # (B,) store rows of view 2
    groups: np.ndarray  # (B,) positive-group id (participant code; segment row in segment mode)

    def slice(self, rank: int, world: int) -> PairBatch:
        per = len(self.rows_a) // world
        s = slice(rank * per, (rank + 1) * per)
        return PairBatch(self.rows_a[s], self.rows_b[s], self.groups[s])


class PairSampler:
    """`mode='participant'`: B participants, two different segments each (participants with one
    segment are left out). `mode='segment'`: B segments, each paired with itself (the ablation)."""

    def __init__(
        self, rows: np.ndarray, participants: np.ndarray, mode: str = "participant", seed: int = 0
    ) -> None:
        if mode not in ("participant", "segment"):
            raise ValueError(f"mode must be 'participant' or 'segment', got {mode!r}")
        rows = np.asarray(rows, dtype=np.int64)
        codes = np.unique(np.asarray(participants), return_inverse=True)[1]
        order = np.argsort(codes, kind="stable")
        counts = np.bincount(codes)
        keep = counts >= (2 if mode == "participant" else 1)
        self.mode = mode
        self.seed = seed
        self.rows = rows[order]
        self.offsets = np.concatenate([[0], np.cumsum(counts)])[:-1]
        self.counts = counts
        self.eligible = np.flatnonzero(keep)
        if len(self.eligible) == 0:
            raise ValueError("no participant has two segments; participant-level positives are impossible")
        self.dropped = int((~keep).sum())

    @property
    def n_participants(self) -> int:
        return len(self.eligible)

    def batch(self, step: int, batch_size: int) -> PairBatch:
        rng = np.random.default_rng([self.seed, step])
        if self.mode == "segment":
            pick = rng.integers(0, len(self.rows), batch_size)
            rows = self.rows[pick]
            return PairBatch(rows, rows, pick)
        replace = batch_size > len(self.eligible)
        who = rng.choice(self.eligible, batch_size, replace=replace)
        n = self.counts[who]
        i = rng.integers(0, n)
        j = (i + 1 + rng.integers(0, n - 1)) % n  # a different segment of the same participant
        base = self.offsets[who]
        return PairBatch(self.rows[base + i], self.rows[base + j], who)
