"""Prepare throughput per worker and its scaling, for the paper-scale plan (docs/scale.md).

    python -m benchmarks.prepare_scaling                  # ~3 min on 2 cores
    python -m benchmarks.prepare_scaling --participants 32

Builds the same SYNTHETIC store (participants x 1 PPG 180 s + 1 ECG 120 s recording each) with the
local process pool at 1 and 2 workers, and on a local Dask cluster (scheduler + N worker
processes on loopback) at 1 and 2 workers; prints segments/s per configuration and the 2-worker /
1-worker ratio; writes benchmarks/results/prepare_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from training.cluster import local_cluster

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "prepare_scaling.json"


def _prepare(out: Path, participants: int, *extra: str) -> float:
    cmd = [sys.executable, "-m", "pulsefm.cli", "prepare", "--synthetic", str(participants), "--chunk", "2",
           "--recordings-per-participant", "1", "--out", str(out), *extra]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def _segments(out: Path) -> int:
    info = json.loads((out / "store.json").read_text())
    return int(sum(info["counts"]["segments"].values()))


def float16_error(tmp: Path, participants: int) -> dict[str, float]:
    """The same store in float32 and float16 shards: sample error, and the shipped PPG encoder's
    embeddings of the two (cosine), on every PPG segment."""
    import numpy as np
    import onnxruntime as ort

    from pulsefm import contract as C
    from training.store import SegmentStore

    for dtype in ("float32", "float16"):
        _prepare(tmp / dtype, participants, "--workers", "2", "--dtype", dtype)
    a, b = SegmentStore(tmp / "float32"), SegmentStore(tmp / "float16")
    rows = a.indices("ppg")
    x, y = a.load(rows), b.load(rows)
    repo = ROOT / "model_repository" / "ppg_encoder"
    onnx = repo / str(max(C.versions_on_disk(repo))) / C.MODEL_FILE
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    ea, eb = (sess.run(None, {C.ENCODER_INPUT: v})[0].astype(np.float64) for v in (x, y))
    cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    size = {
        d: sum(p.stat().st_size for p in (tmp / d / "shards").glob("*.npy")) for d in ("float32", "float16")
    }
    return {
        "segments": int(rows.size),
        "max_abs_error": float(np.abs(x - y).max()),
        "rms_error": float(np.sqrt(((x - y) ** 2).mean())),
        "embedding_cosine_min": float(cos.min()),
        "embedding_cosine_mean": float(cos.mean()),
        "bytes_ratio": size["float16"] / size["float32"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--participants", type=int, default=16)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pulsefm-prep-"))
    rows: list[dict[str, Any]] = []
    for engine in ("local", "dask"):
        for workers in (1, 2):
            out = tmp / f"{engine}{workers}"
            if engine == "local":
                seconds = _prepare(out, args.participants, "--workers", str(workers))
            else:
                with local_cluster(workers) as (address, _):
                    seconds = _prepare(out, args.participants, "--engine", "dask", "--address", address)
            n = _segments(out)
            rows.append({"engine": engine, "workers": workers, "segments": n, "seconds": round(seconds, 2),
                         "segments_per_s": round(n / seconds, 1)})  # fmt: skip
            print(
                f"{engine:5s} {workers} worker(s): {n} segments in {seconds:.1f} s "
                f"= {n / seconds:.1f} segments/s"
            )
            shutil.rmtree(out)
    float16 = float16_error(tmp, args.participants)
    print(f"float16 shards: {float16}")
    by = {(r["engine"], r["workers"]): r["segments_per_s"] for r in rows}
    scaling = {e: round(by[(e, 2)] / by[(e, 1)], 2) for e in ("local", "dask")}
    print(f"2 workers / 1 worker: local {scaling['local']}, dask {scaling['dask']}")
    doc = {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "participants": args.participants,
        "data": "SYNTHETIC: 1 PPG (180 s, 4 ch) + 1 ECG (120 s) recording per participant; timing includes "
        "interpreter start-up and finalize",
        "rows": rows,
        "scaling_2_over_1": scaling,
        "float16": float16,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=2))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
