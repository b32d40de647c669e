"""`pulse-fm embed`: frozen encoder (encoder.pt or model.onnx) -> Parquet of embeddings per segment.

    pulse-fm embed --model model_repository/ecg_encoder/1/model.onnx \\
        --recordings pulsefm/examples/ecg --out emb/example.parquet     # runs as is, from the repo
    pulse-fm embed --model model_repository/ppg_encoder/2/model.onnx --recordings my_ppg/ \\
        --fs 100 --channels green,ir --stride 30 --out emb/mine.parquet
    pulse-fm embed --model runs/tiny/encoder.pt --store stores/syneval --out emb/tiny.parquet
    pulse-fm embed ... --aggregate participant     # one row per participant (mean of segments)
    pulse-fm embed ... --random-init 0             # baseline: same architecture, random weights

Each file gets a line in the summary table: read error, "rate unknown: pass --fs", shorter than
one window, or how many segments were kept and why the others were not.

One row per segment: the store's manifest columns (participant_id, recording_id, segment,
start_s, heart_rate_bpm, sqi, ...) plus ``embedding`` (a list of 256 floats). Recordings are
preprocessed by `pulsefm.pipeline` (the same code as training and the gateway); segments that
fail quality checks are skipped and listed with their reasons in ``<out>.rejects.csv``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pulsefm.cli import HelpFormatter
from pulsefm.pipeline import process_record
from pulsefm.preprocess import spec_for
from pulsefm.records import RecordError

EMBEDDING = "embedding"
CALIBRATION_SEGMENTS = 512  # random-init baselines: BatchNorm statistics from this many segments


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | Path, n: int = 12) -> str:
    """First `n` hex digits of the file's sha256: the identity of a model file."""
    return file_sha256(path)[:n]


def load_artifact(path: str | Path) -> dict[str, Any]:
    """An `encoder.pt` written by `pulse-fm train`, checked to be one."""
    import torch

    art = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(art, dict) or art.get("kind") != "pulse-fm-encoder":
        raise ValueError(f"{path}: not a pulse-fm encoder artifact (train writes RUN/encoder.pt)")
    return art


def encoder_net(artifact: dict[str, Any]) -> Any:
    """The artifact's trained EfficientNet1d, in eval mode."""
    from training.model import EfficientNet1d, EncoderConfig

    net = EfficientNet1d(EncoderConfig.from_dict(artifact["encoder_config"]))
    net.load_state_dict(artifact["state_dict"])
    return net.eval()


@dataclass
class Encoder:
    """A frozen encoder behind one call: float32 (B, C, T) -> float32 (B, D)."""

    modality: str
    preprocess_version: str
    version: str  # file digest (or "random-init-<seed>")
    embed_dim: int
    forward: Callable[[np.ndarray], np.ndarray]
    source: str = ""  # store source of the training data, e.g. "synthetic"
    path: str = ""  # the model file
    # random-init baselines only: re-estimate BatchNorm statistics on data (see calibrate_batchnorm)
    calibrate: Callable[[np.ndarray], None] | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(np.ascontiguousarray(x, dtype=np.float32))


def _torch_forward(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    module.eval()

    def forward(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return forward


def calibrate_batchnorm(net: Any, x: np.ndarray, batch_size: int = 64) -> None:
    """Re-estimate every BatchNorm's running statistics on `x` (cumulative average), weights untouched.

    A randomly initialised network in eval mode uses BatchNorm's initial statistics (mean 0,
    variance 1); with default conv init the activations then shrink ~3x per layer and the
    embedding vanishes (~1e-11). Calibrated statistics make the random-init baseline a fair one.
    """
    import torch
    from torch import nn

    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for a in range(0, len(x), batch_size):
            net(torch.from_numpy(np.ascontiguousarray(x[a : a + batch_size], dtype=np.float32)))
    net.eval()


def torch_encoder(artifact: dict[str, Any], version: str, random_init_seed: int | None = None) -> Encoder:
    """An `encoder.pt` artifact as an Encoder; `random_init_seed` keeps the architecture, not the weights."""
    import dataclasses

    import torch

    from training.model import EfficientNet1d, EncoderConfig

    cfg = EncoderConfig.from_dict(artifact["encoder_config"])
    calibrate = None
    if random_init_seed is not None:
        torch.manual_seed(random_init_seed)
        net = EfficientNet1d(dataclasses.replace(cfg, drop_path=0.0))
        version = f"random-init-{random_init_seed}"

        def calibrate(x: np.ndarray) -> None:
            calibrate_batchnorm(net, x)
    else:
        net = encoder_net(artifact)
    return Encoder(
        modality=str(artifact["modality"]),
        preprocess_version=str(artifact["preprocess"]["version"]),
        version=version,
        embed_dim=cfg.embed_dim,
        forward=_torch_forward(net),
        source=str((artifact.get("store") or {}).get("source") or ""),
        calibrate=calibrate,
    )


def onnx_encoder(path: Path) -> Encoder:
    """A `model.onnx` written by `pulse-fm export`; its metadata says modality and preprocessing."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    if "pulsefm.modality" not in meta:
        raise ValueError(f"{path}: not a pulse-fm encoder (no pulsefm.* metadata); export it with pulse-fm")
    name_in, name_out = sess.get_inputs()[0].name, sess.get_outputs()[0].name

    def forward(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run([name_out], {name_in: x})[0])

    return Encoder(
        modality=meta["pulsefm.modality"],
        preprocess_version=meta["pulsefm.preprocess_version"],
        version=file_digest(path),
        embed_dim=int(sess.get_outputs()[0].shape[-1]),
        forward=forward,
        source=meta.get("pulsefm.training_data", ""),
    )


def architecture_from_card(onnx_path: Path) -> dict[str, Any]:
    """What a random-init baseline needs from a published model.onnx: the architecture, modality and
    preprocessing, from the card.json beside it (no weights)."""
    card_path = onnx_path.parent / "card.json"
    try:
        card = json.loads(card_path.read_text())
        encoder = card["train_config"]["encoder"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{onnx_path}: no card.json with train_config.encoder beside it, so no architecture for a "
            "random-init baseline (--random-init needs the card.json that publish writes beside "
            f"model.onnx, or an encoder.pt; {type(exc).__name__}: {exc})"
        ) from None
    return {
        "encoder_config": encoder,
        "modality": card["modality"],
        "preprocess": {"version": card["preprocess_version"]},
        "store": {"source": card.get("training_data", "")},
    }


def load_encoder(path: str | Path, random_init_seed: int | None = None) -> Encoder:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix == ".onnx":
        if random_init_seed is not None:
            enc = torch_encoder(architecture_from_card(path), file_digest(path), random_init_seed)
        else:
            enc = onnx_encoder(path)
    else:
        enc = torch_encoder(load_artifact(path), file_digest(path), random_init_seed)
    enc.path = str(path)
    return enc


def embed_batches(
    encoder: Encoder, n: int, load: Callable[[np.ndarray], np.ndarray], batch_size: int = 64, desc: str = ""
) -> np.ndarray:
    """Embeddings of items 0..n-1 where `load(idx)` returns their segments; (n, D) float32."""
    out = np.empty((n, encoder.embed_dim), dtype=np.float32)
    with tqdm(total=n, desc=desc or "embed", unit="seg", disable=None) as bar:
        for a in range(0, n, batch_size):
            idx = np.arange(a, min(n, a + batch_size))
            out[idx] = encoder(load(idx))
            bar.update(idx.size)
    return out


def with_embeddings(meta: pd.DataFrame, emb: np.ndarray) -> pd.DataFrame:
    df = meta.reset_index(drop=True).copy()
    df[EMBEDDING] = list(emb.astype(np.float32))
    return df


def embedding_matrix(df: pd.DataFrame) -> np.ndarray:
    return np.stack(list(df[EMBEDDING])).astype(np.float32)


def embed_store(store_path: str | Path, encoder: Encoder, batch_size: int = 64) -> pd.DataFrame:
    """One row per segment of the encoder's modality: manifest (with participant labels) + embedding."""
    from training.store import SegmentStore

    store = SegmentStore(store_path)
    rows = store.indices(encoder.modality)
    if rows.size == 0:
        raise ValueError(f"{store_path}: no {encoder.modality} segments")
    spec_version = store.info.get("settings", {}).get("specs", {}).get(encoder.modality, {}).get("version")
    if spec_version and spec_version != encoder.preprocess_version:
        raise ValueError(
            f"{store_path} was preprocessed with {spec_version} but the encoder expects "
            f"{encoder.preprocess_version}; rebuild the store with this version of pulse-fm"
        )
    if encoder.calibrate is not None:
        sample = np.random.default_rng(0).choice(rows, min(rows.size, CALIBRATION_SEGMENTS), replace=False)
        encoder.calibrate(store.load(np.sort(sample)))
    emb = embed_batches(
        encoder, rows.size, lambda i: store.load(rows[i]), batch_size, f"embed {store.root.name}"
    )
    return with_embeddings(store.manifest.iloc[rows].drop(columns=["shard", "row"]), emb)


@dataclass
class FileReport:
    """What happened to one recording file: the line of `pulse-fm embed`'s summary table."""

    file: str
    status: str  # ok | read_error | rate_unknown | channels | too_short | no_usable_segment | other_modality
    detail: str = ""
    duration_s: float | None = None
    fs: float | None = None
    segments: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # quality reason -> segments


def _failed(path: Path, exc: Exception) -> FileReport:
    problem = exc.problem if isinstance(exc, RecordError) else str(exc)
    if "sampling rate unknown" in problem:
        return FileReport(str(path), "rate_unknown", "sampling rate unknown: pass --fs")
    if "channel" in problem:
        return FileReport(str(path), "channels", f"{problem}")
    return FileReport(str(path), "read_error", problem)


def segment_recordings(
    paths: Sequence[Path],
    modality: str,
    stride_s: float | None = None,
    fs: float | None = None,
    channels: str | None = None,
    dataset: str | None = None,
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, list[FileReport]]:
    """Recording files -> (kept-segment table, their segments, rejects table, one report per file)."""
    from pulsefm.io import read_record
    from pulsefm.pipeline import channels_for

    spec = spec_for(modality)
    overlap = 0.0 if stride_s is None else 1.0 - stride_s / spec.duration_s
    kept: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    rejected: list[dict[str, Any]] = []
    reports: list[FileReport] = []
    overrides = {k: v for k, v in (("fs", fs), ("dataset", dataset)) if v}
    for path in tqdm(paths, desc="preprocess", unit="file", disable=None):
        try:
            rec = read_record(path, **overrides)
            if rec.modality is not None and rec.modality != spec.modality:
                detail = f"a {rec.modality} recording (its sidecar says); the model takes {spec.modality}"
                reports.append(
                    FileReport(str(path), "other_modality", detail, round(rec.duration_s, 2), rec.fs)
                )
                continue
            rec = channels_for(rec, spec, channels)
            report = FileReport(str(path), "ok", duration_s=round(rec.duration_s, 2), fs=rec.fs)
            if rec.duration_s < spec.duration_s:
                report.status = "too_short"
                report.detail = f"{report.duration_s:.1f} s, shorter than one {spec.duration_s:g} s window"
                reports.append(report)
                rejected.append({"recording_id": str(path), "segment": -1, "reasons": report.detail})
                continue
            segs = process_record(rec, spec, overlap)
        except (RecordError, ValueError) as exc:
            reports.append(_failed(path, exc))
            rejected.append({"recording_id": str(path), "segment": -1, "reasons": reports[-1].detail})
            continue
        report.segments = len(segs)
        for k, (q, t0) in enumerate(zip(segs.quality, segs.start_s, strict=True)):
            row: dict[str, Any] = {
                "participant_id": rec.participant_id or path.parent.name,
                "recording_id": str(path),
            }
            row |= {"segment": k, "start_s": float(t0), "heart_rate_bpm": q.heart_rate_bpm, "sqi": q.sqi}
            if q.ok:
                kept.append(row)
                arrays.append(segs.data[k])
                report.kept += 1
            else:
                rejected.append({**row, "reasons": ",".join(q.reasons)})
                for reason in q.reasons:
                    report.rejected[reason] = report.rejected.get(reason, 0) + 1
        if not report.kept:
            report.status = "no_usable_segment"
            report.detail = "every segment failed the quality checks"
        reports.append(report)
    data = np.stack(arrays) if arrays else np.empty((0, spec.channels, spec.window), np.float32)
    return pd.DataFrame(kept), data, pd.DataFrame(rejected), reports


def summary_table(reports: Sequence[FileReport]) -> str:
    """One line per file: status, length, rate, segments kept / cut, and why the others were not."""
    rows = [("file", "status", "seconds", "Hz", "kept/segments", "why")]
    for r in reports:
        why = r.detail or ", ".join(f"{k} x{v}" for k, v in sorted(r.rejected.items()))
        if r.detail and r.rejected:
            why += " (" + ", ".join(f"{k} x{v}" for k, v in sorted(r.rejected.items())) + ")"
        elif r.rejected and r.status == "ok":
            why = "rejected: " + why
        rows.append(
            (
                Path(r.file).name,
                r.status,
                "" if r.duration_s is None else f"{r.duration_s:.1f}",
                "" if r.fs is None else f"{r.fs:g}",
                f"{r.kept}/{r.segments}",
                why,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5] for row in rows
    )


def aggregate(df: pd.DataFrame, by: str = "participant_id") -> pd.DataFrame:
    """Mean segment embedding per `by` group, with the group's first value of every other column."""
    emb = embedding_matrix(df)
    codes, groups = pd.factorize(df[by])
    sums = np.zeros((len(groups), emb.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, emb)
    counts = np.bincount(codes, minlength=len(groups))
    # groupby(sort=False) keeps first-appearance order, the order of pd.factorize's codes
    first = df.drop(columns=[EMBEDDING]).groupby(by, sort=False).first().reset_index()
    first["n_segments"] = counts
    return with_embeddings(first, (sums / counts[:, None]).astype(np.float32))


def write_embeddings(df: pd.DataFrame, out: Path, meta: dict[str, Any]) -> None:
    from training.storage import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: df.to_parquet(tmp, index=False))
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse-fm embed", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--model", required=True, help="encoder.pt from `pulse-fm train` or an exported model.onnx"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="segment store from `pulse-fm prepare`")
    src.add_argument("--recordings", help="a recording file, or a folder of them (any format pulse-fm reads)")
    p.add_argument("--out", required=True, help="Parquet file to write (its folder is created)")
    p.add_argument(
        "--aggregate",
        choices=["segment", "participant", "recording"],
        default="segment",
        help="one row per segment, or the mean embedding per participant / recording",
    )
    p.add_argument("--batch-size", type=int, default=64, help="segments per forward pass")
    p.add_argument(
        "--stride", type=float, metavar="SECONDS", help="seconds between segment starts (default: one window)"
    )
    p.add_argument("--overlap", type=float, default=0.0, help=argparse.SUPPRESS)  # old name: use --stride
    p.add_argument("--fs", type=float, help="sampling rate (Hz) of files that do not say it")
    p.add_argument(
        "--channels", help="channels to use, by name or index, comma-separated (default: by the modality)"
    )
    p.add_argument("--dataset", help="HDF5 / .npz array to read in files holding several")
    p.add_argument(
        "--random-init",
        type=int,
        metavar="SEED",
        help="baseline: the same architecture with random weights (from encoder.pt or model.onnx's card)",
    )
    return p


def recording_files(target: str) -> list[Path]:
    from pulsefm.io import find_recordings

    path = Path(target)
    if path.is_file():
        return [path]
    return list(find_recordings(path))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        encoder = load_encoder(args.model, args.random_init)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "model": str(args.model),
        "encoder_version": encoder.version,
        "modality": encoder.modality,
        "preprocess_version": encoder.preprocess_version,
        "aggregate": args.aggregate,
    }
    if args.store:
        df = embed_store(args.store, encoder, args.batch_size)
        meta["store"] = str(args.store)
    else:
        try:
            files = recording_files(args.recordings)
        except RecordError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not files:
            from pulsefm.io import SUFFIXES

            print(
                f"error: {args.recordings}: no recording files ({', '.join(SUFFIXES)})",
                file=sys.stderr,
            )
            return 2
        stride = args.stride
        if stride is None and args.overlap:
            stride = spec_for(encoder.modality).duration_s * (1.0 - args.overlap)
        table, data, rejects, reports = segment_recordings(
            files, encoder.modality, stride, args.fs, args.channels, args.dataset
        )
        print(summary_table(reports))
        if not rejects.empty:
            rejects.to_csv(out.with_suffix(".rejects.csv"), index=False)
            print(f"{len(rejects)} segment(s)/file(s) rejected: see {out.with_suffix('.rejects.csv')}")
        if table.empty:
            print("error: no usable segment in any file (the table above says why for each)", file=sys.stderr)
            return 1
        if encoder.calibrate is not None:
            encoder.calibrate(data[:CALIBRATION_SEGMENTS])
        emb = embed_batches(encoder, len(table), lambda i: data[i], args.batch_size)
        df = with_embeddings(table, emb)
        meta["recordings"] = str(args.recordings)
        meta["files"] = [asdict(r) for r in reports]
    if args.aggregate != "segment":
        df = aggregate(df, f"{args.aggregate}_id")
    write_embeddings(df, out, meta)
    print(f"wrote {len(df)} x {encoder.embed_dim} embeddings ({args.aggregate}s) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
