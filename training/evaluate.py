"""`pulse-fm evaluate`: probes for the SSL encoder and its baselines, real-recording checks, a report.

    pulse-fm evaluate --encoder runs/tiny/encoder.pt --store stores/syneval --out reports/tiny
    pulse-fm evaluate --encoder runs/tiny/encoder.pt --encoder runs/tiny-ecg/encoder.pt \\
        --store stores/syneval --ablations runs/ablate/ablations.json --out reports/tiny

For each encoder (one per modality) and the store's segments of that modality:

    feature sets  ssl (the encoder), random_init (same architecture, random weights),
                  band_power (log band power of the preprocessed segment: no training),
                  hr_hrv (neurokit2 heart rate + HRV), true_params (simulator parameters;
                  SYNTHETIC stores only - an upper bound)
    probes        every target of `training.probe.TARGETS`, the SAME participant split for all sets
    real data     the real-recording benchmark (training/realbench.py): recordings that ship in
                  PyPI packages (docs/data.md), leave-one-recording-out heart-rate probe and
                  same-recording retrieval for ssl / random_init / band_power / predict-the-mean,
                  bootstrap CIs over recordings

    pulse-fm evaluate --real-only --encoder model_repository/ppg_encoder/2/model.onnx \\
        --encoder model_repository/ecg_encoder/1/model.onnx --out reports/real   # a few minutes

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
from training import realbench
from training.baselines import band_power, hrv_matrix, true_params
from training.embed import (
    Encoder,
    aggregate,
    embed_store,
    embedding_matrix,
    load_encoder,
)
from training.probe import (
    TARGETS,
    ProbeResult,
    fit_plausibility,
    headline_metric,
    paired_improvement,
    run_probes,
)


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
    segments = store.load(rows)
    sets["band_power"] = band_power(segments, segments_fs)
    sets["hr_hrv"] = hrv_matrix(segments, segments_fs, modality)
    if "hr_rest" in table.columns:  # a synthetic store
        sets["true_params"] = true_params(table, modality)
    return sets


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
    store_path: str | Path,
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
        result["real"] = realbench.benchmark(encoder, baseline, n_boot, seed)
    return result


def load_random_init_like(encoder: Encoder, seed: int = 0) -> Encoder:
    """The same architecture with random weights (`seed`; the report uses 0); for a published
    model.onnx the architecture comes from the card.json that `pulse-fm publish` writes beside it
    (training.embed.architecture_from_card)."""
    return load_encoder(encoder.path, random_init_seed=seed)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """Probe results as a Markdown table (the README's results section)."""
    names = ["ssl", "random_init", "band_power", "hr_hrv", "true_params"]
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
    p.add_argument("--store", help="evaluation store (participants unseen in pretraining)")
    p.add_argument("--out", required=True, help="report folder (report.html, results.json, plots)")
    p.add_argument("--ablations", help="ablations.json from `pulse-fm ablate` to include in the report")
    p.add_argument("--test-fraction", type=float, default=0.3, help="participants held out for the probes")
    p.add_argument("--seed", type=int, default=0, help="split and bootstrap seed")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--no-real", action="store_true", help="skip the real-recording benchmark")
    p.add_argument(
        "--real-only", action="store_true", help="only the real-recording benchmark (no store needed)"
    )
    return p


def real_only(args: argparse.Namespace, out: Path) -> int:
    """The real-recording benchmark alone: OUT/real_benchmark.json and .md."""
    results = []
    for path in args.encoder:
        try:
            enc = load_encoder(path)
            baseline = load_random_init_like(enc)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"real-recording benchmark: {path} ({enc.modality})")
        res = realbench.benchmark(enc, baseline, args.bootstrap, args.seed)
        res["encoder"] = str(path)
        results.append(res)
    (out / "real_benchmark.json").write_text(json.dumps({"results": results}, indent=2))
    table = realbench.markdown(results)
    (out / "real_benchmark.md").write_text(table)
    print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from training.report import write_report

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.real_only:
        return real_only(args, out)
    if not args.store:
        print("error: --store is needed (or --real-only)", file=sys.stderr)
        return 2
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
            enc, baseline, args.store, args.test_fraction, args.seed, args.bootstrap, not args.no_real
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
