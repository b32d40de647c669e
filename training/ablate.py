"""`pulse-fm ablate`: the recipe's ablations at a reduced budget, one command.

    pulse-fm ablate --store stores/syn200 --eval-store stores/syneval --out runs/ablate --steps 300

Trains each variant of a preset (default `tiny`) with the same seed and budget, embeds the
evaluation store, probes every target on the same participant split and reports the
embedding's effective rank:

    full           participant-level positives, KoLeo 0.1, EMA momentum teacher (the recipe)
    segment_pos    positives are two augmentations of the same segment
    no_koleo       KoLeo weight 0
    no_momentum    plain SimCLR, no EMA teacher

Finished runs are reused (train resumes from RUN/ckpt.pt), so a rerun only fills gaps.
Writes OUT/ablations.json and prints a table. Pass the JSON to `pulse-fm evaluate --ablations`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pulsefm.cli import HelpFormatter
from training.config import PRESETS, TrainConfig
from training.embed import embed_store, embedding_matrix, load_encoder
from training.evaluate import effective_rank, result_row
from training.probe import TARGETS, format_metric, run_probes
from training.store import SegmentStore
from training.train import train

VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "segment_pos": {"positives": "segment"},
    "no_koleo": {"koleo_weight": 0.0},
    "no_momentum": {"use_momentum": False},
}


def run_variant(
    name: str, cfg: TrainConfig, store: str, eval_store: str, out: Path, test_fraction: float, seed: int
) -> dict[str, Any]:
    run = out / name
    last = train(cfg, store, run)
    if not last:  # already finished: read the last logged loss
        from training.train import read_metrics

        last = [m for m in read_metrics(run) if "loss" in m][-1]
    enc = load_encoder(run / "encoder.pt")
    table = embed_store(eval_store, enc)
    feats = embedding_matrix(table)
    targets = [t for t in TARGETS if TARGETS[t].column in table.columns]
    results = run_probes(table, feats, targets, test_fraction, seed, n_boot=500)
    return {
        "name": name,
        "changes": VARIANTS[name],
        "final_loss": float(last["loss"]),
        "effective_rank": effective_rank(feats),
        "probes": [result_row(r) for r in results],
        "_results": results,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse-fm ablate", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--store", required=True, help="pretraining store")
    p.add_argument("--eval-store", required=True, help="store of participants unseen in pretraining")
    p.add_argument("--out", required=True)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = PRESETS[args.preset].replace(steps=args.steps, seed=args.seed)
    runs = [
        run_variant(
            name,
            base.replace(**VARIANTS[name]),
            args.store,
            args.eval_store,
            out,
            args.test_fraction,
            args.seed,
        )
        for name in args.variants
    ]
    synthetic = SegmentStore(args.eval_store).synthetic
    doc = {
        "description": (
            f"preset {args.preset}, {args.steps} steps each, seed {args.seed}; pretraining store "
            f"{args.store}, probes on {args.eval_store} (test fraction {args.test_fraction}, "
            "participant-bootstrap 95% CIs)" + ("; SYNTHETIC data" if synthetic else "")
        ),
        "synthetic": synthetic,
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
    }
    (out / "ablations.json").write_text(json.dumps(doc, indent=2))
    print(f"\n{doc['description']}")
    print(f"{'run':<13}{'eff. rank':>10}  " + "  ".join(f"{r.target:<28}" for r in runs[0]["_results"]))
    for r in runs:
        cells = "  ".join(f"{format_metric(p):<28}" for p in r["_results"])
        print(f"{r['name']:<13}{r['effective_rank']:>10.1f}  {cells}")
    print(f"wrote {out / 'ablations.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
