"""Print a digest of a segment store, to check that two machines built the same one.

    python scripts/store_digest.py stores/syn400

Per modality: segment count, a hash of the manifest rows (participant, recording, segment,
start), and the mean |x| and mean x^3 of every sample (segments are z-scored, so plain sums say
nothing); plus a hash of the participants' labels. Means are rounded so that float differences
between library versions do not show.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

from training.store import SegmentStore


def digest(path: str) -> list[str]:
    store = SegmentStore(path)
    m = store.manifest
    lines = []
    for mod in sorted(m["modality"].unique()):
        idx = store.indices(mod)
        rows = m.iloc[idx][["participant_id", "recording_id", "segment", "start_s"]]
        key = hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()[:16]
        absolute, cubes, n = 0.0, 0.0, 0
        for lo in range(0, idx.size, 512):
            x = store.load(idx[lo : lo + 512]).astype(np.float64)
            absolute, cubes, n = absolute + float(np.abs(x).sum()), cubes + float((x**3).sum()), n + x.size
        lines.append(
            f"{mod}: {idx.size} segments, rows {key}, mean |x| {absolute / n:.5f}, mean x^3 {cubes / n:.4f}"
        )
    participants = store.participants  # a property that reads participants.parquet
    labels = participants.round(4).to_csv(index=False).encode()
    lines.append(f"participants: {len(participants)}, labels {hashlib.sha256(labels).hexdigest()[:16]}")
    return lines


if __name__ == "__main__":
    print("\n".join(digest(sys.argv[1])))
