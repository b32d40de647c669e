"""What an encoder knows about the simulator: each SYNTHETIC parameter read from its embeddings.

    python scripts/param_decodability.py --encoder model_repository/ecg_encoder/1/model.onnx \
        --store stores/synsel300-ecg --out reports/decode-ecg-v1.json

A synthetic cohort's participants are drawn from known parameters (training/synthetic.py: for
ECG the resting heart rate, HRV, R amplitude, QRS width, T amplitude and T angle...), and the
labels the probes predict (sex, age, BMI) act on the signals only through them. This script
fits the evaluation's ridge probe (participant means, the same participant split, strength by
grouped CV on train only) from the embeddings to each parameter, for the SSL encoder and for a
random-init encoder of the same architecture, and prints test R2 with participant-bootstrap 95%
CIs. A parameter the SSL encoder reads much better than random weights do is one it has learned
to keep; one it reads worse is one pretraining taught it to ignore.

Then, for each classification target (sex, condition), the test AUC three ways on each encoder:
probed directly from the embeddings (the evaluation's probe); from the decoded parameters (the
ridge decoders above, then a logistic probe on the training participants' decoded values); and
with the true-parameter probe (fitted on the training participants' true parameters) applied to
the decoded ones. An encoder that decodes every cue better but loses on the last two has errors
that fall along the attribute.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.baselines import TRUE_PARAMS
from training.embed import embed_store, embedding_matrix, load_encoder
from training.evaluate import load_random_init_like
from training.probe import (
    CLASSIFICATION,
    REGRESSION,
    TARGETS,
    Dataset,
    Target,
    design,
    fit,
    held_out_participants,
    metrics,
    predict,
    run_probe,
    split,
)
from training.store import SegmentStore


def decodability(
    encoder_path: str, store: str, random_init_seed: int, test_fraction: float, n_boot: int
) -> dict[str, Any]:
    enc = load_encoder(encoder_path)
    if not SegmentStore(store).synthetic:
        raise ValueError(f"{store}: not a SYNTHETIC store, so it has no simulator parameters")
    table = embed_store(store, enc)  # labels and simulator parameters come with the SSL rows
    features = {
        "ssl": embedding_matrix(table),
        "random_init": embedding_matrix(embed_store(store, load_random_init_like(enc, random_init_seed))),
    }
    test_ids = held_out_participants(table["participant_id"].to_numpy(), test_fraction, 0)
    params = [p for p in TRUE_PARAMS[enc.modality] if p in table.columns]
    rows: dict[str, dict[str, Any]] = {}
    for p in params:
        target = _param(p)
        rows[p] = {}
        for name, x in features.items():
            r = run_probe(table, x, target, test_ids, n_boot, 0)
            rows[p][name] = {"r2": r.metrics["r2"], "ci95": r.ci95["r2"], "n_test": r.n_test}
    classes = [
        t for t, spec in TARGETS.items() if spec.kind == CLASSIFICATION and spec.column in table.columns
    ]
    decoded = {n: decode_parameters(table, x, params, test_ids) for n, x in features.items()}
    through = {
        t: {n: through_parameters(table, x, decoded[n], t, test_ids) for n, x in features.items()}
        for t in classes
    }
    return {
        "encoder": encoder_path,
        "encoder_version": enc.version,
        "store": store,
        "synthetic": True,
        "random_init_seed": random_init_seed,
        "split": {"test_fraction": test_fraction, "seed": 0, "unit": "participant"},
        "params": rows,
        "through_parameters": through,
    }


def _param(p: str) -> Target:
    return Target(p, p, REGRESSION, "participant", "", f"simulator parameter {p}")


def decode_parameters(
    table: pd.DataFrame, x: np.ndarray, params: Sequence[str], test_ids: set[str]
) -> tuple[Dataset, Dataset]:
    """(train, test) participants with x = each parameter's ridge decoding (fitted on train) and
    y = its true value, one column per parameter in `params` order."""
    parts = [split(design(table, x, _param(p)), test_ids) for p in params]
    decoders = [fit(train, REGRESSION)[0] for train, _ in parts]

    def stack(side: int) -> Dataset:
        sets = [part[side] for part in parts]
        if any(not np.array_equal(s.groups, sets[0].groups) for s in sets):
            raise ValueError("the simulator parameters cover different participants")
        decoded = [predict(d, s.x, REGRESSION) for d, s in zip(decoders, sets, strict=True)]
        return Dataset(np.stack(decoded, axis=1), np.stack([s.y for s in sets], axis=1), sets[0].groups)

    return stack(0), stack(1)


def through_parameters(
    table: pd.DataFrame, x: np.ndarray, decoded: tuple[Dataset, Dataset], target: str, test_ids: set[str]
) -> dict[str, float]:
    """`target`'s test AUC: direct, from the decoded parameters, and by the true-parameter probe
    applied to the decoded parameters (module docstring); `decoded` from `decode_parameters`."""
    train, test = split(design(table, x, TARGETS[target]), test_ids)
    dec_train, dec_test = decoded
    if not (np.array_equal(dec_train.groups, train.groups) and np.array_equal(dec_test.groups, test.groups)):
        raise ValueError(f"the decoded parameters cover other participants than {target}'s labels")

    def auc(head: Any, features: np.ndarray) -> float:
        return metrics(test.y, predict(head, features, CLASSIFICATION), CLASSIFICATION)["auc"]

    direct, _ = fit(train, CLASSIFICATION)
    from_decoded, _ = fit(Dataset(dec_train.x, train.y, train.groups), CLASSIFICATION)
    true_head, _ = fit(Dataset(dec_train.y, train.y, train.groups), CLASSIFICATION)
    return {
        "direct": auc(direct, test.x),
        "decoded_params": auc(from_decoded, dec_test.x),
        "true_param_probe_on_decoded": auc(true_head, dec_test.x),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| simulator parameter | SSL R2 | random-init R2 |",
        "|---|---|---|",
    ]
    for p, row in result["params"].items():
        cells = [
            f"{row[k]['r2']:.3f} [{row[k]['ci95'][0]:.3f}, {row[k]['ci95'][1]:.3f}]"
            for k in ("ssl", "random_init")
        ]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    if result.get("through_parameters"):
        lines += ["", "| target (test AUC) | way | SSL | random-init |", "|---|---|---|---|"]
        for target, by in result["through_parameters"].items():
            for way in by["ssl"]:
                lines.append(f"| {target} | {way} | {by['ssl'][way]:.3f} | {by['random_init'][way]:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", required=True, help="encoder.pt or model.onnx (with card.json)")
    ap.add_argument("--store", required=True, help="a SYNTHETIC segment store")
    ap.add_argument("--random-init-seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.3)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, help="write every number here (JSON)")
    args = ap.parse_args(argv)
    result = decodability(args.encoder, args.store, args.random_init_seed, args.test_fraction, args.bootstrap)
    print(f"SYNTHETIC store {args.store}; encoder {result['encoder_version']}; test R2 [95% CI]")
    print(markdown(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
