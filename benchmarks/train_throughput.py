"""Training throughput: the full pipeline vs a bare forward/backward loop, same model and batch.

    random = segment store (memmap) -> pair sampler over the whole store -> augmentation -> step
    stream = the store's shards read in sequence (training/stream.py) -> augmentation -> step,
             from the local store and from the same store on a real S3 server on loopback (moto)
    bare   = the same optimisation step on tensors already in memory

Every pipeline runs with PairLoader's prefetch thread. Prints a table and writes JSON (default
benchmarks/results/train_throughput.json). Each ratio pipeline / bare is measured in one run,
repeats interleaved, so machine noise mostly cancels. Goal: >= 0.8.

    python -m benchmarks.train_throughput --preset tiny --batch-size 64 --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import platform
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.augment import AUGMENT_PRESETS
from training.config import PRESETS, TrainConfig
from training.loss import ContrastiveLoss
from training.prepare import main as prepare_main
from training.sampler import PairSampler
from training.store import SegmentStore
from training.train import Dist, PairLoader, autocast_for, build_model, optimisation_step, train_batches


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _segments_per_s(cfg: TrainConfig, device: torch.device, batches: Iterable[Batch], warmup: int) -> float:
    """Optimisation steps over `batches` (a fresh model each time); the first `warmup` are not timed."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    teacher = copy.deepcopy(model).requires_grad_(False) if cfg.use_momentum else None
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = ContrastiveLoss(cfg.temperature, cfg.koleo_weight)
    ac = autocast_for(cfg, device)
    t0, timed = 0.0, 0
    for i, batch in enumerate(batches):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        optimisation_step(model, model, teacher, loss_fn, opt, batch, Dist(), cfg.momentum, ac)
        timed += i >= warmup
    _sync(device)
    return timed * 2 * cfg.batch_size / (time.perf_counter() - t0)


def bench_full(
    cfg: TrainConfig, store: SegmentStore, device: torch.device, warmup: int, steps: int, loader: str
) -> float:
    """store -> pairs (`loader`: random or stream) -> augment -> step, with the prefetch thread."""
    rows = store.indices(cfg.modality)
    sampler = PairSampler(rows, store.manifest["participant_id"].to_numpy()[rows], cfg.positives, 0)
    batches = train_batches(cfg.replace(loader=loader), store, rows, sampler, Dist())
    pairs = PairLoader(store, batches, AUGMENT_PRESETS[cfg.augment], Dist(), 0, device)
    try:
        return _segments_per_s(cfg, device, (b for _, b in pairs.iterate(0, warmup + steps)), warmup)
    finally:
        pairs.close()


def bench_bare(cfg: TrainConfig, channels: int, device: torch.device, warmup: int, steps: int) -> float:
    """The same step on one batch of tensors already on the device."""
    gen = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(cfg.batch_size, channels, 3840, generator=gen).to(device),
        torch.randn(cfg.batch_size, channels, 3840, generator=gen).to(device),
        torch.arange(cfg.batch_size).to(device),
    )
    return _segments_per_s(cfg, device, itertools.repeat(batch, warmup + steps), warmup)


@contextlib.contextmanager
def _on_s3(store_path: str) -> Iterator[SegmentStore]:
    """The store copied to a real S3 server on loopback (moto), opened from there."""
    import fsspec

    from training.s3_local import local_s3

    with local_s3():
        fsspec.filesystem("s3", skip_instance_cache=True).put(store_path, "pulsefm/store", recursive=True)
        yield SegmentStore("s3://pulsefm/store")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--store", help="segment store (default: a fresh SYNTHETIC 16-participant store)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--repeats", type=int, default=2, help="alternating full/bare runs; the median is reported"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default="benchmarks/results/train_throughput.json")
    p.add_argument("--no-s3", action="store_true", help="skip the run from a local S3 server (moto)")
    args = p.parse_args(argv)
    cfg = PRESETS[args.preset].replace(batch_size=args.batch_size)
    device = torch.device(args.device)
    store_path = args.store
    if store_path is None:
        store_path = str(Path(tempfile.mkdtemp(prefix="pulsefm-bench-")) / "store")
        prepare_main(
            [
                "--synthetic",
                "16",
                "--recordings-per-participant",
                "2",
                "--ppg-seconds",
                "300",
                "--ecg-seconds",
                "150",
                "--out",
                store_path,
            ]
        )
    stores = {"local": SegmentStore(store_path)}
    with contextlib.ExitStack() as stack:
        if not args.no_s3:
            stores["S3"] = stack.enter_context(_on_s3(store_path))
        channels = cfg.encoder.in_channels
        pipelines = [("random", "local"), ("stream", "local")] + (
            [("stream", "S3")] if "S3" in stores else []
        )
        names = [f"{ld} ({where})" for ld, where in pipelines]
        runs: dict[str, list[float]] = {name: [] for name in [*names, "bare"]}
        for _ in range(args.repeats):  # interleaved, so that drifts (thermal, other load) hit all alike
            for ld, where in pipelines:
                runs[f"{ld} ({where})"].append(
                    bench_full(cfg, stores[where], device, args.warmup, args.steps, ld)
                )
            runs["bare"].append(bench_bare(cfg, channels, device, args.warmup, args.steps))
    med = {k: float(np.median(v)) for k, v in runs.items()}
    b = med["bare"]
    result = {
        "benchmark": "train_throughput",
        "preset": args.preset,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "data": "SYNTHETIC store" if args.store is None else store_path,
        "segments_per_s": med,
        "ratio_over_bare": {k: v / b for k, v in med.items() if k != "bare"},
        # the figures of earlier runs, kept under their old names
        "full_pipeline_segments_per_s": med["random (local)"],
        "bare_loop_segments_per_s": b,
        "ratio_full_over_bare": med["random (local)"] / b,
        "goal_ratio": 0.8,
    }
    print(f"\ntrain throughput ({args.preset}, batch {args.batch_size} pairs, {result['device']})")
    print(f"{'pipeline':<34}{'segments/s':>12}{'/ bare':>10}")
    for k, v in med.items():
        print(f"{k:<34}{v:>12.1f}{v / b:>10.3f}")
    print("goal: every pipeline >= 0.8 x bare")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    from benchmarks.gateway import write_results_md

    print(f"wrote {args.json} and {write_results_md(Path(args.json).parent)}")
    return result


def markdown_section(doc: dict[str, Any]) -> str:
    """The training-throughput section of RESULTS.md."""
    rows = "\n".join(
        f"| {k} | {v:.1f} | {doc.get('ratio_over_bare', {}).get(k, 1.0):.3f} |"
        for k, v in doc.get("segments_per_s", {"random (local)": doc["full_pipeline_segments_per_s"],
                                               "bare": doc["bare_loop_segments_per_s"]}).items()
    )  # fmt: skip
    return (
        f"## Training input pipeline vs a bare loop ({doc['preset']}, batch {doc['batch_size']} pairs, "
        f"{doc['device']})\n\n"
        f"`python -m benchmarks.train_throughput --preset {doc['preset']} --batch-size {doc['batch_size']} "
        f"--steps {doc['steps']} --repeats {doc['repeats']}`; {doc['machine']}, torch {doc['torch']}; "
        f"{doc['data']}; the S3 run reads the same store from a real S3 server on loopback (moto). "
        f"Median of {doc['repeats']} interleaved repeats.\n\n"
        "| pipeline | segments/s | / bare (goal >= 0.8) |\n|---|---|---|\n" + rows + "\n"
    )


if __name__ == "__main__":
    main()
