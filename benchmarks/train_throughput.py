"""Training throughput: the full pipeline vs a bare forward/backward loop, same model and batch.

    full  = segment store (memmap) -> pair sampler -> batched augmentation -> step  (prefetch thread)
    bare  = the same optimisation step on tensors already in memory

Prints a table and writes JSON (default benchmarks/results/train_throughput.json). The ratio
full / bare is measured in one run, so machine noise mostly cancels. Goal: >= 0.8.

    python -m benchmarks.train_throughput --preset tiny --batch-size 64 --steps 20
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import tempfile
import time
from collections.abc import Iterable
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
from training.train import Dist, PairLoader, autocast_for, build_model, optimisation_step


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


def bench_full(cfg: TrainConfig, store: SegmentStore, device: torch.device, warmup: int, steps: int) -> float:
    """store (memmap) -> sampler -> augment -> step, with PairLoader's prefetch thread."""
    rows = store.indices(cfg.modality)
    sampler = PairSampler(rows, store.manifest["participant_id"].to_numpy()[rows], cfg.positives, 0)
    loader = PairLoader(store, sampler, AUGMENT_PRESETS[cfg.augment], cfg.batch_size, Dist(), 0, device)
    try:
        return _segments_per_s(cfg, device, (b for _, b in loader.iterate(0, warmup + steps)), warmup)
    finally:
        loader.close()


def bench_bare(cfg: TrainConfig, channels: int, device: torch.device, warmup: int, steps: int) -> float:
    """The same step on one batch of tensors already on the device."""
    gen = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(cfg.batch_size, channels, 3840, generator=gen).to(device),
        torch.randn(cfg.batch_size, channels, 3840, generator=gen).to(device),
        torch.arange(cfg.batch_size).to(device),
    )
    return _segments_per_s(cfg, device, itertools.repeat(batch, warmup + steps), warmup)


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
    store = SegmentStore(store_path)
    channels = cfg.encoder.in_channels
    full: list[float] = []
    bare: list[float] = []
    for _ in range(args.repeats):  # alternate so that drifts (thermal, other load) hit both sides alike
        full.append(bench_full(cfg, store, device, args.warmup, args.steps))
        bare.append(bench_bare(cfg, channels, device, args.warmup, args.steps))
    f, b = float(np.median(full)), float(np.median(bare))
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
        "full_pipeline_segments_per_s": f,
        "bare_loop_segments_per_s": b,
        "ratio_full_over_bare": f / b,
        "goal_ratio": 0.8,
    }
    print(f"\ntrain throughput ({args.preset}, batch {args.batch_size} pairs, {result['device']})")
    print(f"{'pipeline':<34}{'segments/s':>12}")
    print(f"{'full (store->sample->augment->step)':<34}{f:>12.1f}")
    print(f"{'bare (in-memory tensors)':<34}{b:>12.1f}")
    print(f"{'ratio full / bare':<34}{f / b:>12.3f}   (goal >= 0.8)")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
