"""Readers for the files wearables and their apps write, recognised by content, not by name.

    Apple Health ECG export  .csv  metadata lines (``Sample Rate,512 hertz``, ``Lead,Lead I``,
                                   ``Unit,µV``), a blank line, then one sample per line
    Empatica E4 (BVP, EDA...) .csv first row the start time (Unix s), second row the rate (Hz),
                                   then one sample per row (E4 connect export; WESAD, PPG-DaLiA)
    OpenSignals text          .txt ``# OpenSignals Text File Format``, a JSON header line after
                                   ``#`` (columns, labels, sensors, ``sampling rate``),
                                   ``# EndOfHeader``, then tab-separated rows (BITalino, biosignalsplux)
    OpenSignals HDF5          .h5  one group per device (attribute ``sampling rate``) holding
                                   ``raw/channel_<n>`` datasets
    Polar Sensor Logger       .txt ``Phone timestamp;sensor timestamp [ns];...`` with
                                   ``ecg [uV]`` (H10, 130 Hz) or ``channel 0..2;ambient`` (PPG);
                                   the rate comes from the sensor's nanosecond clock

`sniff_text` and `is_opensignals_h5` say whether a file is one of these; `pulsefm.io.read_record`
asks them before the generic table / HDF5 readers. Each reader returns a Record whose channel
names say what the device calls them (``ecg``, ``bvp``, ``ECG``, ``channel 0``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pulsefm.records import Record, RecordError

OPENSIGNALS_MAGIC = "# OpenSignals Text File Format"
_HERTZ = re.compile(r"([0-9]+(?:[.,][0-9]+)?)\s*(?:hertz|hz)\b", re.IGNORECASE)
_POLAR_TIME = "sensor timestamp [ns]"
_POLAR_SKIP = ("phone timestamp", _POLAR_TIME, "timestamp [ms]", "ambient")


def _head(path: Path, n: int = 16) -> list[str]:
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as fh:
            return [fh.readline() for _ in range(n)]
    except OSError as exc:
        raise RecordError(path, f"cannot be read ({exc})") from exc


def _number(cell: str) -> float | None:
    """A sample as devices write it: '12.5', '"-12,5"' (a decimal comma), ' 3 '."""
    cell = cell.strip().strip('"').strip()
    if cell.count(",") == 1 and "." not in cell:
        cell = cell.replace(",", ".")
    try:
        return float(cell)
    except ValueError:
        return None


def _row_values(line: str) -> list[float] | None:
    cells = [c for c in re.split(r"[,;\t]", line.strip()) if c.strip()]
    values = [_number(c) for c in cells]
    return (
        None if not values or any(v is None for v in values) else [float(v) for v in values if v is not None]
    )


# ---------------------------------------------------------------------------------- detection
def _is_apple_ecg(head: list[str]) -> bool:
    keys = {line.split(",", 1)[0].strip().lower() for line in head if "," in line}
    return "sample rate" in keys and ("lead" in keys or "unit" in keys)


def _is_empatica(head: list[str]) -> bool:
    first, second = (_row_values(h) for h in head[:2])
    if not first or not second or len(first) != len(second):
        return False
    return len(set(first)) == 1 and len(set(second)) == 1 and first[0] > 1e8 and 0 < second[0] <= 10_000


def _is_polar(head: list[str]) -> bool:
    return bool(head) and _POLAR_TIME in head[0].lower() and ";" in head[0]


def sniff_text(path: Path) -> Callable[..., Record] | None:
    """The device reader for a text file, or None for an ordinary table."""
    head = _head(path)
    if head and head[0].startswith(OPENSIGNALS_MAGIC):
        return read_opensignals_text
    if _is_polar(head):
        return read_polar
    if _is_apple_ecg(head):
        return read_apple_ecg
    if _is_empatica(head):
        return read_empatica
    return None


# ---------------------------------------------------------------------------------- readers
def _finish(
    path: Path, signal: np.ndarray, names: list[str], fs: float, over: dict[str, Any], meta: dict[str, Any]
) -> Record:
    from pulsefm.io import _build, read_sidecar

    return _build(path, signal, names, fs, {**read_sidecar(path), **over}, meta)


def read_apple_ecg(path: str | Path, **overrides: Any) -> Record:
    """Apple Health's ECG export (Health app > Export All Health Data > electrocardiograms/*.csv)."""
    path = Path(path)
    meta: dict[str, Any] = {"device": "Apple Watch ECG"}
    fs: float | None = None
    samples: list[float] = []
    with path.open(encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            value = _number(line)
            if value is not None:
                samples.append(value)
                continue
            if samples:
                raise RecordError(path, f"unexpected line among the samples: {line.strip()[:60]!r}")
            key, _, rest = line.partition(",")
            key, rest = key.strip(), rest.strip().strip('"')
            meta[key.lower().replace(" ", "_")] = rest
            if key.lower() == "sample rate" and (m := _HERTZ.search(rest)):
                fs = float(m.group(1).replace(",", "."))
    if len(samples) < 2:
        raise RecordError(path, "Apple Health ECG export without samples")
    if fs is None and not overrides.get("fs"):
        raise RecordError(path, "Apple Health ECG export without a 'Sample Rate' line: pass fs=...")
    lead = str(meta.get("lead", "Lead I")).lower().replace(" ", "_")
    return _finish(path, np.asarray(samples)[None], [f"ecg_{lead}"], fs or 0.0, overrides, meta)


def read_empatica(path: str | Path, **overrides: Any) -> Record:
    """Empatica E4 export: row 1 start time (Unix s), row 2 rate (Hz), then samples (one column per axis)."""
    path = Path(path)
    try:
        arr = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise RecordError(path, f"not an Empatica E4 file ({exc})") from exc
    if arr.shape[0] < 4:
        raise RecordError(path, "Empatica E4 file without samples")
    start, fs, values = float(arr[0, 0]), float(arr[1, 0]), arr[2:].T
    kind = path.stem.lower()  # BVP, EDA, TEMP, ACC, HR
    names = [kind] if values.shape[0] == 1 else [f"{kind}_{a}" for a in "xyz"[: values.shape[0]]]
    meta = {"device": "Empatica E4", "start_unix_s": start}
    return _finish(path, values, names, fs, overrides, meta)


def _opensignals_header(path: Path) -> tuple[dict[str, Any], int]:
    head = _head(path, 64)
    for i, line in enumerate(head[1:], start=1):
        if line.startswith("# EndOfHeader"):
            try:
                return json.loads(head[1].lstrip("#").strip()), i + 1
            except json.JSONDecodeError as exc:
                raise RecordError(path, f"OpenSignals header is not valid JSON ({exc})") from exc
    raise RecordError(path, "OpenSignals file without '# EndOfHeader'")


def _opensignals_names(sensors: list[str], labels: list[str]) -> list[str]:
    """Channels named by sensor ('ECG', 'PPG') where unique in the file, else 'ECG:A2'."""
    unique = len(set(sensors)) == len(sensors)
    return [s if unique and s else f"{s}:{lab}" if s else lab for s, lab in zip(sensors, labels, strict=True)]


def read_opensignals_text(path: str | Path, **overrides: Any) -> Record:
    """OpenSignals (r)evolution text export; analog channels only (nSeq and digital I/O are dropped)."""
    path = Path(path)
    header, skip = _opensignals_header(path)
    if not isinstance(header, dict) or not header:
        raise RecordError(path, "OpenSignals header names no device")
    try:
        table = np.loadtxt(path, skiprows=skip, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise RecordError(path, f"OpenSignals rows are not numeric ({exc})") from exc
    cols: list[int] = []
    sensors: list[str] = []
    labels: list[str] = []
    rates: set[float] = set()
    offset = 0
    for dev in header.values():
        columns = list(dev.get("column", []))
        for label, sensor in zip(dev.get("label", []), dev.get("sensor", []), strict=False):
            if label in columns:
                cols.append(offset + columns.index(label))
                labels.append(str(label))
                sensors.append(str(sensor))
        rates.add(float(dev.get("sampling rate", 0)))
        offset += len(columns)
    if not cols or max(cols) >= table.shape[1]:
        raise RecordError(path, "OpenSignals header's analog channels do not match the rows' columns")
    if len(rates) != 1 or not rates.issubset({r for r in rates if r > 0}):
        raise RecordError(
            path, f"OpenSignals devices with different or missing sampling rates {sorted(rates)}"
        )
    meta = {"device": "OpenSignals", "sensors": sensors, "labels": labels}
    return _finish(path, table[:, cols].T, _opensignals_names(sensors, labels), rates.pop(), overrides, meta)


def read_polar(path: str | Path, **overrides: Any) -> Record:
    """Polar Sensor Logger (Android) ECG / PPG text: ';'-separated, nanosecond sensor clock."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, sep=";")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RecordError(path, f"not a readable Polar Sensor Logger file ({exc})") from exc
    lower = {c: str(c).strip().lower() for c in df.columns}
    tcol = next(c for c, lc in lower.items() if lc == _POLAR_TIME)
    value_cols = [c for c, lc in lower.items() if lc not in _POLAR_SKIP]
    numeric = df[value_cols].apply(pd.to_numeric, errors="coerce")
    if not value_cols or numeric.isna().all().any():
        raise RecordError(path, f"Polar file without numeric signal columns (columns: {list(df.columns)})")
    t = pd.to_numeric(df[tcol], errors="coerce").to_numpy(dtype=np.float64)
    if t.size < 3 or not np.isfinite(t).all() or t[-1] <= t[0]:
        raise RecordError(path, f"Polar '{_POLAR_TIME}' column is not an increasing clock")
    fs = (t.size - 1) / ((t[-1] - t[0]) * 1e-9)
    names = [lower[c].split(" [")[0].strip() for c in value_cols]  # 'ecg [uV]' -> 'ecg'
    meta = {"device": "Polar Sensor Logger", "units": [lower[c] for c in value_cols]}
    return _finish(path, numeric.to_numpy(dtype=np.float64).T, names, fs, overrides, meta)


def is_opensignals_h5(fh: Any) -> bool:
    return any(hasattr(g, "keys") and "sampling rate" in g.attrs and "raw" in g for g in fh.values())


def read_opensignals_h5(path: Path, fh: Any, overrides: dict[str, Any]) -> Record:
    """OpenSignals HDF5: <device>/raw/channel_<n> datasets at the device's 'sampling rate'."""
    signals: list[np.ndarray] = []
    names: list[str] = []
    rates: set[float] = set()
    for dev in fh.values():
        if not (hasattr(dev, "keys") and "sampling rate" in dev.attrs and "raw" in dev):
            continue
        channels = sorted(
            (k for k in dev["raw"] if re.fullmatch(r"channel_\d+", k)), key=lambda k: int(k.split("_")[1])
        )
        sensors = [str(s.decode() if isinstance(s, bytes) else s) for s in dev.attrs.get("sensor", [])]
        labels = list(channels)
        if len(sensors) == len(channels):
            labels = _opensignals_names(sensors, channels)
        for ch, name in zip(channels, labels, strict=True):
            signals.append(np.asarray(dev["raw"][ch][()], dtype=np.float64).reshape(-1))
            names.append(name)
        rates.add(float(np.asarray(dev.attrs["sampling rate"]).item()))
    if not signals:
        raise RecordError(path, "OpenSignals HDF5 file without raw/channel_<n> datasets")
    if len(rates) != 1:
        raise RecordError(path, f"OpenSignals devices with different sampling rates {sorted(rates)}")
    n = min(s.size for s in signals)
    return _finish(
        path, np.stack([s[:n] for s in signals]), names, rates.pop(), overrides, {"device": "OpenSignals"}
    )
