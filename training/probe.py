"""`pulse-fm probe`: linear probes on frozen embeddings, with participant-level splits.

    pulse-fm probe --embeddings emb/tiny.parquet --out probes/tiny

Targets (columns of the store's manifest / participant table):

    age, bmi        ridge regression on the participant's mean embedding   MAE, R2
    heart_rate      ridge regression per segment (labels: detected beats)   MAE, R2
    sex, condition  logistic regression on the participant's mean embedding AUC

Participants are split once into train and test (no participant in both; the same seed gives
the same split for every feature set, so baselines are compared on identical participants).
Inside the train part, standardisation + model are one sklearn pipeline and the
regularisation strength is chosen by grouped 5-fold CV (folds never split a participant).
Test metrics come with participant-level bootstrap 95% CIs.

Writes OUT/probes.json: one linear head per target, folded into raw-embedding space
(y = x . w + b; a sigmoid on top for classifiers), with target, units, level, metrics and the
encoder version - what `pulse-fm export` turns into ONNX and the gateway serves.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pulsefm.cli import HelpFormatter
from pulsefm.plausibility import Plausibility, fit_ood, label_range
from training.embed import aggregate, embedding_matrix

REGRESSION, CLASSIFICATION = "regression", "classification"


@dataclass(frozen=True)
class Target:
    name: str
    column: str
    kind: str  # REGRESSION | CLASSIFICATION
    level: str  # "participant" (mean embedding) | "segment"
    units: str
    description: str


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("age", "age", REGRESSION, "participant", "years", "age"),
        Target("bmi", "bmi", REGRESSION, "participant", "kg/m2", "body-mass index"),
        Target(
            "heart_rate", "heart_rate_bpm", REGRESSION, "segment", "bpm", "mean heart rate of the segment"
        ),
        Target("sex", "sex", CLASSIFICATION, "participant", "probability", "P(male)"),
        Target("condition", "condition", CLASSIFICATION, "participant", "probability", "P(condition)"),
    ]
}
ALPHAS = np.logspace(-2, 4, 13)  # ridge
CS = np.logspace(-4, 2, 13)  # logistic (inverse strength)


@dataclass
class Dataset:
    """A probe's design: features, labels and the participant of every row."""

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray


def design(table: pd.DataFrame, features: np.ndarray, target: Target) -> Dataset:
    """Rows for `target`: participant means for participant-level targets, segments otherwise."""
    if target.column not in table.columns:
        raise KeyError(f"no column {target.column!r} for target {target.name!r}")
    df = table.assign(embedding=list(features))
    if target.level == "participant":
        df = aggregate(df, "participant_id")
    y = pd.to_numeric(df[target.column], errors="coerce").to_numpy(dtype=np.float64)
    keep = np.isfinite(y)
    return Dataset(embedding_matrix(df)[keep], y[keep], df["participant_id"].to_numpy().astype(str)[keep])


def held_out_participants(
    participant_ids: Sequence[str] | np.ndarray, test_fraction: float, seed: int
) -> set[str]:
    from training.store import split_participants

    split = split_participants(participant_ids, (1.0 - test_fraction, 0.0, test_fraction), seed)
    return {p for p, s in split.items() if s == "test"}


def split(data: Dataset, test_ids: set[str]) -> tuple[Dataset, Dataset]:
    """(train, test) rows of `data`: test holds the participants in `test_ids`."""
    is_test = np.isin(data.groups, list(test_ids))
    train = Dataset(data.x[~is_test], data.y[~is_test], data.groups[~is_test])
    test = Dataset(data.x[is_test], data.y[is_test], data.groups[is_test])
    return train, test


def fit(train: Dataset, kind: str, seed: int = 0) -> tuple[Any, float]:
    """Standardise + ridge/logistic; strength picked by grouped 5-fold CV on `train` only."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == REGRESSION:
        model: Any = Ridge()
        grid, scoring = {"model__alpha": ALPHAS}, "neg_mean_absolute_error"
    else:
        model = LogisticRegression(max_iter=5000)
        grid, scoring = {"model__C": CS}, "roc_auc"
    folds = min(5, len(np.unique(train.groups)))
    search = GridSearchCV(
        Pipeline([("scale", StandardScaler()), ("model", model)]),
        grid,
        scoring=scoring,
        cv=GroupKFold(folds),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter at the weakest regularisation
        search.fit(train.x, train.y, groups=train.groups)
    strength = float(next(iter(search.best_params_.values())))
    return search.best_estimator_, strength


def predict(pipe: Any, x: np.ndarray, kind: str) -> np.ndarray:
    if kind == REGRESSION:
        return np.asarray(pipe.predict(x), dtype=np.float64)
    return np.asarray(pipe.predict_proba(x)[:, 1], dtype=np.float64)


def metrics(y: np.ndarray, pred: np.ndarray, kind: str) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error, r2_score, roc_auc_score

    if kind == REGRESSION:
        return {"mae": float(mean_absolute_error(y, pred)), "r2": float(r2_score(y, pred))}
    if len(np.unique(y)) < 2:
        return {"auc": float("nan")}
    return {"auc": float(roc_auc_score(y, pred))}


def _participant_resamples(groups: np.ndarray, n: int, seed: int) -> Iterator[np.ndarray]:
    """`n` bootstrap row indices, resampling participants (all of a participant's rows together)."""
    codes, uniq = pd.factorize(groups)
    members = [np.flatnonzero(codes == k) for k in range(len(uniq))]
    rng = np.random.default_rng(seed)
    for _ in range(n):
        pick = rng.integers(0, len(uniq), len(uniq))
        yield np.concatenate([members[k] for k in pick])


def bootstrap(
    y: np.ndarray, pred: np.ndarray, groups: np.ndarray, kind: str, n: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals over participant resamples."""
    draws: dict[str, list[float]] = {}
    for idx in _participant_resamples(groups, n, seed):
        for name, value in metrics(y[idx], pred[idx], kind).items():
            draws.setdefault(name, []).append(value)
    return {
        name: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))) for name, v in draws.items()
    }


def headline_metric(kind: str) -> str:
    """A probe's headline metric: MAE for regression (lower is better), AUC otherwise (higher is better)."""
    return "mae" if kind == REGRESSION else "auc"


@dataclass
class ProbeResult:
    target: str
    kind: str
    level: str
    units: str
    n_train: int
    n_test: int
    strength: float  # chosen ridge alpha or logistic C
    metrics: dict[str, float]
    ci95: dict[str, tuple[float, float]]
    weights: list[float] = field(repr=False)  # in raw feature space: y = x . weights + bias
    bias: float = 0.0
    # the same map unfolded, as exported (better conditioned in float32):
    # ((x - mean) / scale) . coef + intercept
    mean: list[float] = field(default_factory=list, repr=False)
    scale: list[float] = field(default_factory=list, repr=False)
    coef: list[float] = field(default_factory=list, repr=False)
    intercept: float = 0.0
    test_y: list[float] = field(default_factory=list, repr=False)
    test_pred: list[float] = field(default_factory=list, repr=False)
    test_groups: list[str] = field(default_factory=list, repr=False)

    @property
    def metric(self) -> str:
        return headline_metric(self.kind)

    def head(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("test_y", "test_pred", "test_groups"):
            d.pop(k)
        return d


def fold_linear(pipe: Any, kind: str) -> tuple[np.ndarray, float]:
    """scaler + linear model -> (w, b) acting on raw features: model((x - mu) / sd) = x . w + b."""
    scale, model = pipe.named_steps["scale"], pipe.named_steps["model"]
    coef = np.ravel(model.coef_).astype(np.float64)
    intercept = float(np.ravel(model.intercept_)[0]) if np.ndim(model.intercept_) else float(model.intercept_)
    w = coef / scale.scale_
    return w, intercept - float(np.dot(scale.mean_, w))


def run_probe(
    table: pd.DataFrame,
    features: np.ndarray,
    target: Target,
    test_ids: set[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    train, test = split(design(table, features, target), test_ids)
    if len(np.unique(train.groups)) < 2 or test.y.size == 0:
        raise ValueError(f"{target.name}: too few participants for a split")
    if target.kind == CLASSIFICATION and min(len(np.unique(train.y)), len(np.unique(test.y))) < 2:
        raise ValueError(f"{target.name}: train or test split holds a single class")
    pipe, strength = fit(train, target.kind, seed)
    pred = predict(pipe, test.x, target.kind)
    w, b = fold_linear(pipe, target.kind)
    return ProbeResult(
        target=target.name,
        kind=target.kind,
        level=target.level,
        units=target.units,
        n_train=int(train.y.size),
        n_test=int(test.y.size),
        strength=strength,
        metrics=metrics(test.y, pred, target.kind),
        ci95=bootstrap(test.y, pred, test.groups, target.kind, n_boot, seed),
        weights=[float(v) for v in w],
        bias=b,
        mean=[float(v) for v in pipe.named_steps["scale"].mean_],
        scale=[float(v) for v in pipe.named_steps["scale"].scale_],
        coef=[float(v) for v in np.ravel(pipe.named_steps["model"].coef_)],
        intercept=float(np.ravel(pipe.named_steps["model"].intercept_)[0]),
        test_y=[float(v) for v in test.y],
        test_pred=[float(v) for v in pred],
        test_groups=[str(g) for g in test.groups],
    )


def above_zero(bound: float, tie: float = 1e-9) -> bool:
    """A CI bound clearly above 0. Within `tie` of 0 it is a tie seen through float rounding (a
    bootstrap lower bound of 1.1e-16 on an AUC difference was seen), not an improvement."""
    return bound > tie


def paired_improvement(a: ProbeResult, b: ProbeResult, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """How much better `a` is than `b` on the same test rows (MAE: b - a; AUC: a - b), with a 95% CI
    from a paired bootstrap over participants (one resample scores both). `clearly_better` when the
    interval lies above zero: the criterion the evaluation applies to SSL vs random-init."""
    if a.target != b.target or a.test_y != b.test_y or a.test_groups != b.test_groups:
        raise ValueError(f"{a.target} vs {b.target}: not the same test rows")
    y, pa, pb = (np.asarray(v) for v in (a.test_y, a.test_pred, b.test_pred))
    sign = -1.0 if a.kind == REGRESSION else 1.0
    metric = a.metric

    def gain(idx: np.ndarray) -> float:
        return sign * (metrics(y[idx], pa[idx], a.kind)[metric] - metrics(y[idx], pb[idx], a.kind)[metric])

    draws = [gain(idx) for idx in _participant_resamples(np.asarray(a.test_groups), n, seed)]
    lo, hi = float(np.nanpercentile(draws, 2.5)), float(np.nanpercentile(draws, 97.5))
    return {
        "target": a.target,
        "metric": metric,
        "improvement": gain(np.arange(y.size)),
        "ci95": (lo, hi),
        "clearly_better": above_zero(lo),
    }


def run_probes(
    table: pd.DataFrame,
    features: np.ndarray,
    targets: Sequence[str],
    test_fraction: float = 0.3,
    seed: int = 0,
    n_boot: int = 1000,
) -> list[ProbeResult]:
    """Probes for `targets` on one participant split; targets that cannot be fitted are skipped (noted)."""
    test_ids = held_out_participants(table["participant_id"].to_numpy(), test_fraction, seed)
    results = []
    for t in targets:
        if TARGETS[t].column not in table.columns:
            continue
        try:
            results.append(run_probe(table, features, TARGETS[t], test_ids, n_boot, seed))
        except ValueError as exc:
            print(f"skipped probe: {exc}", file=sys.stderr)
    return results


def fit_plausibility(
    table: pd.DataFrame,
    features: np.ndarray,
    targets: Sequence[str],
    test_fraction: float = 0.3,
    seed: int = 0,
) -> Plausibility:
    """Training ranges of the regression targets and the OOD model (pulsefm.plausibility), on the
    same participant split as `run_probes`: fitted on the training participants' segments, the
    flag threshold from the held-out participants' segments."""
    ids = table["participant_id"].to_numpy().astype(str)
    test = np.isin(ids, list(held_out_participants(ids, test_fraction, seed)))
    ranges = {}
    for t in targets:
        target = TARGETS[t]
        if target.kind == REGRESSION and target.column in table.columns:
            found = label_range(pd.to_numeric(table[target.column], errors="coerce").to_numpy()[~test])
            if found is not None:
                ranges[t] = found
    return Plausibility(ranges, fit_ood(features[~test], features[test]))


def format_metric(r: ProbeResult) -> str:
    """'MAE 4.12 [3.80, 4.51] y' / 'AUC 0.81 [0.74, 0.88]'."""
    name = r.metric
    lo, hi = r.ci95[name]
    unit = f" {r.units}" if r.kind == REGRESSION else ""
    return f"{name.upper()} {r.metrics[name]:.3g} [{lo:.3g}, {hi:.3g}]{unit}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse-fm probe", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--embeddings", required=True, help="segment-level Parquet from `pulse-fm embed --store`")
    p.add_argument("--out", required=True, help="folder for probes.json and predictions.parquet")
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS), help="probes to fit")
    p.add_argument("--test-fraction", type=float, default=0.3, help="participants held out for testing")
    p.add_argument("--seed", type=int, default=0, help="split and bootstrap seed")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    emb_path = Path(args.embeddings)
    table = pd.read_parquet(emb_path)
    meta_path = emb_path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta.get("aggregate", "segment") != "segment":
        print("error: probe needs segment-level embeddings (embed without --aggregate)", file=sys.stderr)
        return 2
    results = run_probes(
        table, embedding_matrix(table), args.targets, args.test_fraction, args.seed, args.bootstrap
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "encoder_version": meta.get("encoder_version"),
        "modality": meta.get("modality"),
        "preprocess_version": meta.get("preprocess_version"),
        "embeddings": str(emb_path),
        "split": {"test_fraction": args.test_fraction, "seed": args.seed, "unit": "participant"},
        "probes": [r.head() for r in results],
        "plausibility": fit_plausibility(
            table, embedding_matrix(table), args.targets, args.test_fraction, args.seed
        ).to_dict(),
    }
    (out / "probes.json").write_text(json.dumps(doc, indent=2))
    preds = pd.DataFrame(
        [
            {"target": r.target, "y": y, "pred": p}
            for r in results
            for y, p in zip(r.test_y, r.test_pred, strict=True)
        ]
    )
    preds.to_parquet(out / "predictions.parquet", index=False)
    print(f"{'target':<12}{'n train/test':>14}  test metric [95% CI]")
    for r in results:
        print(f"{r.target:<12}{f'{r.n_train}/{r.n_test}':>14}  {format_metric(r)}")
    print(f"wrote {out / 'probes.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
