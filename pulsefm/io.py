"""Readers for WFDB, EDF, CSV, HDF5, Parquet and NumPy recordings.

Every reader returns one :class:`~pulsefm.records.Record`. Whatever a file does not say
(sampling rate, participant, modality, channel names) can be given as an argument or in a
JSON *sidecar* next to the file (``rec.csv`` -> ``rec.csv.json`` or ``rec.json``)::

    {"fs": 64, "participant_id": "p001", "modality": "ppg", "channels": ["g1", "g2", "r", "ir"]}

Bad files raise :class:`~pulsefm.records.RecordError` naming the file and the problem.
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pulsefm import npyformat
from pulsefm.records import Modality, Record, RecordError

TIME_COLUMN_NAMES = ("time", "timestamp", "datetime", "timer", "t", "time_s", "time_ms", "seconds")
FS_ATTR_NAMES = ("fs", "sampling_rate", "sample_rate", "sfreq", "frequency")
SUFFIXES = (".hea", ".edf", ".bdf", ".csv", ".tsv", ".txt", ".h5", ".hdf5", ".parquet", ".npy", ".npz")
#: irregular timestamps (jitter relative to the median step above this) are put on a uniform grid
MAX_TIME_JITTER = 0.05


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar of `path`, or {} if there is none."""
    for cand in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if cand.is_file() and cand != path:
            try:
                data = json.loads(cand.read_text())
            except json.JSONDecodeError as exc:
                raise RecordError(cand, f"sidecar is not valid JSON ({exc})") from exc
            if not isinstance(data, dict):
                raise RecordError(cand, "sidecar must be a JSON object")
            return data
    return {}


def _orient(arr: np.ndarray, source: Path) -> np.ndarray:
    """(channels, samples): samples are assumed to be the longer axis."""
    if arr.ndim == 1:
        return arr[None, :]
    if arr.ndim != 2:
        raise RecordError(source, f"expected a 1-D or 2-D array, got shape {arr.shape}")
    return arr.T if arr.shape[0] > arr.shape[1] else arr


def _require_fs(fs: float | None, source: Path) -> float:
    if fs is None:
        raise RecordError(
            source, "sampling rate unknown: pass fs=..., add a time column, or write it in a JSON sidecar"
        )
    return float(fs)


def _time_seconds(t: np.ndarray, name: str, unit: str | None, source: Path) -> np.ndarray:
    """A time column converted to seconds from its start (unit 's', 'ms' or 'us'; inferred if None)."""
    t = np.asarray(t, dtype=np.float64)
    if t.size < 3 or not np.all(np.isfinite(t)):
        raise RecordError(source, f"time column {name!r} is too short or has non-finite values")
    dt = np.diff(t)
    if np.any(dt < 0) or not np.any(dt > 0):
        raise RecordError(source, f"time column {name!r} is not increasing")
    if unit is None:
        # Biosignals are sampled at >= 1 Hz: a median step above 1 means milliseconds.
        unit = "ms" if (name.lower().endswith("ms") or float(np.median(dt[dt > 0])) > 1.0) else "s"
    scale = {"s": 1.0, "ms": 1e-3, "us": 1e-6}.get(unit)
    if scale is None:
        raise RecordError(source, f"unknown time unit {unit!r} (use 's', 'ms' or 'us')")
    return (t - t[0]) * scale


def _uniform_from_time(ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, float, str]:
    """Values on a uniform grid, their rate, and how the time stamps were used.

    The rate is the mean one, (n - 1) / duration. Repeated stamps mean the clock is coarser
    than the sampling: samples are kept as they are ('coarse'). Jittered stamps (median
    deviation > MAX_TIME_JITTER of the step) are interpolated onto the grid ('interpolated').
    """
    fs = (ts.size - 1) / ts[-1]
    dt = np.diff(ts)
    if np.any(dt == 0):
        return values, fs, "coarse"
    step = float(np.median(dt))
    if float(np.median(np.abs(dt - step))) / step <= MAX_TIME_JITTER:
        return values, fs, "regular"
    grid = np.arange(ts.size) / fs
    return np.stack([np.interp(grid, ts, ch) for ch in values]), fs, "interpolated"


def _build(
    source: Path,
    signal: np.ndarray,
    names: list[str] | tuple[str, ...] | None,
    fs: float,
    overrides: Mapping[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Record:
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim == 1:
        signal = signal[None, :]
    if names is None:
        names = [f"ch{i}" for i in range(signal.shape[0])]
    meta = dict(metadata or {})
    meta.update(overrides.get("metadata") or {})
    meta.setdefault("source", str(source))
    rec = Record(
        signal=signal,
        channel_names=tuple(names),
        fs=float(overrides.get("fs") or fs),
        participant_id=str(overrides.get("participant_id") or source.stem),
        recording_id=str(overrides.get("recording_id") or source.stem),
        modality=Modality(overrides["modality"]) if overrides.get("modality") else None,
        metadata=meta,
    )
    channels = overrides.get("channels")
    if channels:
        try:
            rec = rec.select(list(channels))
        except RecordError as exc:
            raise RecordError(source, exc.problem) from exc
    if np.all(~np.isfinite(rec.signal)):
        raise RecordError(source, "signal contains no finite values")
    return rec


# ---------------------------------------------------------------------------------------- WFDB
def read_wfdb(path: str | Path, **overrides: Any) -> Record:
    import wfdb

    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".hea", ".dat") else path
    if not base.with_suffix(".hea").is_file():
        raise RecordError(path, "WFDB header (.hea) not found")
    try:
        rec = wfdb.rdrecord(str(base))
    except Exception as exc:  # wfdb raises bare ValueError/OSError/IndexError on bad files
        raise RecordError(path, f"not a readable WFDB record ({type(exc).__name__}: {exc})") from exc
    if rec.p_signal is None:
        raise RecordError(path, "WFDB record has no physical signal")
    over = {**read_sidecar(base.with_suffix(".hea")), **overrides}
    meta = {"units": list(rec.units or []), "comments": list(rec.comments or [])}
    return _build(path, rec.p_signal.T, list(rec.sig_name), float(rec.fs), over, meta)


# ----------------------------------------------------------------------------------------- EDF
def read_edf(path: str | Path, **overrides: Any) -> Record:
    import pyedflib

    path = Path(path)
    over = {**read_sidecar(path), **overrides}
    size_problem = _edf_size_problem(path)
    if size_problem:  # (edflib would refuse it too, printing to the process's stdout)
        raise RecordError(path, size_problem)
    try:
        reader = pyedflib.EdfReader(str(path))
    except Exception as exc:  # pyedflib raises OSError with a terse message
        raise RecordError(path, f"not a readable EDF/BDF file ({exc})") from exc
    try:
        labels = [s.strip() for s in reader.getSignalLabels()]
        rates = [float(reader.getSampleFrequency(i)) for i in range(reader.signals_in_file)]
        wanted = list(over.pop("channels", None) or labels)
        missing = [c for c in wanted if c not in labels]
        if missing:
            raise RecordError(path, f"channels {missing} not found; available: {labels}")
        idx = [labels.index(c) for c in wanted]
        chosen = {rates[i] for i in idx}
        if len(chosen) > 1:
            table = ", ".join(f"{labels[i]}@{rates[i]:g}Hz" for i in idx)
            raise RecordError(
                path, f"channels have different sampling rates ({table}); choose channels of one rate"
            )
        n = min(reader.getNSamples()[i] for i in idx)
        signal = np.stack([reader.readSignal(i)[:n] for i in idx])
        meta = {
            "start": str(reader.getStartdatetime()),
            "units": [reader.getPhysicalDimension(i) for i in idx],
        }
    finally:
        reader.close()
    return _build(path, signal, wanted, chosen.pop(), over, meta)


def _edf_size_problem(path: Path) -> str | None:
    """The file's length against the one its EDF/BDF header describes (header + records x record
    size), or None when they agree or the header is not readable enough to tell (the reader says)."""
    with path.open("rb") as fh:
        head = fh.read(256)
        try:
            header_bytes, records, signals = int(head[184:192]), int(head[236:244]), int(head[252:256])
            if records <= 0 or not 0 < signals <= 4096:
                return None
            fh.seek(256 + signals * 216)
            per_record = sum(int(fh.read(8)) for _ in range(signals))
        except ValueError:
            return None
    sample_bytes = 3 if head[:1] == b"\xff" else 2  # BDF: 24-bit samples
    expected = header_bytes + records * per_record * sample_bytes
    actual = path.stat().st_size
    if actual == expected:
        return None
    return (
        f"the file is {actual} bytes, its header describes {expected} ({records} records of "
        f"{per_record * sample_bytes} bytes after a {header_bytes}-byte header): truncated or padded"
    )


# ------------------------------------------------------------------------------------- tables
def _sniff_delimiter(path: Path) -> tuple[str, bool]:
    """Delimiter and whether the first line is a header."""
    try:
        with path.open(newline="") as fh:
            head = [fh.readline() for _ in range(5)]
    except UnicodeDecodeError as exc:
        raise RecordError(path, "not a text file") from exc
    head = [h for h in head if h.strip()]
    if not head:
        raise RecordError(path, "file is empty")
    first = head[0]
    delim = next((d for d in ("\t", ",", ";") if d in first), " ")
    cells = [c for c in (first.split() if delim == " " else first.strip().split(delim)) if c]
    try:
        [float(c) for c in cells]
        has_header = False
    except ValueError:
        has_header = True
    return delim, has_header


def _frame_to_record(df: pd.DataFrame, path: Path, over: dict[str, Any], fs_hint: float | None) -> Record:
    tcol = over.pop("time_column", None)
    if tcol is None:
        tcol = next((c for c in df.columns if str(c).lower() in TIME_COLUMN_NAMES), None)
    elif tcol not in df.columns:
        raise RecordError(path, f"time column {tcol!r} not found; columns: {list(df.columns)}")
    unit = over.pop("time_unit", None)
    numeric = df.apply(pd.to_numeric, errors="coerce")
    value_cols = [c for c in numeric.columns if c != tcol and numeric[c].notna().any()]
    if over.get("channels"):
        value_cols = [c for c in value_cols if c in over["channels"]] or value_cols
    if not value_cols:
        raise RecordError(path, "no numeric columns")
    values = numeric[value_cols].to_numpy(dtype=np.float64).T
    meta: dict[str, Any] = {}
    fs = over.get("fs") or fs_hint
    if tcol is not None and not over.get("fs"):
        t = numeric[tcol].to_numpy(dtype=np.float64)
        if not np.isfinite(t).all():  # e.g. '2016-11-24 13:58:58.081' -> seconds
            try:
                stamps = pd.to_datetime(df[tcol], format="ISO8601")
            except (ValueError, TypeError) as exc:
                raise RecordError(path, f"time column {tcol!r} is neither numeric nor a date-time") from exc
            t = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()
            unit = "s"

        ts = _time_seconds(t, str(tcol), unit, path)
        values, fs, meta["time_stamps"] = _uniform_from_time(ts, values)
    return _build(path, values, [str(c) for c in value_cols], _require_fs(fs, path), over, meta)


def read_csv(path: str | Path, **overrides: Any) -> Record:
    """Delimited text: one column per channel, optional header and time column; device exports
    (Apple Health ECG, Empatica E4, OpenSignals, Polar Sensor Logger) by their own readers."""
    from pulsefm.devices import sniff_text

    path = Path(path)
    device_reader = sniff_text(path)
    if device_reader is not None:
        return device_reader(path, **overrides)
    over = {**read_sidecar(path), **overrides}
    delim, has_header = _sniff_delimiter(path)
    try:
        df = pd.read_csv(
            path,
            sep=r"\s+" if delim == " " else delim,
            header=0 if has_header else None,
            quoting=csv.QUOTE_MINIMAL,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RecordError(path, f"not a readable table ({exc})") from exc
    if not has_header:
        df.columns = [f"ch{i}" for i in range(df.shape[1])]
    if len(df) < 2:
        raise RecordError(path, "table has fewer than 2 rows")
    return _frame_to_record(df, path, over, None)


def read_parquet(path: str | Path, **overrides: Any) -> Record:
    """Parquet table: one column per channel; fs from the schema metadata key b'fs' if present."""
    import pyarrow.parquet as pq

    path = Path(path)
    over = {**read_sidecar(path), **overrides}
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError
        raise RecordError(path, f"not a readable Parquet file ({exc})") from exc
    meta = table.schema.metadata or {}
    fs_hint = float(meta[b"fs"]) if b"fs" in meta else None
    return _frame_to_record(table.to_pandas(), path, over, fs_hint)


# ------------------------------------------------------------------------------------ arrays
def _attr_fs(*attr_sets: Mapping[str, Any]) -> float | None:
    for attrs in attr_sets:
        for key in FS_ATTR_NAMES:
            if key in attrs:
                return float(np.asarray(attrs[key]).item())
    return None


def read_hdf5(path: str | Path, **overrides: Any) -> Record:
    """HDF5: the dataset named `dataset` (or the only / 'signal' dataset); fs from attributes."""
    import h5py

    path = Path(path)
    over = {**read_sidecar(path), **overrides}
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise RecordError(path, f"not a readable HDF5 file ({exc})") from exc
    with fh:
        key = over.pop("dataset", None)
        from pulsefm.devices import is_opensignals_h5, read_opensignals_h5

        if key is None and is_opensignals_h5(fh):
            return read_opensignals_h5(path, fh, over)
        names: list[str] = []
        fh.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        if key is None:
            preferred = [n for n in names if n.split("/")[-1] in ("signal", "data", "ppg", "ecg")]
            if len(names) == 1:
                key = names[0]
            elif preferred:
                key = preferred[0]
            else:
                raise RecordError(
                    path, f"several datasets {names}; choose one with dataset= (CLI: --dataset)"
                )
        if key not in names:
            raise RecordError(path, f"dataset {key!r} not found; datasets: {names}")
        ds = fh[key]
        arr = _orient(np.asarray(ds[()], dtype=np.float64), path)
        fs = over.get("fs") or _attr_fs(ds.attrs, fh.attrs)
        ch = ds.attrs.get("channels", ds.attrs.get("channel_names"))
        chans = [c.decode() if isinstance(c, bytes) else str(c) for c in ch] if ch is not None else None
    return _build(path, arr, chans, _require_fs(fs, path), over, {"dataset": key})


def read_numpy(path: str | Path, **overrides: Any) -> Record:
    """`.npy` (an array) or `.npz` (key `signal`, or the only array; optional `fs`, `channels`)."""
    path = Path(path)
    over = {**read_sidecar(path), **overrides}
    try:
        loaded = npyformat.load(path)  # not np.load: its header parser is not thread-safe
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise RecordError(path, f"not a readable NumPy file ({exc})") from exc
    chans: list[str] | None = None
    fs = over.get("fs")
    if isinstance(loaded, dict):
        keys = list(loaded)
        arrays = [k for k in keys if k not in ("fs", "channels") and loaded[k].ndim >= 1]
        key = over.pop("dataset", None) or ("signal" if "signal" in keys else None)
        if key is None:
            if len(arrays) != 1:
                raise RecordError(path, f"several arrays {arrays}; pass dataset=... or name one 'signal'")
            key = arrays[0]
        if key not in keys:
            raise RecordError(path, f"array {key!r} not found; arrays: {keys}")
        arr = np.asarray(loaded[key])
        if fs is None and "fs" in keys:
            fs = float(loaded["fs"])
        if "channels" in keys:
            chans = [str(c) for c in loaded["channels"]]
    else:
        arr = np.asarray(loaded)
    if not np.issubdtype(arr.dtype, np.number):
        raise RecordError(path, f"array dtype {arr.dtype} is not numeric")
    return _build(path, _orient(arr.astype(np.float64), path), chans, _require_fs(fs, path), over)


READERS: dict[str, Callable[..., Record]] = {
    ".hea": read_wfdb,
    ".dat": read_wfdb,
    ".edf": read_edf,
    ".bdf": read_edf,
    ".csv": read_csv,
    ".tsv": read_csv,
    ".txt": read_csv,
    ".h5": read_hdf5,
    ".hdf5": read_hdf5,
    ".parquet": read_parquet,
    ".npy": read_numpy,
    ".npz": read_numpy,
}


def read_record(path: str | Path, **overrides: Any) -> Record:
    """Read any supported recording; the reader is chosen by file suffix."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise RecordError(path, f"unsupported file type {path.suffix!r}; supported: {sorted(READERS)}")
    if not path.exists() and reader is not read_wfdb:
        raise RecordError(path, "file not found")
    return reader(path, **overrides)


def find_recordings(folder: str | Path) -> Iterator[Path]:
    """Supported recordings below `folder`, sorted (WFDB records by their .hea)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordError(folder, "not a directory")
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in SUFFIXES and p.name != "participants.csv":
            yield p
