"""`pulse-fm embed` on recording files as a new user runs it: the help's example, a folder of
files with every kind of problem (each named in the summary table), one file, --stride,
--channels, --random-init from a published model.onnx, an output folder that does not exist."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pulsefm import contract as C
from training.embed import build_parser, embedding_matrix, main

ROOT = Path(__file__).resolve().parents[1]
ECG_MODEL = ROOT / "model_repository" / "ecg_encoder" / "1" / C.MODEL_FILE
EXAMPLES = ROOT / "pulsefm" / "examples"


def test_the_example_in_embed_help_runs(tmp_path, monkeypatch, capsys) -> None:
    doc = build_parser().description or ""
    lines = doc.split("pulse-fm embed ", 2)[1].split("\n")[:2]  # the first example, two lines
    argv = " ".join(line.strip().rstrip("\\").split("#")[0] for line in lines).split()
    monkeypatch.chdir(ROOT)
    out = tmp_path / "emb" / "example.parquet"
    argv[argv.index("--out") + 1] = str(out)
    assert main(argv) == 0
    assert len(pd.read_parquet(out)) == 2  # 75 s of real ECG: two 30 s windows
    assert "mitbih208_75s.csv  ok" in capsys.readouterr().out


def test_help_shows_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "(default: 64)" in text and "(default: segment)" in text


def test_each_file_says_what_happened(tmp_path, capsys) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for f in (EXAMPLES / "ecg").iterdir():
        shutil.copy(f, folder)
    shutil.copy(EXAMPLES / "ppg" / "wrist_130s.csv", folder)
    shutil.copy(EXAMPLES / "ppg" / "wrist_130s.csv.json", folder)
    (folder / "norate.csv").write_text("1\n2\n3\n4\n")
    (folder / "broken.edf").write_bytes(b"\0" * 300)
    (folder / "short.csv").write_text("\n".join(str(np.sin(i / 50)) for i in range(2000)))
    (folder / "short.csv.json").write_text('{"fs": 360}')
    flat = np.zeros(360 * 40)
    (folder / "flat.csv").write_text("\n".join(str(v) for v in flat))
    (folder / "flat.csv.json").write_text('{"fs": 360}')
    out = tmp_path / "new" / "folder" / "emb.parquet"  # does not exist yet
    assert main(["--model", str(ECG_MODEL), "--recordings", str(folder), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    status = {
        line.split()[0]: line.split()[1] for line in table.splitlines()[1:] if line.strip() and "  " in line
    }
    assert status["mitbih208_75s.csv"] == "ok"
    assert status["norate.csv"] == "rate_unknown" and "pass --fs" in table
    assert status["broken.edf"] == "read_error"
    assert status["short.csv"] == "too_short" and "shorter than one 30 s window" in table
    assert status["flat.csv"] == "no_usable_segment" and "flat_line x1" in table
    assert status["wrist_130s.csv"] == "other_modality"
    assert out.is_file() and out.with_suffix(".rejects.csv").is_file()


def test_nothing_usable_exits_1_with_the_reasons(tmp_path, capsys) -> None:
    f = tmp_path / "norate.csv"
    f.write_text("1\n2\n3\n")
    assert (
        main(["--model", str(ECG_MODEL), "--recordings", str(f), "--out", str(tmp_path / "o.parquet")]) == 1
    )
    captured = capsys.readouterr()
    assert "pass --fs" in captured.out and "no usable segment" in captured.err


def test_stride_channels_and_fs_options(tmp_path) -> None:
    x = pd.read_csv(EXAMPLES / "ecg" / "mitbih208_75s.csv")["ecg_mlii_mv"].to_numpy()
    f = tmp_path / "two.csv"
    pd.DataFrame({"resp": np.sin(np.arange(x.size) / 100), "lead_ii": x}).to_csv(f, index=False)
    out = tmp_path / "o.parquet"
    argv = ["--model", str(ECG_MODEL), "--recordings", str(f), "--fs", "360", "--out", str(out)]
    assert main([*argv, "--stride", "15"]) == 0  # ECG lead picked by its name; windows at 0, 15, 30, 45 s
    df = pd.read_parquet(out)
    assert df["start_s"].tolist() == [0, 15, 30, 45]
    assert main([*argv, "--channels", "1"]) == 0  # by index
    np.testing.assert_allclose(
        embedding_matrix(pd.read_parquet(out)), embedding_matrix(df)[[0, 2]], atol=1e-5
    )


def test_random_init_from_a_published_onnx(tmp_path) -> None:
    out = tmp_path / "r.parquet"
    argv = ["--model", str(ECG_MODEL), "--recordings", str(EXAMPLES / "ecg"), "--out", str(out)]
    assert main([*argv, "--random-init", "0"]) == 0
    rand = embedding_matrix(pd.read_parquet(out))
    assert main(argv) == 0
    trained = embedding_matrix(pd.read_parquet(out))
    assert rand.shape == trained.shape and np.isfinite(rand).all()
    assert not np.allclose(rand, trained, atol=1e-3)
