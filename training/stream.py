"""Streaming positive pairs for multi-node training: each DDP rank reads its own shards whole and
in sequence, never the whole store at random.

Per epoch the store's shards (of the run's training rows) are permuted by (seed, epoch) — the same
on every rank — and rank r takes every world-th one. A shard holds whole participants (prepare
writes a chunk of participants, or of files ordered by participant, per shard), so the pairs of
a shard — each segment of a participant with two or more, paired with a different one of that
participant — are made from the shard alone. They pass through a shuffle buffer of `buffer` pairs
(drawn with a generator seeded by (seed, epoch, rank)) and leave it a batch at a time; the epoch
after the last shard starts the next permutation, so a rank's stream never ends and every rank
gives one batch per step.

Only indices flow here: a batch is a pure function of (seed, rank, world, step) and the manifest,
so resuming at step s replays the indices up to s without reading any data (`batch(step)`), and
the run continues with exactly the batches it would have had. The data of a batch is read by
`SegmentStore.load`, which fetches the few shards the buffer spans (whole objects, cached).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from training.sampler import PairBatch


class ShardStream:
    """`rows`: the manifest rows to train on; `groups`: their participant codes (the same on every
    rank); `shards`: their shard codes (SegmentStore.shard_codes)."""

    def __init__(
        self,
        rows: np.ndarray,
        groups: np.ndarray,
        shards: np.ndarray,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        buffer: int = 1024,
    ) -> None:
        rows, groups, shards = (np.asarray(a, dtype=np.int64) for a in (rows, groups, shards))
        self.rank, self.world, self.seed, self.buffer = rank, world, seed, max(1, buffer)
        self.shard_ids = np.unique(shards)
        if len(self.shard_ids) < world:
            raise ValueError(
                f"{len(self.shard_ids)} shard(s) for {world} ranks: every rank needs its own; "
                "prepare the store with a smaller --chunk"
            )
        self._by_shard = {int(s): (rows[shards == s], groups[shards == s]) for s in self.shard_ids}
        if not any(np.unique(g, return_counts=True)[1].max() >= 2 for _, g in self._by_shard.values()):
            raise ValueError("no participant has two segments in one shard: no participant positives")
        self._cursor: tuple[int, Iterator[PairBatch]] | None = None
        self._size = 0

    def shards_of(self, epoch: int) -> np.ndarray:
        """This rank's shards in epoch `epoch`, in reading order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.shard_ids)
        return order[self.rank :: self.world]

    def _pairs(self, shard: int, rng: np.random.Generator) -> Iterator[tuple[int, int, int]]:
        """Every pairable segment of the shard once, in random order, with a random other segment
        of its participant."""
        rows, groups = self._by_shard[shard]
        order = np.argsort(groups, kind="stable")
        rows, groups = rows[order], groups[order]
        _, first, counts = np.unique(groups, return_index=True, return_counts=True)
        start, n = np.repeat(first, counts), np.repeat(counts, counts)
        anchors = rng.permutation(np.flatnonzero(n >= 2))
        k = anchors - start[anchors]
        partner = start[anchors] + (k + 1 + rng.integers(0, n[anchors] - 1)) % n[anchors]
        yield from zip(rows[anchors].tolist(), rows[partner].tolist(), groups[anchors].tolist(), strict=True)

    def _batches(self, per_rank: int) -> Iterator[PairBatch]:
        epoch = 0
        held: list[tuple[int, int, int]] = []
        batch: list[tuple[int, int, int]] = []
        while True:
            rng = np.random.default_rng([self.seed, epoch, self.rank])
            for shard in self.shards_of(epoch):
                for pair in self._pairs(int(shard), rng):
                    held.append(pair)
                    if len(held) < self.buffer:
                        continue
                    i = int(rng.integers(len(held)))
                    held[i], held[-1] = held[-1], held[i]
                    batch.append(held.pop())
                    if len(batch) == per_rank:
                        yield _as_batch(batch)
                        batch = []
            epoch += 1

    def batch(self, step: int, per_rank: int) -> PairBatch:
        """This rank's batch of `per_rank` pairs at `step` (steps asked in order are O(1) each)."""
        if self._cursor is None or self._cursor[0] > step or self._size != per_rank:
            self._cursor, self._size = (0, self._batches(per_rank)), per_rank
        at, it = self._cursor
        while at < step:  # a resumed run replays indices only
            next(it)
            at += 1
        out = next(it)
        self._cursor = (step + 1, it)
        return out


def _as_batch(pairs: list[tuple[int, int, int]]) -> PairBatch:
    a, b, g = (np.array(x, dtype=np.int64) for x in zip(*pairs, strict=True))
    return PairBatch(a, b, g)
