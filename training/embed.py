"""`pulse-fm embed`: frozen encoder (encoder.pt or model.onnx) -> Parquet of embeddings per segment.

    pulse-fm embed --model runs/tiny/encoder.pt --store stores/syneval --out emb/tiny.parquet
    pulse-fm embed --model model_repository/ppg_encoder/1/model.onnx --recordings my_ppg/ \\
        --modality ppg --out emb/mine.parquet
    pulse-fm embed ... --aggregate participant     # one row per participant (mean of segments)

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

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


def load_encoder(path: str | Path, random_init_seed: int | None = None) -> Encoder:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if path.suffix == ".onnx":
        if random_init_seed is not None:
            raise ValueError("--random-init needs an encoder.pt (the architecture comes from it)")
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


def segment_recordings(
    paths: Sequence[Path], modality: str, overlap: float = 0.0, fs: float | None = None
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Recording files -> (kept-segment table, their segments, rejects table with reasons)."""
    from pulsefm.io import read_record

    spec = spec_for(modality)
    kept: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    rejected: list[dict[str, Any]] = []
    for path in tqdm(paths, desc="preprocess", unit="file", disable=None):
        try:
            rec = read_record(path, **({"fs": fs} if fs else {}))
            segs = process_record(rec, spec, overlap)
        except (RecordError, ValueError) as exc:
            rejected.append({"recording_id": str(path), "segment": -1, "reasons": str(exc)})
            continue
        for k, (q, t0) in enumerate(zip(segs.quality, segs.start_s, strict=True)):
            row: dict[str, Any] = {
                "participant_id": rec.participant_id or path.parent.name,
                "recording_id": str(path),
            }
            row |= {"segment": k, "start_s": float(t0), "heart_rate_bpm": q.heart_rate_bpm, "sqi": q.sqi}
            if q.ok:
                kept.append(row)
                arrays.append(segs.data[k])
            else:
                rejected.append({**row, "reasons": ",".join(q.reasons)})
    data = np.stack(arrays) if arrays else np.empty((0, spec.channels, spec.window), np.float32)
    return pd.DataFrame(kept), data, pd.DataFrame(rejected)


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
    from training.store import atomic_write

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: df.to_parquet(tmp, index=False))
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pulse-fm embed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model", required=True, help="encoder.pt from `pulse-fm train` or an exported model.onnx"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", help="segment store from `pulse-fm prepare`")
    src.add_argument("--recordings", help="folder of recordings (any format pulse-fm reads)")
    p.add_argument("--out", required=True, help="Parquet file to write (a .json with provenance beside it)")
    p.add_argument("--aggregate", choices=["segment", "participant", "recording"], default="segment")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--overlap", type=float, default=0.0, help="segment overlap for --recordings")
    p.add_argument("--fs", type=float, help="sampling rate of every file in --recordings (else from files)")
    p.add_argument(
        "--random-init", type=int, metavar="SEED", help="baseline: same architecture, random weights"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        encoder = load_encoder(args.model, args.random_init)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
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
        from pulsefm.io import find_recordings

        files = list(find_recordings(args.recordings))
        table, data, rejects = segment_recordings(files, encoder.modality, args.overlap, args.fs)
        if not rejects.empty:
            rejects.to_csv(out.with_suffix(".rejects.csv"), index=False)
            print(f"{len(rejects)} segment(s)/file(s) rejected: see {out.with_suffix('.rejects.csv')}")
        if table.empty:
            print("error: no segment passed the quality checks", file=sys.stderr)
            return 1
        if encoder.calibrate is not None:
            encoder.calibrate(data[:CALIBRATION_SEGMENTS])
        emb = embed_batches(encoder, len(table), lambda i: data[i], args.batch_size)
        df = with_embeddings(table, emb)
        meta["recordings"] = str(args.recordings)
    if args.aggregate != "segment":
        df = aggregate(df, f"{args.aggregate}_id")
    write_embeddings(df, out, meta)
    print(f"wrote {len(df)} x {encoder.embed_dim} embeddings ({args.aggregate}s) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
