"""Which simulator inputs carry each attribute (SYNTHETIC): the upper bound taken apart.

    python scripts/bound_cues.py --store stores/syntest1000-ecg --modality ecg --out reports/cues.json

`scripts/random_init_spread.py` probes the simulator's inputs as an upper bound (for ECG each
recording's own inputs, `training.baselines.recording_inputs`; for PPG the participant's
parameters, `true_params`). This script fits the same probe (same participant split, strength by
grouped CV on train only) once on all inputs, then without each input and on each input alone,
and prints the test metric. An input whose removal costs the most is the cue an encoder must keep
to approach the bound on that target.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.baselines import TRUE_PARAMS, recording_inputs, true_params
from training.probe import TARGETS, headline_metric, run_probes
from training.store import SegmentStore
from training.synthetic import ECG_RECORDING_INPUTS


def bound_inputs(store: SegmentStore, modality: str) -> tuple[Any, str, list[str], np.ndarray]:
    """(segment table of `modality`, the bound's name, its input names, inputs per row)."""
    if not store.synthetic:
        raise ValueError(f"{store.root}: not a SYNTHETIC store, so it has no simulator inputs")
    rows = store.indices(modality)
    if rows.size == 0:
        raise ValueError(f"{store.root}: no {modality} segments")
    table = store.manifest.iloc[rows].reset_index(drop=True)
    if modality == "ecg":
        return table, "recording_inputs", list(ECG_RECORDING_INPUTS), recording_inputs(table, modality)
    return table, "true_params", list(TRUE_PARAMS[modality]), true_params(table, modality)


def cues(
    store: str, modality: str, targets: Sequence[str], test_fraction: float, n_boot: int
) -> dict[str, Any]:
    table, bound, names, x = bound_inputs(SegmentStore(store), modality)
    targets = [t for t in targets if TARGETS[t].column in table.columns]

    def score(cols: list[int]) -> dict[str, float]:
        return {
            r.target: r.metrics[r.metric]
            for r in run_probes(table, x[:, cols], targets, test_fraction, 0, n_boot)
        }

    every = list(range(len(names)))
    result: dict[str, Any] = {
        "store": store,
        "modality": modality,
        "synthetic": True,
        "bound": bound,
        "split": {"test_fraction": test_fraction, "seed": 0, "unit": "participant"},
        "metric": {t: headline_metric(TARGETS[t].kind) for t in targets},
        "all": score(every),
        "without": {},
        "alone": {},
    }
    for i, name in enumerate(names):
        result["without"][name] = score([j for j in every if j != i])
        result["alone"][name] = score([i])
    return result


def markdown(result: dict[str, Any]) -> str:
    targets = list(result["all"])
    lines = [
        "| input | " + " | ".join(f"{t}: without / alone" for t in targets) + " |",
        "|---|" + "---|" * len(targets),
        "| (all) | " + " | ".join(f"{result['all'][t]:.3g}" for t in targets) + " |",
    ]
    for name in result["without"]:
        cells = [f"{result['without'][name][t]:.3g} / {result['alone'][name][t]:.3g}" for t in targets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="a SYNTHETIC segment store")
    p.add_argument("--modality", required=True, choices=["ppg", "ecg"])
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--bootstrap", type=int, default=200, help="resamples (the CIs are not printed)")
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)
    result = cues(args.store, args.modality, args.targets, args.test_fraction, args.bootstrap)
    print(f"SYNTHETIC store {args.store}, {result['bound']} of {args.modality}: probe test metric")
    print(markdown(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
