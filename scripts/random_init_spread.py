"""How much the random-init baseline, and so the SSL-vs-random verdict, depends on the init seed.

    python scripts/random_init_spread.py --encoder model_repository/ecg_encoder/1/model.onnx \
        --store stores/synsel300 --seeds 0 1 2 3 4 --out reports/spread-ecg-seed2.json

`pulse-fm evaluate` compares the SSL encoder with ONE random-init encoder (seed 0). Its paired
bootstrap CI covers which participants were tested, not which random weights were drawn. This
script probes the same store with random-init encoders of several seeds (same architecture,
BatchNorm calibrated the same way, the same participant split) and prints, per target, the SSL
metric, each seed's random-init metric and paired improvement, and on how many seeds SSL is
clearly better. Writes every number to --out.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.embed import embed_store, embedding_matrix, load_encoder
from training.evaluate import load_random_init_like
from training.probe import TARGETS, paired_improvement, run_probes
from training.store import SegmentStore


def spread(
    encoder_path: str, store: str, seeds: Sequence[int], test_fraction: float, n_boot: int
) -> dict[str, Any]:
    enc = load_encoder(encoder_path)
    table = embed_store(store, enc)
    targets = [t for t in TARGETS if TARGETS[t].column in table.columns]
    ssl = run_probes(table, embedding_matrix(table), targets, test_fraction, 0, n_boot)
    rows: dict[str, dict[str, Any]] = {
        r.target: {"metric": r.metric, "ssl": r.metrics[r.metric], "random_init": {}} for r in ssl
    }
    for seed in seeds:
        rand_table = embed_store(store, load_random_init_like(enc, seed))
        rand = run_probes(table, embedding_matrix(rand_table), targets, test_fraction, 0, n_boot)
        for a, b in zip(ssl, rand, strict=True):
            cmp = paired_improvement(a, b, n_boot, 0)
            rows[a.target]["random_init"][str(seed)] = {
                "value": b.metrics[b.metric],
                "improvement": cmp["improvement"],
                "ci95": cmp["ci95"],
                "clearly_better": cmp["clearly_better"],
            }
    return {
        "encoder": encoder_path,
        "encoder_version": enc.version,
        "store": store,
        "synthetic": SegmentStore(store).synthetic,
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
