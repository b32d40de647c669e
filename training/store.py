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

STORE is a folder or an fsspec URL (`s3://bucket/stores/syn`: training/storage.py). A shard holds
the segments of one chunk of participants (synthetic) or of files (ROOT/<participant>/<file>, in
order), so a participant's segments sit together: the streaming loader (training/stream.py) reads
whole shards in sequence and still finds two segments of one participant in what it holds.
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pulsefm import npyformat
from pulsefm.pipeline import process_record
from pulsefm.preprocess import spec_for
from pulsefm.records import Modality, Record
from training.storage import Location

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


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@dataclass(frozen=True)
class ChunkResult:
    chunk: int
    kept: int
    rejected: int
    recordings: int
    errors: tuple[str, ...]


def write_chunk(
    root: str | Path,
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
    loc = Location(root)
    for mod, segs_list in arrays.items():
        loc.write_bytes(f"shards/{mod}-{chunk:05d}.npy", _npy_bytes(np.stack(segs_list).astype(dtype)))
    if rejects:
        loc.write_parquet(f"parts/{chunk:05d}.rejects.parquet", pd.DataFrame(rejects))
    loc.write_parquet(f"parts/{chunk:05d}.parquet", pd.DataFrame(rows, columns=MANIFEST_COLUMNS))  # commit
    return ChunkResult(chunk, len(rows), len(rejects), len(records), tuple(errors))


def chunk_done(root: str | Path, chunk: int) -> bool:
    return Location(root).exists(f"parts/{chunk:05d}.parquet")


def finalize(root: str | Path, participants: pd.DataFrame | None, info: dict[str, Any]) -> SegmentStore:
    """Concatenate the parts into manifest.parquet / rejects.parquet and write store.json."""
    loc = Location(root)
    names = loc.list("parts", ".parquet")
    parts = [n for n in names if not n.endswith(".rejects.parquet")]
    manifest = (
        pd.concat([loc.read_parquet(f"parts/{n}") for n in parts], ignore_index=True)
        if parts
        else pd.DataFrame(columns=MANIFEST_COLUMNS)
    )
    rej_parts = [n for n in names if n.endswith(".rejects.parquet")]
    rejects = (
        pd.concat([loc.read_parquet(f"parts/{n}") for n in rej_parts], ignore_index=True)
        if rej_parts
        else pd.DataFrame(
            columns=["participant_id", "recording_id", "segment", "modality", "start_s", "reasons"]
        )
    )
    if participants is not None and len(participants):
        loc.write_parquet("participants.parquet", participants)
        manifest = manifest.merge(participants, on="participant_id", how="left")
    loc.write_parquet("manifest.parquet", manifest)
    loc.write_parquet("rejects.parquet", rejects)
    counts = {
        "segments": {str(k): int(v) for k, v in manifest["modality"].value_counts().items()},
        "rejected": {str(k): int(v) for k, v in rejects["modality"].value_counts().items()},
        "participants": int(manifest["participant_id"].nunique()),
    }
    write_info(root, {**info, "counts": counts, "complete": True})
    return SegmentStore(root)


def write_info(root: str | Path, info: dict[str, Any]) -> None:
    Location(root).write_bytes("store.json", json.dumps(info, indent=2, sort_keys=True, default=str).encode())


def read_info(root: str | Path) -> dict[str, Any] | None:
    """store.json of the store at `root`, or None if there is none."""
    loc = Location(root)
    return json.loads(loc.read_bytes("store.json")) if loc.exists("store.json") else None


class SegmentStore:
    """Read side: the manifest as a DataFrame and segments by manifest row. Local shards are
    memory-mapped; remote ones (an fsspec URL) are fetched whole, `max_remote_shards` kept."""

    def __init__(self, root: str | Path, max_remote_shards: int = 16) -> None:
        self.location = Location(root)
        self.root = self.location.local or Path(self.location.root)  # for messages and local files
        info = read_info(root)
        if info is None:
            raise FileNotFoundError(f"{root}: not a segment store (no store.json)")
        self.info: dict[str, Any] = info
        if not self.info.get("complete"):
            raise RuntimeError(f"{root}: store is incomplete; rerun the same `prepare` command to resume")
        self.manifest = self.location.read_parquet("manifest.parquet")
        self._maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self._max_remote = max_remote_shards
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
        if self.location.exists("participants.parquet"):
            return self.location.read_parquet("participants.parquet")
        return pd.DataFrame({"participant_id": self.manifest["participant_id"].unique()})

    @property
    def rejects(self) -> pd.DataFrame:
        return self.location.read_parquet("rejects.parquet")

    def shard_codes(self, rows: np.ndarray) -> np.ndarray:
        """The shard (as a code) holding each manifest row."""
        return self._shard_codes[np.asarray(rows, dtype=np.int64)]

    def _shard(self, code: int) -> np.ndarray:
        name = str(self._shard_names[code])
        if name in self._maps:
            self._maps.move_to_end(name)
            return self._maps[name]
        rel = f"shards/{name}.npy"
        if self.location.local is not None:
            # not np.load: its header parser is not thread-safe (pulsefm/npyformat.py)
            arr = npyformat.open_memmap(self.location.local / rel)
        else:
            arr = npyformat.from_bytes(self.location.read_bytes(rel))
            while len(self._maps) >= self._max_remote:
                self._maps.popitem(last=False)
        self._maps[name] = arr
        return arr

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
