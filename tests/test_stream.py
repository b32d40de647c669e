"""The streaming loader (training/stream.py) and stores on object storage (training/storage.py):
each rank its own shards, pairs of one participant, deterministic by (seed, epoch, rank), exact
resume; and, against a real S3 server on loopback (moto's), a synthetic store prepared on a local
Dask cluster into S3 and a 2-rank gloo training run streaming from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from training.config import PRESETS
from training.store import SegmentStore
from training.stream import ShardStream
from training.train import read_metrics, train

ROOT = Path(__file__).resolve().parents[1]


def _manifest(shards: int = 6, per_shard: int = 5, segments: int = 4) -> tuple[np.ndarray, ...]:
    """rows, participant codes, shard codes: `per_shard` participants of `segments` each per shard."""
    groups = np.repeat(np.arange(shards * per_shard), segments)
    shard = groups // per_shard
    rows = np.arange(groups.size) * 3 + 1  # manifest rows need not be contiguous
    perm = np.random.default_rng(0).permutation(groups.size)  # the manifest order does not matter
    return rows[perm], groups[perm], shard[perm]


def test_pairs_are_two_segments_of_one_participant_from_the_ranks_own_shards() -> None:
    rows, groups, shards = _manifest()
    group_of, shard_of = dict(zip(rows, groups, strict=True)), dict(zip(rows, shards, strict=True))
    streams = [ShardStream(rows, groups, shards, rank=r, world=2, seed=1, buffer=16) for r in range(2)]
    for epoch in range(3):
        mine = [set(s.shards_of(epoch)) for s in streams]
        assert not mine[0] & mine[1] and mine[0] | mine[1] == set(range(6))  # a partition per epoch
    seen: list[set[int]] = [set(), set()]
    for r, s in enumerate(streams):
        for step in range(20):
            b = s.batch(step, 8)
            assert len(b.rows_a) == 8
            assert all(a != c for a, c in zip(b.rows_a, b.rows_b, strict=True))
            assert all(
                group_of[a] == group_of[c] == g for a, c, g in zip(b.rows_a, b.rows_b, b.groups, strict=True)
            )
            seen[r] |= {int(shard_of[a]) for a in b.rows_a}
    first = set(streams[0].shards_of(0))
    assert seen[0] >= first  # the first epoch's shards are all read before the next epoch's


def test_the_stream_is_a_function_of_seed_rank_and_step() -> None:
    rows, groups, shards = _manifest()
    a = ShardStream(rows, groups, shards, rank=1, world=2, seed=3, buffer=32)
    straight = [a.batch(step, 8) for step in range(30)]
    b = ShardStream(rows, groups, shards, rank=1, world=2, seed=3, buffer=32)
    resumed = b.batch(17, 8)  # a resumed run asks for step 17 first
    assert np.array_equal(resumed.rows_a, straight[17].rows_a)
    assert np.array_equal(resumed.rows_b, straight[17].rows_b)
    assert np.array_equal(b.batch(18, 8).rows_a, straight[18].rows_a)
    other = ShardStream(rows, groups, shards, rank=1, world=2, seed=4, buffer=32)
    assert not np.array_equal(other.batch(0, 8).rows_a, straight[0].rows_a)
    # every pairable segment is an anchor once per epoch
    one = ShardStream(rows, groups, shards, world=1, seed=0, buffer=1)
    anchors = np.concatenate([one.batch(s, 10).rows_a for s in range(12)])  # 120 = one epoch
    assert sorted(anchors) == sorted(rows)


def test_too_few_shards_or_no_pairs_are_refused_with_the_reason() -> None:
    rows, groups, shards = _manifest(shards=1)
    with pytest.raises(ValueError, match="1 shard"):
        ShardStream(rows, groups, shards, world=2)
    with pytest.raises(ValueError, match="two segments"):
        ShardStream(np.arange(4), np.arange(4), np.zeros(4))


def test_training_from_the_stream_resumes_exactly(small_store: Path, tmp_path: Path) -> None:
    cfg = PRESETS["tiny"].replace(
        batch_size=8, steps=6, val_every=3, log_every=1, val_batches=1, loader="stream"
    )
    train(cfg, small_store, tmp_path / "straight", progress=False)
    train(cfg.replace(steps=3), small_store, tmp_path / "resumed", progress=False)
    train(cfg, small_store, tmp_path / "resumed", progress=False)
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=False)
    for k in a["encoder"]:
        torch.testing.assert_close(a["encoder"][k], b["encoder"][k], rtol=0, atol=0, msg=k)


@pytest.mark.slow  # a moto server, a Dask cluster and two training processes (~1.5 min)
def test_prepare_on_dask_into_s3_then_two_ranks_stream_from_it(tmp_path: Path) -> None:
    pytest.importorskip("s3fs")
    pytest.importorskip("distributed")
    from training.cluster import local_cluster
    from training.s3_local import local_s3

    cohort = ["--synthetic", "8", "--chunk", "2", "--ppg-seconds", "130", "--ecg-seconds", "40",
              "--recordings-per-participant", "2", "--seed", "5"]  # fmt: skip
    url = "s3://pulsefm/stores/syn8"
    digest = [sys.executable, str(ROOT / "scripts" / "store_digest.py")]
    with local_s3(), local_cluster(2) as (address, _):
        cli = [sys.executable, "-m", "pulsefm.cli", "prepare", *cohort]
        subprocess.run(
            [*cli, "--out", url, "--engine", "dask", "--address", address], check=True, env=os.environ
        )
        subprocess.run([*cli, "--out", str(tmp_path / "local"), "--workers", "1"], check=True)
        remote = subprocess.run([*digest, url], capture_output=True, text=True, check=True).stdout
        local = subprocess.run([*digest, str(tmp_path / "local")], capture_output=True, text=True, check=True)
        assert remote == local.stdout, "the store on S3 differs from the single-machine one"
        assert SegmentStore(url).location.local is None  # really read over S3, not a local copy
        model = ROOT / "model_repository" / "ppg_encoder" / "2" / "model.onnx"
        emb = tmp_path / "emb.parquet"
        subprocess.run(
            [*cli[:3], "embed", "--model", str(model), "--store", url, "--out", str(emb)], check=True
        )
        assert len(pd.read_parquet(emb)) == len(SegmentStore(url).indices("ppg"))

        run = tmp_path / "run"
        sets = [
            "loader=stream",
            "batch_size=8",
            "val_every=2",
            "log_every=1",
            "val_batches=1",
            "shuffle_buffer=16",
        ]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "training.train", "--preset", "tiny", "--store", url, "--out", str(run), "--steps", "4",
               "--device", "cpu", *[a for s in sets for a in ("--set", s)]]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert done.returncode == 0, done.stderr[-3000:]
    losses = [m for m in read_metrics(run) if "loss" in m]
    assert [m["step"] for m in losses][-1] == 4 and all(np.isfinite(m["loss"]) for m in losses)
    config = json.loads((run / "config.json").read_text())
    assert config["loader"] == "stream"
    art = torch.load(run / "encoder.pt", weights_only=False)
    assert art["modality"] == "ppg"
