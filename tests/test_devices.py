"""Device exports: each reader on a file written in that device's layout, as its public description
gives it (Apple Health's ECG export; Empatica's E4 connect CSVs as described in its support pages and
used by WESAD / PPG-DaLiA; OpenSignals (r)evolution's text and HDF5 formats; Polar Sensor Logger's
text files), and on a real file where one ships in a package (OpenSignals: opensignalsreader's
sample, a real BITalino ECG)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pulsefm.datasets import fetch
from pulsefm.io import read_record
from pulsefm.records import RecordError
from tests.conftest import synthetic_ecg


def test_apple_health_ecg_export(tmp_path: Path) -> None:
    ecg = synthetic_ecg(512.0, 30.0) * 1000  # microvolts
    lines = [
        "Name,Jane Appleseed",
        'Date of Birth,"Jan 1, 1970"',
        "Recorded Date,2020-03-28 09:12:34 +0100",
        "Classification,Sinus Rhythm",
        "Symptoms,",
        "Software Version,1.90",
        'Device,"Watch4,4"',
        "Sample Rate,512 hertz",
        "Lead,Lead I",
        "Unit,µV",
        "",
    ] + [f"{v:.3f}" for v in ecg]
    path = tmp_path / "ecg_2020-03-28.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rec = read_record(path)
    assert rec.fs == 512 and rec.channel_names == ("ecg_lead_i",) and rec.n_samples == ecg.size
    np.testing.assert_allclose(rec.signal[0], ecg, atol=1e-3)
    assert rec.metadata["unit"] == "µV" and rec.metadata["classification"] == "Sinus Rhythm"
    # a decimal-comma locale writes quoted samples
    comma = lines[:11] + [f'"{v:.3f}"'.replace(".", ",") for v in ecg[:5000]]
    path.write_text("\n".join(comma) + "\n", encoding="utf-8")
    np.testing.assert_allclose(read_record(path).signal[0], ecg[:5000], atol=1e-3)


def test_empatica_e4_bvp_and_acc(tmp_path: Path) -> None:
    bvp = np.sin(np.arange(64 * 70) / 64 * 2 * np.pi * 1.2) * 50
    path = tmp_path / "BVP.csv"
    path.write_text("1495437325.000000\n64.000000\n" + "\n".join(f"{v:.2f}" for v in bvp) + "\n")
    rec = read_record(path)
    assert rec.fs == 64 and rec.channel_names == ("bvp",) and rec.n_samples == bvp.size
    assert rec.metadata["start_unix_s"] == 1495437325.0
    acc = tmp_path / "ACC.csv"
    acc.write_text("1495437325, 1495437325, 1495437325\n32, 32, 32\n" + "1, 2, 64\n" * 100)
    rec = read_record(acc)
    assert rec.fs == 32 and rec.channel_names == ("acc_x", "acc_y", "acc_z")


def _opensignals_text(path: Path, data: np.ndarray, fs: int) -> None:
    header = {
        "00:07:80:3B:46:61": {
            "sensor": ["ECG", "PPG"],
            "device name": "00:07:80:3B:46:61",
            "column": ["nSeq", "DI", "CH1", "CH2"],
            "sampling rate": fs,
            "label": ["CH1", "CH2"],
            "resolution": [16, 16],
            "device": "biosignalsplux",
        }
    }
    rows = [f"{i % 16}\t0\t{a:.0f}\t{b:.0f}" for i, (a, b) in enumerate(data.T)]
    text = ["# OpenSignals Text File Format", "# " + json.dumps(header), "# EndOfHeader", *rows]
    path.write_text("\n".join(text) + "\n")


def test_opensignals_text_layout_and_sensor_names(tmp_path: Path) -> None:
    data = np.stack([synthetic_ecg(1000.0, 35.0) * 1000 + 32768, np.full(35000, 30000.0)])
    path = tmp_path / "opensignals_000780.txt"
    _opensignals_text(path, data, 1000)
    rec = read_record(path)
    assert rec.fs == 1000 and rec.channel_names == ("ECG", "PPG")
    np.testing.assert_allclose(rec.signal, np.round(data))
    assert read_record(path, channels=["ECG"]).channel_names == ("ECG",)
    assert read_record(path, channels=["1"]).channel_names == ("PPG",)  # by index


def test_opensignals_real_sample_file() -> None:
    """A real BITalino recording exported by OpenSignals (opensignalsreader's sample file)."""
    rec = read_record(fetch("opensignals_sample"))
    assert rec.fs == 1000 and rec.channel_names == ("ECG",) and 20 < rec.duration_s < 25
    assert 0 < rec.signal.min() < rec.signal.max() <= 1023  # BITalino's 10-bit ADC


def test_opensignals_hdf5(tmp_path: Path) -> None:
    import h5py

    ecg = synthetic_ecg(500.0, 40.0)
    path = tmp_path / "opensignals.h5"
    with h5py.File(path, "w") as fh:
        dev = fh.create_group("00:07:80:3B:46:61")
        dev.attrs["sampling rate"] = 500
        dev.attrs["sensor"] = [b"ECG", b"EDA"]
        raw = dev.create_group("raw")
        raw["nSeq"] = np.arange(ecg.size)[:, None]
        raw["channel_1"] = ecg[:, None]
        raw["channel_2"] = np.ones((ecg.size, 1))
        dev.create_group("support")["level_10"] = np.zeros(3)
    rec = read_record(path)
    assert rec.fs == 500 and rec.channel_names == ("ECG", "EDA")
    np.testing.assert_allclose(rec.signal[0], ecg)


def test_polar_sensor_logger_ecg_and_ppg(tmp_path: Path) -> None:
    ecg = synthetic_ecg(130.0, 40.0) * 1000
    t0 = 599_581_209_487_658_496
    rows = [
        f"2022-04-01T12:00:{i // 130:02d}.{i % 130:03d};{t0 + round(i * 1e9 / 130)};"
        f"{i / 130 * 1000:.1f};{v:.0f}"
        for i, v in enumerate(ecg)
    ]
    path = tmp_path / "Polar_H10_A1B2C3D4_20220401_120000_ECG.txt"
    path.write_text(
        "Phone timestamp;sensor timestamp [ns];timestamp [ms];ecg [uV]\n" + "\n".join(rows) + "\n"
    )
    rec = read_record(path)
    assert rec.channel_names == ("ecg",) and rec.fs == pytest.approx(130, rel=1e-6)
    ppg = tmp_path / "Polar_Sense_PPG.txt"
    lines = [f"x;{t0 + round(i * 1e9 / 55)};{i};{i + 1};{i + 2};7" for i in range(55 * 70)]
    ppg.write_text(
        "Phone timestamp;sensor timestamp [ns];channel 0;channel 1;channel 2;ambient\n" + "\n".join(lines)
    )
    rec = read_record(ppg)
    assert rec.channel_names == ("channel 0", "channel 1", "channel 2") and rec.fs == pytest.approx(55)


def test_device_files_with_problems_name_them(tmp_path: Path) -> None:
    bad = tmp_path / "ecg.csv"
    bad.write_text("Sample Rate,512 hertz\nLead,Lead I\n\n1.0\nnot a number\n")
    with pytest.raises(RecordError, match="unexpected line"):
        read_record(bad)
    norate = tmp_path / "ecg2.csv"
    norate.write_text("Lead,Lead I\nUnit,uV\nSample Rate,unknown\n\n" + "1.0\n" * 10)
    with pytest.raises(RecordError, match="pass fs"):
        read_record(norate)
    headless = tmp_path / "os.txt"
    headless.write_text("# OpenSignals Text File Format\n# {}\n1\t2\n")
    with pytest.raises(RecordError, match="EndOfHeader"):
        read_record(headless)
