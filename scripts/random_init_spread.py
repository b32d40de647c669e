"""How much the random-init baseline, and so the SSL-vs-random verdict, depends on the init seed.

    python scripts/random_init_spread.py --encoder model_repository/ecg_encoder/1/model.onnx \
        --store stores/synsel300 --seeds 0 1 2 3 4 --out reports/spread-ecg-seed2.json

`pulse-fm evaluate` compares the SSL encoder with ONE random-init encoder (seed 0). Its paired
bootstrap CI covers which participants were tested, not which random weights were drawn. This
script probes the same store with random-init encoders of several seeds (same architecture,
BatchNorm calibrated the same way, the same participant split) and prints, per target, the SSL
metric, each seed's random-init metric and paired improvement, and on how many seeds SSL is
clearly better. Writes every number to --out.

On a SYNTHETIC store it also asks whether ANY encoder could clear the bar there: the same probes
on the simulator's parameters (`true_params`) and, for ECG, on what each recording was simulated
from (`recording_inputs`, training/baselines.py), each compared with every random-init seed in the
same paired bootstrap. These bounds hold everything the signals can carry about the attributes,
in a few dimensions a probe fits easily. Where a bound is not clearly better than a random-init
draw, no encoder can be shown clearly better on that target and cohort (up to the linearity of the
probe): the bar measures the cohort's size there, not the encoder.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.baselines import recording_inputs, true_params
from training.embed import embed_store, embedding_matrix, load_encoder
from training.evaluate import load_random_init_like
from training.probe import TARGETS, ProbeResult, paired_improvement, run_probes
from training.store import SegmentStore


def _versus(a: ProbeResult, b: ProbeResult, n_boot: int) -> dict[str, Any]:
    cmp = paired_improvement(a, b, n_boot, 0)
    return {k: cmp[k] for k in ("improvement", "ci95", "clearly_better")}


def spread(
    encoder_path: str, store: str, seeds: Sequence[int], test_fraction: float, n_boot: int
) -> dict[str, Any]:
    enc = load_encoder(encoder_path)
    table = embed_store(store, enc)
    targets = [t for t in TARGETS if TARGETS[t].column in table.columns]
    synthetic = SegmentStore(store).synthetic
    ssl = run_probes(table, embedding_matrix(table), targets, test_fraction, 0, n_boot)
    bounds = {}
    if synthetic:
        bounds["true_params"] = true_params(table, enc.modality)
        if enc.modality == "ecg":
            bounds["recording_inputs"] = recording_inputs(table, enc.modality)
    bound_probes = {
        name: run_probes(table, x, targets, test_fraction, 0, n_boot) for name, x in bounds.items()
    }
    rows: dict[str, dict[str, Any]] = {
        r.target: {"metric": r.metric, "ssl": r.metrics[r.metric], "random_init": {}, "upper_bounds": {}}
        for r in ssl
    }
    for name, probes in bound_probes.items():
        for r in probes:
            rows[r.target]["upper_bounds"][name] = {"value": r.metrics[r.metric], "vs_random_init": {}}
    for seed in seeds:
        rand_table = embed_store(store, load_random_init_like(enc, seed))
        rand = run_probes(table, embedding_matrix(rand_table), targets, test_fraction, 0, n_boot)
        for a, b in zip(ssl, rand, strict=True):
            rows[a.target]["random_init"][str(seed)] = {"value": b.metrics[b.metric], **_versus(a, b, n_boot)}
        for name, probes in bound_probes.items():
            for a, b in zip(probes, rand, strict=True):
                rows[a.target]["upper_bounds"][name]["vs_random_init"][str(seed)] = _versus(a, b, n_boot)
    return {
        "encoder": encoder_path,
        "encoder_version": enc.version,
        "store": store,
        "synthetic": synthetic,
        "seeds": list(seeds),
        "split": {"test_fraction": test_fraction, "seed": 0, "unit": "participant"},
        "targets": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    seeds = [str(s) for s in result["seeds"]]
    head = (
        "| target | metric | ssl | "
        + " | ".join(f"random-init {s}" for s in seeds)
        + " | SSL clearly better |"
    )
    lines = [head, "|" + "---|" * (len(seeds) + 4)]
    for target, row in result["targets"].items():
        cells = [
            f"{r['value']:.3g} ({r['improvement']:+.3g} [{r['ci95'][0]:+.3g}, {r['ci95'][1]:+.3g}])"
            for r in (row["random_init"][s] for s in seeds)
        ]
        wins = sum(row["random_init"][s]["clearly_better"] for s in seeds)
        lines.append(
            f"| {target} | {row['metric'].upper()} | {row['ssl']:.3g} | "
            + " | ".join(cells)
            + f" | {wins} of {len(seeds)} seeds |"
        )
    bounds = [(t, name, b) for t, row in result["targets"].items() for name, b in row["upper_bounds"].items()]
    if bounds:
        lines += [
            "",
            "Upper bounds (SYNTHETIC): could any encoder clear the bar? Bound's metric "
            "(its paired improvement over each random-init seed [95% CI])",
            "",
            "| target | bound | value | "
            + " | ".join(f"vs random-init {s}" for s in seeds)
            + " | clearly better |",
            "|" + "---|" * (len(seeds) + 4),
        ]
        for target, name, b in bounds:
            vs = [b["vs_random_init"][s] for s in seeds]
            cells = [f"{r['improvement']:+.3g} [{r['ci95'][0]:+.3g}, {r['ci95'][1]:+.3g}]" for r in vs]
            wins = sum(r["clearly_better"] for r in vs)
            lines.append(
                f"| {target} | {name} | {b['value']:.3g} | "
                + " | ".join(cells)
                + f" | {wins} of {len(seeds)} seeds |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, help="encoder.pt or a published model.onnx")
    p.add_argument("--store", required=True, help="evaluation store")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    result = spread(args.encoder, args.store, args.seeds, args.test_fraction, args.bootstrap)
    synthetic = "SYNTHETIC store; " if result["synthetic"] else ""
    print(
        f"{synthetic}{args.encoder} on {args.store}: random-init metric (SSL's paired improvement [95% CI])"
    )
    print(markdown(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
