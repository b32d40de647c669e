"""A recording file posted as `multipart/form-data` -> a Batch of windows.

    curl -F file=@my_ecg.csv -F modality=ecg [-F fs=500] [-F channels=ECG] [-F stride_s=15] \\
        http://127.0.0.1:8080/v1/embed

Form fields: `file` (exactly one), `modality`, and where the file does not say them `fs` and
`channels` (names or indices, comma-separated); also `stride_s`, `model_version`, `quality`,
`dataset` (HDF5 / .npz). The file is read by the same readers as `pulse-fm prepare`
(`pulsefm.io.read_record`, chosen by the file name's suffix; a WFDB record comes as a .zip of
its .hea and .dat). Every problem of the file is a 422 that names it.

The body was bounded by the front door; here the parts are parsed from bytes in the CPU pool
(python-multipart's parser), at most MAX_PARTS parts, fields of at most MAX_FIELD_BYTES, and a
compressed file (.zip, .npz, .h5, .parquet) may not unpack to more than `max_decoded_bytes`.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pulsefm.io import READERS, read_record
from pulsefm.pipeline import channels_for
from pulsefm.preprocess import PreprocessSpec
from pulsefm.records import RecordError
from service.decoding import fail, fs_from_text
from service.errors import ValidationFailed

MAX_PARTS = 16
MAX_FIELD_BYTES = 1024
FIELDS = ("modality", "fs", "channels", "stride_s", "model_version", "quality", "dataset")
SUFFIXES = sorted({*READERS, ".zip"})


@dataclass
class Upload:
    filename: str = ""
    data: bytes = b""
    fields: dict[str, str] = field(default_factory=dict)


def parse_form(body: bytes, content_type: str) -> Upload:
    """Multipart body -> the one file and the text fields (bounded in count and size)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type.encode("latin-1", "replace"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise fail("multipart", "multipart/form-data without a boundary")
    parts: list[dict[str, Any]] = []
    header: list[bytes] = [b"", b""]

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise fail("multipart", f"more than {MAX_PARTS} form parts")
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header[0].decode("latin-1").lower()] = header[1].decode("utf-8", "replace")
        header[0], header[1] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    try:  # the parser's constructor refuses too (a boundary over its 256 bytes)
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_part_data": on_part_data,
            },
        )
        parser.write(body)
        parser.finalize()
    except ValidationFailed:
        raise
    except Exception as exc:  # python-multipart's parse errors (and whatever else it raises on garbage)
        raise fail("multipart", f"not a valid multipart/form-data body: {str(exc)[:200]}") from None
    up = Upload()
    for part in parts:
        _, disp = parse_options_header(
            part["headers"].get("content-disposition", "").encode("utf-8", "replace")
        )
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if name == "file":
            if up.data or up.filename:
                raise fail("multipart", "send exactly one file (form field 'file')")
            up.filename = disp.get(b"filename", b"").decode("utf-8", "replace")
            up.data = bytes(part["data"])
        elif name in FIELDS:
            if len(part["data"]) > MAX_FIELD_BYTES:
                raise fail(name, f"form field {name!r} longer than {MAX_FIELD_BYTES} bytes")
            up.fields[name] = bytes(part["data"]).decode("utf-8", "replace").strip()
        else:
            raise fail("multipart", f"unknown form field {name[:40]!r}; fields: file, {', '.join(FIELDS)}")
    if not up.filename and not up.data:
        raise fail("multipart", "no file: send the recording as form field 'file' (curl -F file=@rec.csv)")
    return up


def _suffix(filename: str) -> str:
    name = PurePosixPath(filename.replace("\\", "/")).name.lower()
    suffix = PurePosixPath(name).suffix
    if suffix not in SUFFIXES:
        raise fail("file", f"{filename[:80]!r}: unsupported file type {suffix!r}; supported: {SUFFIXES}")
    return suffix


def _npy_header_fits(fh: Any, size: int, name: str) -> None:
    """A .npy header's shape x itemsize must be what the file holds (numpy would allocate the claim)."""
    from service.decoding import read_npy_header

    header = read_npy_header(fh, "file", name)
    try:
        header.check_holds(size - header.offset)
    except ValueError as exc:
        raise fail("file", f"{name}: {exc}") from None


def _check_unpacked(path: Path, suffix: str, max_bytes: int) -> None:
    """Refuse a file whose content would unpack beyond `max_bytes`, or whose .npy headers claim
    more than they hold, before reading it."""
    size = 0
    if suffix == ".npy":
        with path.open("rb") as fh:
            _npy_header_fits(fh, path.stat().st_size, "upload")
    if suffix in (".zip", ".npz"):
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                size = sum(i.file_size for i in infos)
                if len(infos) > MAX_PARTS:
                    raise fail("file", f"archive with {len(infos)} members; at most {MAX_PARTS}")
                if size <= max_bytes and suffix == ".npz":
                    for info in infos:
                        with zf.open(info) as member:
                            _npy_header_fits(member, info.file_size, info.filename[:60])
        except ValidationFailed:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise fail("file", f"not a readable {suffix} archive ({exc})") from None
    elif suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                sizes: list[int] = []
                fh.visititems(
                    lambda _, o: (
                        sizes.append(o.size * o.dtype.itemsize) if isinstance(o, h5py.Dataset) else None
                    )
                )
                size = sum(sizes)
        except Exception as exc:  # h5py raises OSError/ValueError/KeyError on damaged files
            raise fail("file", f"not a readable HDF5 file ({str(exc)[:200]})") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(path).metadata
            size = meta.num_rows * meta.num_columns * 8
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError
            raise fail("file", f"not a readable Parquet file ({str(exc)[:200]})") from None
    if size > max_bytes:
        raise fail("file", f"the file unpacks to {size} bytes; the limit is {max_bytes}")


def _wfdb_from_zip(path: Path, folder: Path) -> Path:
    """A .zip holding one WFDB record (.hea + its .dat): extracted flat, member names sanitised."""
    with zipfile.ZipFile(path) as zf:
        heads = [m for m in zf.namelist() if m.lower().endswith(".hea")]
        if len(heads) != 1:
            raise fail("file", f"a .zip upload must hold one WFDB record (one .hea); found {len(heads)}")
        for member in zf.infolist():
            name = PurePosixPath(member.filename).name
            if member.is_dir() or not name or name.startswith("."):
                continue
            (folder / name).write_bytes(zf.read(member))
    return folder / PurePosixPath(heads[0]).name


def read_upload(up: Upload, spec: PreprocessSpec, max_decoded_bytes: int) -> tuple[np.ndarray, float]:
    """The uploaded file -> (channels, samples) for the spec's modality, and its rate."""
    suffix = _suffix(up.filename)
    overrides: dict[str, Any] = {}
    if up.fields.get("fs"):
        overrides["fs"] = fs_from_text(up.fields["fs"])
    if up.fields.get("dataset"):
        overrides["dataset"] = up.fields["dataset"]
    with tempfile.TemporaryDirectory(prefix="pulsefm-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(up.data)
        _check_unpacked(path, suffix, max_decoded_bytes)
        try:
            if suffix == ".zip":
                (Path(tmp) / "record").mkdir()
                path = _wfdb_from_zip(path, Path(tmp) / "record")
            rec = read_record(path, **overrides)
            rec = channels_for(rec, spec, up.fields.get("channels"))
        except RecordError as exc:
            problem = _without_folder(exc.problem, tmp, up.filename)
            raise fail(_reason(problem), f"{up.filename[:80]}: {problem}") from None
        except ValidationFailed:
            raise
        except Exception as exc:  # a reader's library failing on a hostile file is the file's problem
            detail = _without_folder(f"{type(exc).__name__}: {str(exc)[:200]}", tmp, up.filename)
            raise fail("file", f"{up.filename[:80]}: not readable ({detail})") from None
    return rec.signal, rec.fs


def _without_folder(message: str, tmp: str, filename: str) -> str:
    """A reader's message names the server's temporary copy; the client knows only its file name."""
    return re.sub(re.escape(tmp) + r"[^\s:;,)'\"]*", filename[:80], message)


def _reason(problem: str) -> str:
    return "fs" if "sampling rate" in problem else "channels" if "channel" in problem else "file"
