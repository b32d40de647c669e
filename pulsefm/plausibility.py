"""How far to trust a probe output: the range its training labels covered, and how far an
embedding lies from the embeddings the probes were trained on (an out-of-distribution score).

Fitted where the probes are fitted (`pulse-fm probe` / `evaluate`, on the probes' training
participants; threshold on their held-out participants), written beside the probe heads at export
(`plausibility.json`), read by the gateway:

    score(e) = sqrt( (sum_i z_i^2 + |r|^2 / v_r) / D )

z_i: the embedding's coordinates on the top K principal axes of the training embeddings, each
divided by its standard deviation; r: what is left outside those axes, v_r its mean variance per
dimension. A training-like embedding scores about 1. The flag threshold is the QUANTILE of the
held-out participants' scores: by construction about 1 % of in-distribution windows are flagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

COMPONENTS = 32
QUANTILE = 0.99
OUT_OF_RANGE = "out_of_range"
OUT_OF_DISTRIBUTION = "out_of_distribution"


@dataclass(frozen=True)
class OodModel:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D) orthonormal rows
    variances: np.ndarray  # (K,)
    residual_variance: float
    threshold: float = float("inf")
    quantile: float = QUANTILE
    n_train: int = 0
    n_heldout: int = 0

    def score(self, emb: np.ndarray) -> np.ndarray:
        """(n, D) -> (n,) scores; about 1 for embeddings like the training ones."""
        x = np.asarray(emb, dtype=np.float64) - self.mean
        z = x @ self.components.T
        resid = x - z @ self.components
        total = (z**2 / self.variances).sum(axis=1) + (resid**2).sum(axis=1) / self.residual_variance
        return np.asarray(np.sqrt(total / x.shape[1]))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("mean", "components", "variances"):  # 7 significant digits (float32's), any scale
            arr = np.asarray(d[key], dtype=np.float64)
            d[key] = np.array([float(f"{v:.7g}") for v in arr.ravel()]).reshape(arr.shape).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OodModel:
        model = cls(
            mean=np.asarray(d["mean"], dtype=np.float64),
            components=np.asarray(d["components"], dtype=np.float64),
            variances=np.asarray(d["variances"], dtype=np.float64),
            residual_variance=float(d["residual_variance"]),
            threshold=float(d["threshold"]),
            quantile=float(d.get("quantile", QUANTILE)),
            n_train=int(d.get("n_train", 0)),
            n_heldout=int(d.get("n_heldout", 0)),
        )
        dim = model.mean.size
        k = model.variances.size
        if (
            model.components.shape != (k, dim)
            or not (model.variances > 0).all()
            or model.residual_variance <= 0
        ):
            raise ValueError("plausibility: inconsistent OOD model (shapes or variances)")
        return model


def fit_ood(
    train: np.ndarray, heldout: np.ndarray, k: int = COMPONENTS, quantile: float = QUANTILE
) -> OodModel:
    """Principal axes of `train`; the flag threshold from the `heldout` embeddings' scores."""
    train = np.asarray(train, dtype=np.float64)
    if len(train) < 3 or len(heldout) < 1:
        raise ValueError("plausibility: need >= 3 training and >= 1 held-out embeddings")
    mean = train.mean(axis=0)
    _, s, vt = np.linalg.svd(train - mean, full_matrices=False)
    k = int(min(k, len(train) - 1, train.shape[1] - 1))
    var = s**2 / (len(train) - 1)
    floor = max(float(var[0]) * 1e-9, 1e-12)
    resid_var = max(float(var[k:].sum()) / (train.shape[1] - k), floor)
    model = OodModel(mean, vt[:k], np.maximum(var[:k], floor), resid_var, n_train=len(train))
    threshold = float(np.quantile(model.score(heldout), quantile))
    return OodModel(mean, vt[:k], model.variances, resid_var, threshold, quantile, len(train), len(heldout))


def label_range(values: np.ndarray) -> tuple[float, float] | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return (float(v.min()), float(v.max())) if v.size else None


@dataclass(frozen=True)
class Plausibility:
    """What the gateway checks: per regression target its training range; the OOD model."""

    ranges: dict[str, tuple[float, float]]
    ood: OodModel

    def to_dict(self) -> dict[str, Any]:
        return {"ranges": {k: list(v) for k, v in self.ranges.items()}, "ood": self.ood.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plausibility:
        ranges = {str(k): (float(v[0]), float(v[1])) for k, v in d.get("ranges", {}).items()}
        return cls(ranges, OodModel.from_dict(d["ood"]))

    def summary(self) -> dict[str, Any]:
        """For model cards and /v1/models (no arrays)."""
        return {
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "ood_threshold": self.ood.threshold,
            "ood_quantile": self.ood.quantile,
            "ood_components": int(self.ood.variances.size),
            "n_train": self.ood.n_train,
            "n_heldout": self.ood.n_heldout,
        }
