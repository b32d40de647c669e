from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from training.config import PRESETS
from training.loss import ContrastiveLoss
from training.train import Dist, build_model, contrastive_step, main, read_metrics, train

TEST_CFG = PRESETS["tiny"].replace(batch_size=8, steps=6, val_every=3, log_every=1, val_batches=1)


@pytest.mark.slow  # ~1 min: `make test-slow`, which CI runs after the fast suite when time allows
def test_tiny_training_loss_falls(small_store: Path, tmp_path: Path) -> None:
    cfg = PRESETS["tiny"].replace(batch_size=16, steps=80, val_every=40, log_every=5)
    train(cfg, small_store, tmp_path / "run", progress=False)
    m = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    # single batches are noisy (one step's loss moves by ~0.3): compare the first and last 3 logged
    first, last = (sum(r["loss"] for r in w) / 3 for w in (m[:3], m[-3:]))
    assert last < 0.8 * first, [round(r["loss"], 2) for r in m]
    for key in ("alignment", "uniformity", "effective_rank", "info_nce", "koleo", "lr"):
        assert key in m[-1]
    assert any("val_loss" in r for r in read_metrics(tmp_path / "run"))
    assert (tmp_path / "run" / "curves.png").stat().st_size > 10_000
    art = torch.load(tmp_path / "run" / "encoder.pt", weights_only=False)
    assert art["modality"] == "ppg" and art["preprocess"]["version"].startswith("ppg-r1-")
    enc_keys = set(art["state_dict"])
    assert enc_keys and not any(k.startswith("net.") for k in enc_keys)  # projection head saved apart


def test_resume_is_exact(small_store: Path, tmp_path: Path) -> None:
    train(TEST_CFG, small_store, tmp_path / "straight", progress=False)
    train(TEST_CFG.replace(steps=3), small_store, tmp_path / "resumed", progress=False)
    with (tmp_path / "resumed" / "metrics.jsonl").open(
        "a"
    ) as fh:  # logged after the checkpoint, then a crash
        fh.write(json.dumps({"step": 4, "loss": -1.0}) + "\n")
    train(TEST_CFG, small_store, tmp_path / "resumed", progress=False)  # picks up at step 3
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 6
    for part in ("encoder", "head", "teacher"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=0, atol=0, msg=f"{part}.{k}")
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    steps = [m["step"] for m in read_metrics(tmp_path / "resumed") if "loss" in m]
    assert steps == sorted(set(steps)) and all(
        m.get("loss") != -1.0 for m in read_metrics(tmp_path / "resumed")
    )


def test_refuses_other_config_in_same_folder(small_store: Path, tmp_path: Path) -> None:
    train(TEST_CFG.replace(steps=3), small_store, tmp_path / "r", progress=False)
    with pytest.raises(SystemExit, match="another config"):
        train(TEST_CFG.replace(lr=0.5), small_store, tmp_path / "r", progress=False)


@pytest.mark.parametrize(
    "flags", [["--no-momentum"], ["--positives", "segment", "--koleo-weight", "0"], ["--modality", "ecg"]]
)
def test_cli_ablation_modes(small_store: Path, tmp_path: Path, flags: list[str]) -> None:
    rc = main(
        [
            "--preset",
            "tiny",
            "--store",
            str(small_store),
            "--out",
            str(tmp_path / "r"),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--set",
            "val_every=2",
            *flags,
        ]
    )
    assert rc == 0
    assert (tmp_path / "r" / "encoder.pt").is_file()


# ------------------------------------------------------------------------------ DDP (gloo, CPU)
def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    v1 = torch.randn(8, 4, 3840, generator=gen)
    v2 = torch.randn(8, 4, 3840, generator=gen)
    return v1, v2, torch.tensor([0, 1, 2, 3, 3, 4, 5, 6])  # rows 3 and 4: same participant


def _model(use_teacher: bool) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    torch.manual_seed(0)
    cfg = TEST_CFG.replace(head_dropout=0.0, **{"encoder.drop_path": 0.0})
    model = build_model(cfg)
    # BatchNorm statistics are per rank under DDP on CPU (SyncBatchNorm needs CUDA), so the
    # comparison uses running statistics; everything else (gather, masking, gradients) is exercised.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.eval()
    teacher = build_model(cfg).eval() if use_teacher else None
    return model, teacher


def _ddp_worker(rank: int, world: int, port: int, use_teacher: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    model, teacher = _model(use_teacher)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    v1, v2, g = _batch()
    per = v1.shape[0] // world
    s = slice(rank * per, (rank + 1) * per)
    losses, *_ = contrastive_step(
        ddp, teacher, ContrastiveLoss(0.1, 0.1), v1[s], v2[s], g[s], Dist(rank, world)
    )
    losses["loss"].backward()
    if rank == 0:
        torch.save(
            {"loss": losses["loss"].detach(), "grads": {n: p.grad for n, p in model.named_parameters()}}, out
        )
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return int(sk.getsockname()[1])


@pytest.mark.parametrize("use_teacher", [True, False])
def test_ddp_two_processes_match_single_process(tmp_path: Path, use_teacher: bool) -> None:
    model, teacher = _model(use_teacher)
    v1, v2, g = _batch()
    ref, *_ = contrastive_step(model, teacher, ContrastiveLoss(0.1, 0.1), v1, v2, g, Dist())
    ref["loss"].backward()
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), use_teacher, out), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)
    torch.testing.assert_close(got["loss"], ref["loss"].detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
