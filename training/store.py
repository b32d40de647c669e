"""Segment store: a Parquet manifest plus sharded, memory-mapped float32 arrays.

STORE/
  store.json               build settings, preprocessing specs (with versions), counts
  manifest.parquet         one row per kept segment: participant_id, recording_id, segment,
                           modality, shard, row, start_s, heart_rate_bpm, sqi, + participant labels
  rejects.parquet          segments that failed quality checks, with their reasons (no data)
  participants.parquet     participant_id + labels (age, sex, bmi, condition, ...)
  shards/<mod>-<k>.npy     float32 (or float16: `prepare --dtype float16`, half the bytes; read
                           back as float32) (n, channels, window), memory-mapped
  parts/<k>.parquet        per-chunk manifests; a chunk is done once its part exists (resume)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pulsefm import npyformat
from pulsefm.pipeline import process_record
from pulsefm.preprocess import spec_for
from pulsefm.records import Modality, Record

MANIFEST_COLUMNS = [
    "participant_id",
    "recording_id",
    "segment",
    "modality",
    "shard",
    "row",
    "start_s",
    "heart_rate_bpm",
    "sqi",
]
FORMAT = 1


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` then rename onto `path`: a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:  # a file object: np.save would append ".npy" to a path
            np.save(fh, arr)

    atomic_write(path, write)


def _atomic_parquet(path: Path, df: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


@dataclass(frozen=True)
class ChunkResult:
    chunk: int
    kept: int
    rejected: int
    recordings: int
    errors: tuple[str, ...]


def write_chunk(
    root: Path,
    chunk: int,
    records: Sequence[Record],
    overlap: float,
    errors: Sequence[str] = (),
    dtype: str = "float32",
) -> ChunkResult:
    """Preprocess `records`, write one shard per modality and the chunk's manifest part (last: the commit)."""
    rows: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    arrays: dict[str, list[np.ndarray]] = {}
    for rec in records:
        if rec.modality is None:
            raise ValueError(f"{rec.recording_id}: modality unknown (pass --modality or a sidecar)")
        mod = str(rec.modality)
        segs = process_record(rec, spec_for(rec.modality), overlap)
        for i, (q, t0) in enumerate(zip(segs.quality, segs.start_s, strict=True)):
            base = {
                "participant_id": rec.participant_id,
                "recording_id": rec.recording_id,
                "segment": i,
                "modality": mod,
                "start_s": float(t0),
            }
            if not q.ok:
                rejects.append({**base, "reasons": ",".join(q.reasons)})
                continue
            bucket = arrays.setdefault(mod, [])
            rows.append(
                {
                    **base,
                    "shard": f"{mod}-{chunk:05d}",
                    "row": len(bucket),
                    "heart_rate_bpm": q.heart_rate_bpm,
                    "sqi": q.sqi,
                }
            )
            bucket.append(segs.data[i])
    (root / "shards").mkdir(exist_ok=True)
    (root / "parts").mkdir(exist_ok=True)
    for mod, segs_list in arrays.items():
        _atomic_save_npy(root / "shards" / f"{mod}-{chunk:05d}.npy", np.stack(segs_list).astype(dtype))
    if rejects:
        _atomic_parquet(root / "parts" / f"{chunk:05d}.rejects.parquet", pd.DataFrame(rejects))
    _atomic_parquet(root / "parts" / f"{chunk:05d}.parquet", pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
    return ChunkResult(chunk, len(rows), len(rejects), len(records), tuple(errors))


def chunk_done(root: Path, chunk: int) -> bool:
    return (root / "parts" / f"{chunk:05d}.parquet").is_file()


def finalize(root: Path, participants: pd.DataFrame | None, info: dict[str, Any]) -> SegmentStore:
    """Concatenate the parts into manifest.parquet / rejects.parquet and write store.json."""
    parts = sorted(p for p in (root / "parts").glob("*.parquet") if not p.name.endswith(".rejects.parquet"))
    manifest = (
        pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
        if parts
        else pd.DataFrame(columns=MANIFEST_COLUMNS)
    )
    rej_parts = sorted((root / "parts").glob("*.rejects.parquet"))
    rejects = (
        pd.concat([pd.read_parquet(p) for p in rej_parts], ignore_index=True)
        if rej_parts
        else pd.DataFrame(
            columns=["participant_id", "recording_id", "segment", "modality", "start_s", "reasons"]
        )
    )
    if participants is not None and len(participants):
        _atomic_parquet(root / "participants.parquet", participants)
        manifest = manifest.merge(participants, on="participant_id", how="left")
    _atomic_parquet(root / "manifest.parquet", manifest)
    _atomic_parquet(root / "rejects.parquet", rejects)
    counts = {
        "segments": {str(k): int(v) for k, v in manifest["modality"].value_counts().items()},
        "rejected": {str(k): int(v) for k, v in rejects["modality"].value_counts().items()},
        "participants": int(manifest["participant_id"].nunique()),
    }
    write_info(root, {**info, "counts": counts, "complete": True})
    return SegmentStore(root)


def write_info(root: Path, info: dict[str, Any]) -> None:
    atomic_write(
        root / "store.json",
        lambda tmp: tmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str)),
    )


class SegmentStore:
    """Read side: the manifest as a DataFrame and segments by manifest row, via memory maps."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info_path = self.root / "store.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{self.root}: not a segment store (no store.json)")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        if not self.info.get("complete"):
            raise RuntimeError(
                f"{self.root}: store is incomplete; rerun the same `prepare` command to resume"
            )
        self.manifest = pd.read_parquet(self.root / "manifest.parquet")
        self._maps: dict[str, np.ndarray] = {}
        # row -> (shard code, row in shard) as arrays for fast batched lookups
        self._shard_codes, self._shard_names = pd.factorize(self.manifest["shard"])
        self._rows = self.manifest["row"].to_numpy(dtype=np.int64)

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def source(self) -> str | None:
        """Where the segments came from: "synthetic", or the recordings folder prepare read."""
        source = self.info.get("settings", {}).get("source")
        return None if source is None else str(source)

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    @property
    def participants(self) -> pd.DataFrame:
        path = self.root / "participants.parquet"
        return (
            pd.read_parquet(path)
            if path.is_file()
            else pd.DataFrame({"participant_id": self.manifest["participant_id"].unique()})
        )

    @property
    def rejects(self) -> pd.DataFrame:
        return pd.read_parquet(self.root / "rejects.parquet")

    def _shard(self, code: int) -> np.ndarray:
        name = str(self._shard_names[code])
        if name not in self._maps:
            # not np.load: its header parser is not thread-safe (pulsefm/npyformat.py)
            self._maps[name] = npyformat.open_memmap(self.root / "shards" / f"{name}.npy")
        return self._maps[name]

    def indices(self, modality: Modality | str) -> np.ndarray:
        """Manifest rows of one modality."""
        return np.flatnonzero(self.manifest["modality"].to_numpy() == str(Modality(modality)))

    def load(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        """Segments for manifest rows `idx` (one modality), float32 (len(idx), channels, window)."""
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("no rows requested")
        codes = self._shard_codes[idx]
        first = self._shard(int(codes[0]))
        out = np.empty((idx.size, *first.shape[1:]), dtype=np.float32)
        for code in np.unique(codes):
            sel = np.flatnonzero(codes == code)
            shard = self._shard(int(code))
            rows = self._rows[idx[sel]]
            order = np.argsort(rows)  # sorted reads are kinder to the page cache
            out[sel[order]] = shard[rows[order]]
        return out

    def __getitem__(self, i: int) -> np.ndarray:
        return self.load([i])[0]


def split_participants(
    participant_ids: Sequence[str] | np.ndarray,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, str]:
    """participant_id -> 'train' | 'val' | 'test', deterministic by seed. No participant is in two splits."""
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
    ids = np.array(sorted(set(map(str, participant_ids))))
    perm = np.random.default_rng(seed).permutation(len(ids))
    n_train = round(fractions[0] * len(ids))
    n_val = round(fractions[1] * len(ids))
    out: dict[str, str] = {}
    for rank, i in enumerate(perm):
        out[str(ids[i])] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out
