"""`prepare --engine dask` on a real local Dask cluster: a scheduler and two workers as separate
processes on loopback. A worker killed mid-run and a driver killed mid-run both end in the store a
single machine builds (same digest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from training.prepare import main as prepare_main

pytest.importorskip("distributed")
COHORT = ["--synthetic", "8", "--chunk", "1", "--ppg-seconds", "70", "--ecg-seconds", "40",
          "--recordings-per-participant", "1", "--seed", "3"]  # fmt: skip


@pytest.fixture()
def cluster() -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    from training.cluster import local_cluster

    with local_cluster(2) as (address, workers):
        yield address, workers


def digest(store: str) -> str:
    """scripts/store_digest.py's output for a store (what two machines compare)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "store_digest.py"
    return subprocess.run(
        [sys.executable, str(script), store], capture_output=True, text=True, check=True
    ).stdout


def _parts(store: Path) -> int:
    return len(list((store / "parts").glob("?????.parquet"))) if (store / "parts").is_dir() else 0


def _wait_for_parts(store: Path, n: int, driver: subprocess.Popen[bytes]) -> None:
    """Until `n` chunks are committed (or the run ends, or 120 s pass)."""
    deadline = time.monotonic() + 120
    while _parts(store) < n and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)


@pytest.mark.slow  # a cluster, three prepare runs (~30 s): in `make test-slow`, which .ci/run runs too
def test_a_killed_worker_and_a_killed_driver_still_give_the_single_machine_store(cluster, tmp_path) -> None:
    address, workers = cluster
    prepare_main([*COHORT, "--out", str(tmp_path / "local"), "--workers", "1"])
    expected = digest(str(tmp_path / "local"))

    # 1. a worker killed once the first chunk is committed: its tasks move to the other worker
    out = tmp_path / "dask"
    cmd = [sys.executable, "-m", "pulsefm.cli", "prepare", *COHORT, "--out", str(out)]
    driver = subprocess.Popen([*cmd, "--engine", "dask", "--address", address], stderr=subprocess.PIPE)
    _wait_for_parts(out, 1, driver)
    assert _parts(out) < 8, "the run ended before a worker could be killed (make the chunks longer)"
    os.kill(workers[0].pid, signal.SIGKILL)
    _, err = driver.communicate(timeout=180)
    assert driver.returncode == 0, err.decode()[-2000:]
    assert digest(str(out)) == expected

    # 2. the driver killed mid-run (the surviving worker serves the rerun): resumed, same store
    out2 = tmp_path / "dask2"
    cmd2 = [sys.executable, "-m", "pulsefm.cli", "prepare", *COHORT, "--out", str(out2)]
    driver = subprocess.Popen([*cmd2, "--engine", "dask", "--address", address], stderr=subprocess.DEVNULL)
    _wait_for_parts(out2, 2, driver)
    driver.kill()
    driver.wait(10)
    done = _parts(out2)
    assert 0 < done < 8, done
    rerun = subprocess.run(
        [*cmd2, "--engine", "dask", "--address", address], capture_output=True, text=True, timeout=180
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming:" in rerun.stdout
    assert digest(str(out2)) == expected


def test_dask_engine_needs_an_address(tmp_path) -> None:
    with pytest.raises(SystemExit, match="--address"):
        prepare_main([*COHORT, "--out", str(tmp_path / "s"), "--engine", "dask"])
