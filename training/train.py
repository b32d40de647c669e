"""`pulse-fm train`: participant-level contrastive pretraining (single process or torchrun/DDP).

    pulse-fm train --preset tiny --store stores/syn200 --out runs/tiny
    torchrun --nproc_per_node 8 -m training.train --preset ppg --store S --out runs/ppg   # multi-GPU
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m training.train --preset ppg --store S --out runs/ppg                          # multi-node

Outputs in --out: ckpt.pt (config, encoder, head, teacher, optimizer, scheduler, step),
encoder.pt (config + encoder weights, for embedding/export), metrics.jsonl, config.json.
Rerunning the same command resumes from ckpt.pt exactly (batches are a function of seed and step).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from pulsefm import contract as C
from pulsefm.cli import HelpFormatter
from pulsefm.preprocess import spec_for
from training.augment import AUGMENT_PRESETS, Compose
from training.config import PRESETS, TrainConfig, apply_overrides
from training.loss import ContrastiveLoss
from training.model import ContrastiveModel, EfficientNet1d, ProjectionHead, count_parameters
from training.sampler import PairBatch, PairSampler
from training.storage import atomic_write
from training.store import SegmentStore, split_participants
from training.stream import ShardStream


# ------------------------------------------------------------------------------------ building
def build_model(cfg: TrainConfig) -> ContrastiveModel:
    head = ProjectionHead(cfg.encoder.embed_dim, cfg.head_hidden, cfg.head_out, cfg.head_dropout)
    return ContrastiveModel(EfficientNet1d(cfg.encoder), head)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def gather(x: torch.Tensor, d: Dist, with_grad: bool) -> torch.Tensor:
    """Concatenate `x` from every rank (rank order). With grad, gradients flow back to each rank's part."""
    if not d.active:
        return x
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(d.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


# --------------------------------------------------------------------------------------- metrics
def effective_rank(h: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of centred embeddings (Roy & Vetterli 2007)."""
    s = torch.linalg.svdvals((h - h.mean(0)).float())
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


def alignment_uniformity(z1: torch.Tensor, z2: torch.Tensor) -> tuple[float, float]:
    """Wang & Isola (2020): alignment E||z1 - z2||^2, uniformity log E exp(-2 ||zi - zj||^2)."""
    a = nn.functional.normalize(z1.float(), dim=1)
    b = nn.functional.normalize(z2.float(), dim=1)
    align = (a - b).pow(2).sum(1).mean()
    sq = torch.pdist(a).pow(2)
    return float(align), float(sq.mul(-2).exp().mean().log())


# ------------------------------------------------------------------------------------------ step
def contrastive_step(
    model: nn.Module,
    teacher: nn.Module | None,
    loss_fn: ContrastiveLoss,
    v1: torch.Tensor,
    v2: torch.Tensor,
    groups: torch.Tensor,
    d: Dist,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss on the global batch (embeddings gathered across ranks, with gradient).

    Each rank computes the same global loss; the all_gather backward sums every rank's
    contribution, and DDP's gradient averaging then yields exactly the single-process gradient.
    Returns (losses, local backbone embeddings of both views, local projections s1, s2).
    """
    b = v1.shape[0]
    h, z = model(torch.cat([v1, v2]))  # one forward for both views: (2b, 256), (2b, out)
    s1, s2 = z[:b], z[b:]
    if teacher is not None:
        with torch.no_grad():
            _, zt = teacher(torch.cat([v2, v1]))  # teacher sees the other view
        t2, t1 = zt[:b], zt[b:]
        t1g, t2g = gather(t1.float(), d, False), gather(t2.float(), d, False)
    s1g, s2g = gather(s1.float(), d, True), gather(s2.float(), d, True)
    if teacher is None:
        t1g, t2g = s1g, s2g
    losses = loss_fn(s1g, s2g, t1g, t2g, gather(groups, d, False))
    return losses, h.detach(), s1.detach(), s2.detach()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
    for bt, bs in zip(teacher.buffers(), student.buffers(), strict=True):
        bt.copy_(bs)


def autocast_for(cfg: TrainConfig, device: torch.device) -> Callable[[], Any]:
    """bf16 autocast on CUDA when the config asks for it; otherwise a no-op context."""
    if cfg.bf16 and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def optimisation_step(
    net: nn.Module,
    model: nn.Module,
    teacher: nn.Module | None,
    loss_fn: ContrastiveLoss,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    d: Dist,
    momentum: float,
    autocast: Callable[[], Any] = nullcontext,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward, backward, Adam step and EMA update. `net` is `model`, or its DDP wrapper."""
    with autocast():
        out = contrastive_step(net, teacher, loss_fn, *batch, d)
    optimizer.zero_grad(set_to_none=True)
    out[0]["loss"].backward()
    optimizer.step()
    if teacher is not None:
        ema_update(teacher, model, momentum)
    return out


# ------------------------------------------------------------------------------------------- data
class PairLoader:
    """store rows -> (view1, view2, groups) tensors; batches prepared one step ahead in a thread."""

    def __init__(
        self,
        store: SegmentStore,
        batches: Callable[[int], PairBatch],
        augment: Compose,
        d: Dist,
        seed: int,
        device: torch.device,
    ) -> None:
        """`batches(step)`: this rank's pairs at `step` (store rows)."""
        self.store, self.batches, self.augment = store, batches, augment
        self.d, self.seed, self.device = d, seed, device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")

    def make(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.batches(step)
        x = torch.from_numpy(self.store.load(np.concatenate([batch.rows_a, batch.rows_b])))
        # The random draws come from a CPU generator, so a batch's augmentations are the same on
        # any device; the arithmetic on the signals runs where the model does (on a GPU, the CPU
        # work of augmenting a 256-pair batch would otherwise starve it).
        x = x.to(self.device, non_blocking=True)
        x = self.augment(x, torch.Generator().manual_seed(hash_seed(self.seed, step, self.d.rank)))
        v1, v2 = x.chunk(2)
        return v1.contiguous(), v2.contiguous(), torch.from_numpy(batch.groups.astype(np.int64))

    def iterate(
        self, start: int, stop: int
    ) -> Iterator[tuple[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        nxt: Future[Any] | None = self._pool.submit(self.make, start) if start < stop else None
        for step in range(start, stop):
            assert nxt is not None
            item = nxt.result()
            nxt = self._pool.submit(self.make, step + 1) if step + 1 < stop else None
            yield step, tuple(t.to(self.device, non_blocking=True) for t in item)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def train_batches(
    cfg: TrainConfig, store: SegmentStore, rows: np.ndarray, sampler: PairSampler, d: Dist
) -> Callable[[int], PairBatch]:
    """This rank's training pairs per step: its slice of the global random batch, or its own
    shard stream (cfg.loader == "stream")."""
    if cfg.loader == "stream":
        codes = pd.factorize(store.manifest["participant_id"])[0]  # the same participant code on every rank
        stream = ShardStream(
            rows, codes[rows], store.shard_codes(rows), d.rank, d.world, cfg.seed, cfg.shuffle_buffer
        )
        return functools.partial(stream.batch, per_rank=cfg.batch_size // d.world)
    return lambda step: sampler.batch(step, cfg.batch_size).slice(d.rank, d.world)


def hash_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# ------------------------------------------------------------------------------------- checkpoint
def save_atomic(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def encoder_artifact(
    cfg: TrainConfig, model: ContrastiveModel, step: int, store_info: dict[str, Any]
) -> dict[str, Any]:
    spec = spec_for(cfg.modality)
    return {
        "kind": "pulse-fm-encoder",
        "modality": cfg.modality,
        "encoder_config": cfg.encoder.to_dict(),
        "preprocess": spec.to_dict(),
        "state_dict": model.encoder.state_dict(),
        "step": step,
        "train_config": cfg.to_dict(),
        "store": {
            "source": store_info.get("settings", {}).get("source"),
            "counts": store_info.get("counts"),
        },
    }


# ----------------------------------------------------------------------------------------- train
def train(
    cfg: TrainConfig,
    store_path: str | Path,
    out: str | Path,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    d = init_distributed(dev)
    if d.active and dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", d.rank)))
        torch.cuda.set_device(dev)
    if cfg.batch_size % d.world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by world size {d.world}")
    out = Path(out)
    store = SegmentStore(store_path)
    rows = store.indices(cfg.modality)
    if rows.size == 0:
        raise ValueError(f"{store_path}: no {cfg.modality} segments")
    pids = store.manifest["participant_id"].to_numpy()
    split = split_participants(
        pids[rows],
        (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction),
        cfg.split_seed,
    )
    part = np.array([split[p] for p in pids[rows]])
    train_sampler = PairSampler(rows[part == "train"], pids[rows][part == "train"], cfg.positives, cfg.seed)
    val_rows = rows[part == "val"]
    val_sampler = (
        PairSampler(val_rows, pids[val_rows], cfg.positives, cfg.seed + 1) if val_rows.size else None
    )

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(dev)
    teacher: nn.Module | None = None
    if cfg.use_momentum:
        teacher = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_intervals, cfg.lr_gamma)
    start = 0
    ckpt_path = out / "ckpt.pt"
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=dev, weights_only=False)
        saved = TrainConfig.from_dict(ckpt["config"])
        if saved.replace(steps=cfg.steps) != cfg:
            raise SystemExit(f"error: {out} holds a run with another config; use another --out")
        model.encoder.load_state_dict(ckpt["encoder"])
        model.head.load_state_dict(ckpt["head"])
        if teacher is not None:
            teacher.load_state_dict(ckpt["teacher"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start = int(ckpt["step"])
        if d.main:
            print(f"resuming {out} from step {start}")
    if cfg.sync_bn and d.active and dev.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if teacher is not None:
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if d.active else model
    loss_fn = ContrastiveLoss(cfg.temperature, cfg.koleo_weight)
    loader = PairLoader(
        store,
        train_batches(cfg, store, rows[part == "train"], train_sampler, d),
        AUGMENT_PRESETS[cfg.augment],
        d,
        cfg.seed,
        dev,
    )
    autocast = autocast_for(cfg, dev)

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        n_enc, n_head = count_parameters(model.encoder), count_parameters(model.head)
        print(
            f"[{cfg.preset}] {cfg.modality} encoder {n_enc:,} params, head {n_head:,} params; "
            f"{train_sampler.n_participants} train participants "
            f"({train_sampler.dropped} with < 2 segments left out), "
            f"{len(val_rows)} val segments; device {dev}, world {d.world}; store {store_path}"
        )
    if d.main and start and (out / "metrics.jsonl").is_file():
        # lines logged after the checkpoint we resume from are replayed: drop them, no duplicates
        kept = [m for m in read_metrics(out) if m["step"] <= start]
        atomic_write(
            out / "metrics.jsonl", lambda tmp: tmp.write_text("".join(json.dumps(m) + "\n" for m in kept))
        )
    metrics_file = (out / "metrics.jsonl").open("a") if d.main else None
    last: dict[str, Any] = {}

    def log(record: dict[str, Any]) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()

    def validate(step: int) -> dict[str, float]:
        if val_sampler is None:
            return {}
        model.eval()
        if teacher is not None:
            teacher.eval()
        vloader = PairLoader(
            store,
            functools.partial(val_sampler.batch, batch_size=cfg.batch_size),
            AUGMENT_PRESETS[cfg.augment],
            Dist(),
            cfg.seed + 1,
            dev,
        )
        losses, hs = [], []
        with torch.no_grad(), autocast():
            for k in range(cfg.val_batches):
                v1, v2, g = (t.to(dev) for t in vloader.make(k))
                lo, h, _, _ = contrastive_step(model, teacher, loss_fn, v1, v2, g, Dist())
                losses.append(float(lo["loss"]))
                hs.append(h)
        vloader.close()
        model.train()
        if teacher is not None:
            teacher.train()
        return {"val_loss": float(np.mean(losses)), "val_effective_rank": effective_rank(torch.cat(hs))}

    def checkpoint(step: int) -> None:
        if not d.main:
            return
        save_atomic(
            {
                "config": cfg.to_dict(),
                "step": step,
                "encoder": model.encoder.state_dict(),
                "head": model.head.state_dict(),
                "teacher": teacher.state_dict() if teacher else None,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            },
            ckpt_path,
        )
        save_atomic(encoder_artifact(cfg, model, step, store.info), out / "encoder.pt")

    model.train()
    t_last, n_last = time.perf_counter(), 0
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc=f"train {cfg.preset}",
        unit="step",
        disable=not (progress and d.main) or None,
    )
    try:
        for step, (v1, v2, groups) in loader.iterate(start, cfg.steps):
            torch.manual_seed(hash_seed(cfg.seed, step, d.rank, 7))  # dropout / drop-path: a function of step
            losses, h, s1, s2 = optimisation_step(
                net, model, teacher, loss_fn, optimizer, (v1, v2, groups), d, cfg.momentum, autocast
            )
            n_last += v1.shape[0] * 2 * d.world
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                now = time.perf_counter()
                align, unif = alignment_uniformity(s1, s2)
                last = {
                    "step": done,
                    **{k: float(v.detach()) for k, v in losses.items()},
                    "lr": optimizer.param_groups[0]["lr"],
                    "alignment": align,
                    "uniformity": unif,
                    "effective_rank": effective_rank(h),
                    "segments_per_s": n_last / (now - t_last),
                }
                t_last, n_last = now, 0
                log(last)
                bar.set_postfix(loss=f"{last['loss']:.3f}", rank=f"{last['effective_rank']:.1f}")
            if done % cfg.val_every == 0 or done == cfg.steps:
                val = validate(done) if d.main else {}
                scheduler.step()
                if val:
                    log({"step": done, **val})
                    last.update(val)
                checkpoint(done)
                if d.active:
                    dist.barrier()
            bar.update()
    finally:
        bar.close()
        loader.close()
        if metrics_file is not None:
            metrics_file.close()
    if d.main and start < cfg.steps:
        from training.plots import plot_training_curves

        source = store.source
        plot_training_curves(
            read_metrics(out),
            out / C.CURVES_FILE,
            f"{cfg.preset} ({cfg.modality}) on {'SYNTHETIC data' if source == 'synthetic' else source}",
        )
        print(
            f"done: step {cfg.steps}, loss {last.get('loss', float('nan')):.4f}, "
            f"val_loss {last.get('val_loss', float('nan')):.4f}, "
            f"effective rank {last.get('effective_rank', float('nan')):.1f}; wrote {out}/encoder.pt"
        )
    if d.active:
        dist.destroy_process_group()
    return last


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse-fm train", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size and schedule")
    p.add_argument("--store", required=True, help="segment store made by `pulse-fm prepare`")
    p.add_argument("--out", required=True, help="run folder (resumed if it holds ckpt.pt)")
    p.add_argument("--steps", type=int, help="total optimisation steps")
    p.add_argument("--batch-size", type=int, help="global batch size (all ranks together)")
    p.add_argument("--modality", choices=["ppg", "ecg"])
    p.add_argument(
        "--positives", choices=["participant", "segment"], help="positive pairs (ablation: segment)"
    )
    p.add_argument("--no-momentum", action="store_true", help="plain SimCLR: no EMA teacher")
    p.add_argument("--koleo-weight", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other config field, e.g. --set lr=3e-4 --set encoder.width=0.5",
    )
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = PRESETS[args.preset]
    direct = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "modality": args.modality,
        "positives": args.positives,
        "koleo_weight": args.koleo_weight,
        "seed": args.seed,
    }
    cfg = cfg.replace(**{k: v for k, v in direct.items() if v is not None})
    if args.modality == "ecg" and cfg.encoder.in_channels != 1:
        cfg = cfg.replace(**{"encoder.in_channels": 1, "augment": "ecg"})
    if args.no_momentum:
        cfg = cfg.replace(use_momentum=False)
    return apply_overrides(cfg, args.set)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train(cfg, args.store, args.out, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
