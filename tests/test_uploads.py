"""Recording files posted as multipart/form-data: every format pulsefm.io reads, the form fields
used where the file does not say, the file's problems named (422), hostile forms never a 5xx."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from pulsefm.datasets import fetch
from service.app import create_app
from service.settings import Settings
from tests.conftest import synthetic_ecg
from tests.gateway_helpers import build_repo

ECG_500 = synthetic_ecg(500.0, 70.0)  # SYNTHETIC, 70 s: two 30 s windows, 10 s dropped


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    repo = build_repo(tmp_path_factory.mktemp("up"))
    with TestClient(create_app(Settings(repo=repo))) as c:
        yield c


def post(client, filename: str, data: bytes, endpoint: str = "/v1/embed", **fields: str):
    return client.post(endpoint, files={"file": (filename, data)}, data={"modality": "ecg", **fields})


def _edf(path: Path) -> None:
    import pyedflib

    with pyedflib.EdfWriter(str(path), 2, file_type=pyedflib.FILETYPE_EDFPLUS) as w:
        w.setSignalHeaders(
            [
                {
                    "label": "ECG",
                    "dimension": "mV",
                    "sample_frequency": 500,
                    "physical_max": 5,
                    "physical_min": -5,
                    "digital_max": 32767,
                    "digital_min": -32768,
                },
                {
                    "label": "Resp",
                    "dimension": "a.u.",
                    "sample_frequency": 500,
                    "physical_max": 5,
                    "physical_min": -5,
                    "digital_max": 32767,
                    "digital_min": -32768,
                },
            ]
        )
        w.writeSamples([ECG_500, np.sin(np.arange(ECG_500.size) / 500)])


def _wfdb_zip(tmp: Path) -> bytes:
    import wfdb

    wfdb.wrsamp(
        "rec1", fs=500, units=["mV"], sig_name=["MLII"], p_signal=ECG_500[:, None], write_dir=str(tmp)
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in ("rec1.hea", "rec1.dat"):
            zf.write(tmp / f, f"record/{f}")
    return buf.getvalue()


def _files(tmp: Path) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """One recording in every supported container: name -> (filename, bytes, extra form fields)."""
    import h5py

    out: dict[str, tuple[str, bytes, dict[str, str]]] = {}
    out["csv"] = ("rec.csv", "\n".join(f"{v:.5f}" for v in ECG_500).encode(), {"fs": "500"})
    t = np.arange(ECG_500.size) / 500
    out["csv-time"] = (
        "rec.csv",
        ("time,ecg\n" + "\n".join(f"{a:.4f},{b:.5f}" for a, b in zip(t, ECG_500, strict=True))).encode(),
        {},
    )
    out["tsv"] = (
        "rec.tsv",
        "\n".join(f"{v:.5f}\t0" for v in ECG_500).encode(),
        {"fs": "500", "channels": "0"},
    )
    _edf(tmp / "r.edf")
    out["edf"] = ("rec.edf", (tmp / "r.edf").read_bytes(), {})  # ECG picked by its label
    out["wfdb"] = ("rec.zip", _wfdb_zip(tmp), {})
    with h5py.File(tmp / "r.h5", "w") as fh:
        fh["signal"] = ECG_500
        fh["signal"].attrs["fs"] = 500.0
    out["hdf5"] = ("rec.h5", (tmp / "r.h5").read_bytes(), {})
    pq = tmp / "r.parquet"
    pd.DataFrame({"ecg": ECG_500}).to_parquet(pq)
    out["parquet"] = ("rec.parquet", pq.read_bytes(), {"fs": "500"})
    buf = io.BytesIO()
    np.save(buf, ECG_500)
    out["npy"] = ("rec.npy", buf.getvalue(), {"fs": "500"})
    buf = io.BytesIO()
    np.savez(buf, signal=ECG_500, fs=np.float64(500))
    out["npz"] = ("rec.npz", buf.getvalue(), {})
    apple = ["Name,A", "Sample Rate,500 hertz", "Lead,Lead I", "Unit,µV", ""] + [f"{v:.5f}" for v in ECG_500]
    out["apple"] = ("ecg_2024-01-01.csv", "\n".join(apple).encode(), {})
    return out


def test_every_format_gives_the_same_windows(client, tmp_path) -> None:
    files = _files(tmp_path)
    ref = None
    for name, (filename, data, fields) in files.items():
        r = post(client, filename, data, **fields)
        assert r.status_code == 200, (name, r.text)
        body = r.json()
        assert body["windows_used"] == 2, name
        assert body["recordings"][0]["dropped_tail_s"] == pytest.approx(10.0, abs=0.01), name
        emb = np.asarray(body["embeddings"], dtype=np.float32)
        if ref is None:
            ref = emb
        # EDF stores 16-bit samples: equal within quantisation; the others exactly the same samples
        np.testing.assert_allclose(emb, ref, atol=2e-2 if name == "edf" else 2e-4, err_msg=name)


@pytest.fixture(scope="module")
def every_format(tmp_path_factory) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    return _files(tmp_path_factory.mktemp("formats"))


_damage = st.lists(  # (where in the file, what): a byte changed, a cut, bytes inserted, the rest dropped
    st.tuples(
        st.floats(0, 1),
        st.sampled_from(["byte", "cut", "insert", "truncate", "max-int"]),
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=6,
)


def _damaged(data: bytes, damage: list[tuple[float, str, int]]) -> bytes:
    b = bytearray(data)
    for where, what, value in damage:
        i = min(int(where * len(b)), max(0, len(b) - 1))
        if what == "byte" and b:
            b[i] = value
        elif what == "cut":
            del b[i : i + value + 1]
        elif what == "insert":
            b[i:i] = bytes([value]) * (value % 16 + 1)
        elif what == "truncate":
            del b[i:]
        else:
            b[i : i + 8] = (2**63 - 1).to_bytes(8, "little")
    return bytes(b)


@hypothesis.settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(
    name=st.sampled_from(["csv", "csv-time", "tsv", "edf", "wfdb", "hdf5", "parquet", "npy", "npz", "apple"]),
    damage=_damage,
)
def test_a_damaged_file_of_any_format_is_an_answer_not_a_5xx(client, every_format, name: str, damage) -> None:
    """The readers' libraries (edflib, h5py, pyarrow, wfdb, numpy, pandas) on damaged files."""
    filename, data, fields = every_format[name]
    r = post(client, filename, _damaged(data, damage), **fields)
    assert r.status_code in (200, 422), (name, r.status_code, r.text[:300])


def test_predict_takes_an_upload_and_a_real_file(client) -> None:
    """A real recording (peakdet's ECG, 44.6 s at 1000 Hz): one 30 s window, 14.6 s dropped."""
    path = fetch("peakdet_ecg")
    r = post(client, path.name, path.read_bytes(), "/v1/predict", fs="1000")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["windows_used"] == 1 and body["predictions"][0] is not None
    assert body["recordings"][0]["dropped_tail_s"] == pytest.approx(14.6, abs=0.1)


@pytest.mark.parametrize(
    ("filename", "data", "fields", "reason", "says"),
    [
        ("rec.xyz", b"1\n2\n", {}, "file", "unsupported file type"),
        ("rec.csv", b"1\n2\n3\n", {}, "fs", "pass fs"),
        ("rec.csv", b"1\n2\n3\n", {"fs": "fast"}, "fs", "must be a decimal number"),
        ("rec.csv", b"1\n2\n3\n", {"fs": "5_00"}, "fs", "must be a decimal number"),  # float() reads 500
        ("rec.csv", b"1\n2\n3\n", {"fs": "\uff15\uff10\uff10"}, "fs", "must be a decimal number"),
        ("rec.csv", "\n".join(f"{v},{v}" for v in ECG_500).encode(), {"fs": "500"}, "channels", "channels="),
        ("rec.csv", b"\xff\xfe\x00garbage", {"fs": "500"}, "file", "rec.csv"),
        ("rec.csv", "\n".join(f"{v:.5f}" for v in ECG_500[:5000]).encode(), {"fs": "500"}, "too_short", "30"),
        ("rec.edf", b"0       garbage edf", {}, "file", "EDF"),
        ("rec.edf", b"0       garbage" * 100, {}, "file", "rec.edf"),  # pyedflib names its path
        ("rec.h5", b"\x89HDF\r\n\x1a\n broken", {}, "file", "HDF5"),
        ("rec.zip", b"PK\x03\x04 broken", {}, "file", "archive"),
        ("rec.npz", b"PK\x03\x04 broken", {}, "file", "archive"),
        ("rec.parquet", b"PAR1 broken PAR1", {}, "file", "Parquet"),
        ("rec.csv", b"1\n2\n", {"channels": "ecg,ppg", "fs": "500"}, "channels", "not found"),
    ],
)
def test_file_problems_are_named(client, filename, data, fields, reason, says) -> None:
    r = post(client, filename, data, **fields)
    assert r.status_code == 422, r.text
    problem = r.json()["problems"][0]
    assert problem["reason"] == reason and says in problem["detail"], problem
    # the reader's message names the client's file, never the server's temporary copy
    assert "pulsefm-upload" not in r.text and "/tmp" not in r.text, problem


def test_a_zip_bomb_is_refused_before_unpacking(client) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("rec.hea", "rec 1 500 1000000000\nrec.dat 16 200 16 0 0 0 0 ECG\n")
        zf.writestr("rec.dat", b"\0" * (600 * 1024 * 1024))  # 600 MiB of zeros, ~600 KiB zipped
    r = post(client, "rec.zip", buf.getvalue())
    assert r.status_code == 422 and "unpacks to" in r.json()["detail"]


def _npy_claiming(shape: tuple[int, ...]) -> bytes:
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64


def test_npy_headers_claiming_more_than_the_file_holds_are_refused_before_allocation(client) -> None:
    for shape in [(1_000_000, 4, 3840), (2**40,), (3_000_000_000,)]:  # 57 GiB, 4 TiB, 11 GiB
        r = post(client, "rec.npy", _npy_claiming(shape), fs="500")
        assert r.status_code == 422 and "header says shape" in r.json()["detail"], r.text
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("signal.npy", _npy_claiming(shape))
        r = post(client, "rec.npz", buf.getvalue(), fs="500")
        assert r.status_code == 422 and "header says shape" in r.json()["detail"], r.text


def test_form_problems_are_named(client) -> None:
    csv = b"\n".join(b"%.5f" % v for v in ECG_500)
    r = client.post("/v1/embed", data={"modality": "ecg", "fs": "500"})  # a form without a file
    assert r.status_code == 422 and r.json()["problems"][0]["reason"] in ("multipart", "content_type")
    two = [("file", ("a.csv", csv)), ("file", ("b.csv", csv))]
    r = client.post("/v1/embed", files=two, data={"modality": "ecg", "fs": "500"})
    assert r.status_code == 422 and "exactly one file" in r.json()["detail"]
    r = client.post(
        "/v1/embed", files={"file": ("a.csv", csv)}, data={"modality": "ecg", "fs": "500", "x": "1"}
    )
    assert r.status_code == 422 and "unknown form field" in r.json()["detail"]
    r = client.post("/v1/embed", files={"file": ("a.csv", csv)}, data={"fs": "500"})
    assert r.status_code == 422 and r.json()["problems"][0]["reason"] == "modality"
    r = client.post("/v1/embed", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 422 and "boundary" in r.json()["detail"]


def test_the_query_completes_a_form_and_a_field_is_given_once(client) -> None:
    csv = b"\n".join(b"%.5f" % v for v in ECG_500)

    def with_query(query: dict[str, str], fields: dict[str, str]):
        return client.post("/v1/embed", params=query, files={"file": ("a.csv", csv)}, data=fields)

    r = with_query({"fs": "500", "stride_s": "10"}, {"modality": "ecg"})
    assert r.status_code == 200 and r.json()["stride_s"] == 10.0 and len(r.json()["embeddings"]) == 5, r.text
    r = with_query({"modality": "ppg"}, {"modality": "ecg", "fs": "500"})
    assert r.status_code == 422 and "modality is given in both the query and the form" in r.json()["detail"]
    r = with_query({"stride": "10"}, {"modality": "ecg", "fs": "500"})
    assert r.status_code == 422 and "unknown query parameter 'stride'" in r.json()["detail"]


@hypothesis.settings(max_examples=150, deadline=None, database=None)
@hypothesis.given(
    body=st.binary(max_size=400),
    # any boundary a header can carry: empty, RFC 2046's 70 characters, past the parser's 256, quoted
    boundary=st.one_of(
        st.sampled_from(["b", "x" * 70, "x" * 256, "x" * 257, "", '"b"', "b; x=1"]),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=400),
    ),
    prefix=st.booleans(),
)
def test_any_multipart_body_is_an_answer_not_a_5xx(client, body: bytes, boundary: str, prefix: bool) -> None:
    if prefix:  # a plausible start, so the parser gets past the first boundary
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'.encode()
            + body
        )
    r = client.post(
        "/v1/embed", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code in (200, 422), (r.status_code, r.text)
