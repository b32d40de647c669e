"""Reading .npy / .npz files without `ast`: a strict parser of the .npy header.

numpy's own reader (`np.load`, `np.lib.format.read_array_header_*`) evaluates the header with
`ast.literal_eval`. CPython's AST construction is not safe across threads: under load, two threads
decoding headers at once can fail with `SystemError: AST constructor recursion depth mismatch`
(python/cpython#106905) — the gateway decodes bodies in a thread pool, and saw exactly that as a
spurious 422 on a valid body. The header is a fixed little grammar, so it is parsed here with
regular expressions instead:

    {'descr': '<f4', 'fortran_order': False, 'shape': (4, 4, 3840), }   + padding + '\\n'

Each key exactly once, in any order; single or double quotes; `descr` a simple dtype string
(structured dtypes are refused); `shape` a tuple of non-negative integers. Versions 1.0, 2.0 and
3.0 of the format are read. Anything else raises `ValueError` naming the problem.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

MAGIC = b"\x93NUMPY"
MAX_HEADER_BYTES = 1 << 16  # numpy itself refuses longer headers by default (10 000 bytes in 1.x)

_VALUE = r"""'[^'"\\]{1,32}'|"[^'"\\]{1,32}"|True|False|\((?:\s*\d{1,19}\s*,)*(?:\s*\d{1,19})?\s*\)"""
_ENTRY = re.compile(r"""\s*(['"])(descr|fortran_order|shape)\1\s*:\s*(""" + _VALUE + r""")\s*(,|$)""")


class UnsupportedDtype(ValueError):
    """The header names a structured dtype, or no dtype numpy knows."""


_STRUCTURED = re.compile(r"""(['"])descr\1\s*:\s*[\[{]""")


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: np.dtype[Any]
    offset: int  # bytes from the file's start to the first data byte

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def check_holds(self, data_bytes: int, what: str = "the file") -> None:
        """ValueError unless the `data_bytes` after the header are exactly what it claims."""
        if self.nbytes != data_bytes:
            raise ValueError(
                f"header says shape {self.shape} of {self.dtype} ({self.nbytes} bytes); "
                f"{what} holds {data_bytes}"
            )


def parse_header_text(text: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """(shape, fortran_order, dtype) of a header dict's text; ValueError if it is not one."""
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError("the header is not a {...} dictionary")
    inner, pos, found = body[1:-1], 0, {}
    if _STRUCTURED.search(inner):
        raise UnsupportedDtype("structured dtypes are not read")
    while inner[pos:].strip():
        m = _ENTRY.match(inner, pos)
        if m is None:
            raise ValueError(f"unreadable header entry near {inner[pos : pos + 40]!r}")
        key, value = m.group(2), m.group(3)
        if key in found:
            raise ValueError(f"header key {key!r} given twice")
        found[key] = value
        pos = m.end()
        if m.group(4) != ",":
            break
    if inner[pos:].strip():
        raise ValueError(f"unreadable header text near {inner[pos : pos + 40]!r}")
    missing = {"descr", "fortran_order", "shape"} - found.keys()
    if missing:
        raise ValueError(f"header lacks {sorted(missing)}")
    descr, fortran, shape_text = found["descr"], found["fortran_order"], found["shape"]
    if descr[0] not in "'\"" or fortran not in ("True", "False") or not shape_text.startswith("("):
        raise ValueError("wrong kinds of header values (descr: str, fortran_order: bool, shape: tuple)")
    try:
        dtype = np.dtype(descr[1:-1])
    except TypeError as exc:
        raise UnsupportedDtype(f"header descr {descr!r} is not a dtype") from exc
    items = [s.strip() for s in shape_text[1:-1].split(",")]
    if items and items[-1] == "":
        items.pop()
    if "" in items:
        raise ValueError(f"header shape {shape_text!r} is not a tuple of integers")
    return tuple(int(s) for s in items), fortran == "True", dtype


def read_header(f: IO[bytes]) -> NpyHeader:
    """The header of the .npy stream `f`, read from its current position (the start of the array);
    leaves `f` at the first data byte."""
    magic = f.read(8)
    if len(magic) != 8 or magic[:6] != MAGIC:
        raise ValueError("not a .npy array (no \\x93NUMPY magic)")
    major, minor = magic[6], magic[7]
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"unsupported .npy format version {major}.{minor}")
    size_bytes = 2 if major == 1 else 4
    raw_len = f.read(size_bytes)
    if len(raw_len) != size_bytes:
        raise ValueError("truncated .npy header")
    length = int.from_bytes(raw_len, "little")
    if length > MAX_HEADER_BYTES:
        raise ValueError(f".npy header of {length} bytes (limit {MAX_HEADER_BYTES})")
    raw = f.read(length)
    if len(raw) != length:
        raise ValueError("truncated .npy header")
    text = raw.decode("utf-8" if major == 3 else "latin-1", errors="strict")
    shape, fortran, dtype = parse_header_text(text)
    return NpyHeader(shape, fortran, dtype, len(magic) + size_bytes + length)


def view(data: bytes, header: NpyHeader, what: str = "the file") -> np.ndarray:
    """The array of `data`, a whole .npy file whose header is `header` (a read-only view when the
    dtype allows); the header's claim must match the bytes held exactly."""
    header.check_holds(len(data) - header.offset, what)
    arr = np.frombuffer(data, dtype=header.dtype, count=math.prod(header.shape), offset=header.offset)
    return arr.reshape(header.shape, order="F" if header.fortran_order else "C")


def from_bytes(data: bytes) -> np.ndarray:
    """The array of a .npy file's bytes."""
    header = read_header(io.BytesIO(data))
    if header.dtype.hasobject:
        raise ValueError("object arrays are not read (they would need pickle)")
    return view(data, header)


def load(path: str | Path) -> np.ndarray | dict[str, np.ndarray]:
    """A .npy file's array, or a .npz file's arrays by name (without the `.npy` of each member)."""
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(len(MAGIC))
    if head == MAGIC:
        return from_bytes(path.read_bytes())
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path.name} is neither a .npy nor a .npz file")
    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            out[name] = from_bytes(zf.read(info))
    return out


def open_memmap(path: str | Path) -> np.ndarray:
    """A read-only memory map of a .npy file (what `np.load(path, mmap_mode="r")` gives)."""
    with Path(path).open("rb") as fh:
        header = read_header(fh)
    header.check_holds(Path(path).stat().st_size - header.offset, Path(path).name)
    if header.nbytes == 0:
        return np.empty(header.shape, dtype=header.dtype)
    order: Literal["F", "C"] = "F" if header.fortran_order else "C"
    return np.memmap(
        Path(path), dtype=header.dtype, mode="r", offset=header.offset, shape=header.shape, order=order
    )
