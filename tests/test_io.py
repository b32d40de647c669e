from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pulsefm.io import find_recordings, read_record
from pulsefm.records import Modality, Record, RecordError

FS = 128.0
SIG = np.vstack([np.sin(np.arange(1280) / 10.0), np.cos(np.arange(1280) / 7.0)])  # (2, 1280)


def test_wfdb_roundtrip(tmp_path: Path) -> None:
    import wfdb

    wfdb.wrsamp(
        "rec",
        fs=FS,
        units=["mV", "mV"],
        sig_name=["I", "II"],
        p_signal=SIG.T,
        fmt=["16", "16"],
        write_dir=str(tmp_path),
    )
    rec = read_record(tmp_path / "rec.hea", participant_id="p1", modality="ecg")
    assert rec.channel_names == ("I", "II")
    assert rec.fs == FS
    assert rec.participant_id == "p1" and rec.modality is Modality.ECG
    np.testing.assert_allclose(rec.signal, SIG, atol=1e-3)


def test_edf_roundtrip_and_mixed_rates(tmp_path: Path) -> None:
    import pyedflib

    path = tmp_path / "r.edf"
    heads: list[dict[str, str | int | float | None]] = [
        {
            "label": n,
            "dimension": "uV",
            "sample_frequency": fs,
            "physical_min": -2.0,
            "physical_max": 2.0,
            "digital_min": -32768,
            "digital_max": 32767,
        }
        for n, fs in (("PPG", 128), ("ECG", 128), ("ACC", 64))
    ]
    with pyedflib.EdfWriter(str(path), 3, file_type=pyedflib.FILETYPE_EDFPLUS) as w:
        w.setSignalHeaders(heads)
        w.writeSamples([SIG[0].copy(), SIG[1].copy(), SIG[0][::2].copy()])
    rec = read_record(path, channels=["PPG", "ECG"])
    assert rec.fs == 128 and rec.channel_names == ("PPG", "ECG")
    np.testing.assert_allclose(rec.signal, SIG, atol=1e-3)
    with pytest.raises(RecordError, match=r"r\.edf: channels have different sampling rates.*ACC@64Hz"):
        read_record(path)


@pytest.mark.parametrize("suffix", [".edf", ".bdf"])
def test_truncated_or_padded_edf_names_both_sizes_and_prints_nothing(
    tmp_path: Path, suffix: str, capfd: pytest.CaptureFixture[str]
) -> None:
    import pyedflib

    path = tmp_path / f"r{suffix}"
    kind = pyedflib.FILETYPE_EDFPLUS if suffix == ".edf" else pyedflib.FILETYPE_BDFPLUS
    head: dict[str, str | int | float | None] = {
        "label": "ECG",
        "dimension": "uV",
        "sample_frequency": 128,
        "physical_min": -2.0,
        "physical_max": 2.0,
        "digital_min": -32768,
        "digital_max": 32767,
    }
    with pyedflib.EdfWriter(str(path), 1, file_type=kind) as w:
        w.setSignalHeaders([head])
        w.writeSamples([SIG[1].copy()])
    whole = path.read_bytes()
    assert read_record(path).signal.shape == (1, SIG.shape[1])
    for broken in (whole[:-1000], whole + b"\0" * 7):
        path.write_bytes(broken)
        with pytest.raises(RecordError, match=rf"is {len(broken)} bytes, its header describes {len(whole)}"):
            read_record(path)
    assert capfd.readouterr().out == ""  # edflib prints its own refusal to stdout: it never sees these


def test_csv_with_header_time_column_and_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    t_ms = np.arange(SIG.shape[1]) * 1000.0 / FS
    pd.DataFrame({"time_ms": t_ms, "green": SIG[0], "red": SIG[1]}).to_csv(path, index=False)
    (tmp_path / "a.csv.json").write_text(json.dumps({"participant_id": "alice", "modality": "ppg"}))
    rec = read_record(path)
    assert rec.fs == pytest.approx(FS)
    assert rec.channel_names == ("green", "red")
    assert rec.participant_id == "alice" and rec.modality is Modality.PPG


def test_csv_headerless_tab_needs_fs(tmp_path: Path) -> None:
    path = tmp_path / "b.tsv"
    np.savetxt(path, SIG.T, delimiter="\t")
    with pytest.raises(RecordError, match=r"b\.tsv: sampling rate unknown"):
        read_record(path)
    rec = read_record(path, fs=FS)
    assert rec.signal.shape == (2, 1280)


def test_csv_irregular_timestamps_are_interpolated(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.uniform(0.5, 1.5, 2000)) / 50.0  # ~50 Hz with heavy jitter
    path = tmp_path / "j.csv"
    pd.DataFrame({"time": t, "ppg": np.sin(2 * np.pi * 1.2 * t)}).to_csv(path, index=False)
    rec = read_record(path)
    assert rec.metadata["time_stamps"] == "interpolated"
    assert rec.fs == pytest.approx(50, rel=0.05)
    grid = np.arange(rec.n_samples) / rec.fs
    np.testing.assert_allclose(rec.signal[0], np.sin(2 * np.pi * 1.2 * (grid + t[0])), atol=0.05)


def test_hdf5_parquet_numpy(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as fh:
        ds = fh.create_dataset("signal", data=SIG.T)  # (samples, channels): orientation is inferred
        ds.attrs["fs"] = FS
        ds.attrs["channels"] = ["a", "b"]
    rec = read_record(tmp_path / "x.h5")
    assert rec.channel_names == ("a", "b") and rec.fs == FS
    np.testing.assert_allclose(rec.signal, SIG)

    table = pa.Table.from_pandas(pd.DataFrame({"a": SIG[0], "b": SIG[1]})).replace_schema_metadata(
        {b"fs": b"128"}
    )
    pq.write_table(table, tmp_path / "x.parquet")
    rec = read_record(tmp_path / "x.parquet")
    assert rec.fs == FS and rec.channel_names == ("a", "b")

    np.save(tmp_path / "x.npy", SIG)
    assert read_record(tmp_path / "x.npy", fs=FS).signal.shape == (2, 1280)
    np.savez(tmp_path / "x.npz", signal=SIG, fs=FS)
    assert read_record(tmp_path / "x.npz").fs == FS


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("empty.csv", b"", "file is empty"),
        ("text.csv", b"a,b\nx,y\nz,w\n", "no numeric columns"),
        ("bad.h5", b"not hdf5", "not a readable HDF5 file"),
        ("bad.npy", b"garbage", "not a readable NumPy file"),
        ("bad.edf", b"garbage", "not a readable EDF"),
        ("bad.parquet", b"garbage", "not a readable Parquet file"),
        ("x.wav", b"RIFF", "unsupported file type"),
    ],
)
def test_bad_files_name_file_and_problem(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(RecordError, match=match) as info:
        read_record(path, fs=100)
    assert name in str(info.value)


def test_missing_wfdb_and_channel(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="WFDB header"):
        read_record(tmp_path / "nope.hea")
    np.save(tmp_path / "y.npy", SIG)
    with pytest.raises(RecordError, match=r"channels \['zz'\] not found"):
        read_record(tmp_path / "y.npy", fs=FS, channels=["zz"])


def test_record_validation() -> None:
    with pytest.raises(RecordError, match="channel names"):
        Record(SIG, ("a",), FS, "p", "r")
    with pytest.raises(RecordError, match="sampling rate"):
        Record(SIG, ("a", "b"), 0.0, "p", "r")


def test_find_recordings(tmp_path: Path) -> None:
    (tmp_path / "p1").mkdir()
    np.save(tmp_path / "p1" / "a.npy", SIG)
    (tmp_path / "p1" / "a.npy.json").write_text("{}")
    (tmp_path / "notes.md").write_text("x")
    assert [p.name for p in find_recordings(tmp_path)] == ["a.npy"]
