"""pulsefm.npyformat: the ast-free .npy reader agrees with numpy and fails only with ValueError."""

from __future__ import annotations

import ast
import io
import struct
from concurrent.futures import ThreadPoolExecutor

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from pulsefm import npyformat

DTYPES = ["<f4", "<f8", ">f4", "<f2", "<i2", "<i8", "|u1", "|b1", "<c8", "<U5"]


def _npy(arr: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=version, allow_pickle=False)
    return buf.getvalue()


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    fortran=st.booleans(),
    version=st.sampled_from([None, (1, 0), (2, 0), (3, 0)]),
)
def test_reads_what_numpy_writes(dtype: str, shape: list[int], fortran: bool, version) -> None:
    arr = np.zeros(shape, dtype=dtype)
    arr = np.asfortranarray(arr) if fortran else arr
    data = _npy(arr, version)
    got = npyformat.from_bytes(data)
    assert got.dtype == arr.dtype and got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    ref = np.lib.format.read_array_header_1_0 if data[6] == 1 else np.lib.format.read_array_header_2_0
    f = io.BytesIO(data)
    if data[6] in (1, 2):
        np.lib.format.read_magic(f)
        h = npyformat.read_header(io.BytesIO(data))
        assert (h.shape, h.fortran_order, h.dtype) == ref(f)
        assert h.offset == f.tell()


def _with_header(text: str) -> bytes:
    raw = text.encode("latin-1")
    return npyformat.MAGIC + bytes([1, 0]) + struct.pack("<H", len(raw)) + raw


@pytest.mark.parametrize(
    "text",
    [
        "{'shape': (2, 3), \"descr\": '<f4', 'fortran_order': False}",  # any key order, either quote
        "{ 'descr' : '<f8' , 'fortran_order' : True , 'shape' : ( 6 , ) , }   \n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (6,)}",
    ],
)
def test_hand_written_headers_in_the_grammar(text: str) -> None:
    header = npyformat.read_header(io.BytesIO(_with_header(text)))
    assert header.dtype.kind == "f" and int(np.prod(header.shape)) == 6


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        "{'descr': '<f4', 'fortran_order': False}",  # a key missing
        "{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (1,)}",  # twice
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}",  # not a bool
        "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,)}",  # structured
        "{'descr': 'zz9', 'fortran_order': False, 'shape': (1,)}",  # not a dtype
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 3)}",  # negative
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,,2)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': 1}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} trailing",
        "{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 500 + "1" + ")" * 500 + "}",
        "{'descr': '<f4', 'fortran_order': __import__('os'), 'shape': (1,)}",
    ],
)
def test_anything_else_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        npyformat.read_header(io.BytesIO(_with_header(text)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_fail_only_with_value_error(data: bytes) -> None:
    for blob in (data, npyformat.MAGIC + data, _npy(np.zeros(3, np.float32))[:10] + data):
        try:
            out = npyformat.from_bytes(blob)
        except ValueError:
            continue  # the only way to fail
        assert (
            isinstance(out, np.ndarray)
            and out.nbytes == len(blob) - npyformat.read_header(io.BytesIO(blob)).offset
        )


def test_the_claim_must_match_the_bytes() -> None:
    data = _npy(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="holds"):
        npyformat.from_bytes(data[:-4])
    with pytest.raises(ValueError, match="holds"):
        npyformat.from_bytes(data + b"\0" * 4)


def test_no_ast_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython's AST construction is not thread-safe (python/cpython#106905): the reader must not
    need it. With ast's entry points broken, it still reads .npy and .npz files."""

    def broken(*args: object, **kwargs: object) -> None:
        raise AssertionError("ast used")

    monkeypatch.setattr(ast, "literal_eval", broken)
    monkeypatch.setattr(ast, "parse", broken)
    arr = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.testing.assert_array_equal(npyformat.from_bytes(_npy(arr)), arr)


def test_npz_members_by_name(tmp_path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, signal=np.ones((2, 5), np.float32), fs=np.float64(64.0))
    loaded = npyformat.load(path)
    assert isinstance(loaded, dict) and set(loaded) == {"signal", "fs"}
    assert loaded["signal"].shape == (2, 5) and float(loaded["fs"]) == 64.0


def test_many_threads_at_once() -> None:
    """The gateway decodes bodies in a thread pool: concurrent reads all succeed."""
    bodies = [_npy(np.full((4, 4, 64), k, np.float32)) for k in range(16)]

    def read(k: int) -> float:
        return float(npyformat.from_bytes(bodies[k % 16])[0, 0, 0])

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(read, range(4000))) == [float(k % 16) for k in range(4000)]


@pytest.mark.parametrize("fortran", [False, True])
def test_open_memmap_is_np_load_with_mmap(tmp_path, fortran: bool) -> None:
    arr = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    arr = np.asfortranarray(arr) if fortran else arr
    path = tmp_path / "a.npy"
    np.save(path, arr)
    got = npyformat.open_memmap(path)
    assert isinstance(got, np.memmap) and got.dtype == arr.dtype
    np.testing.assert_array_equal(got, np.load(path, mmap_mode="r"))
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="holds"):
        npyformat.open_memmap(path)
