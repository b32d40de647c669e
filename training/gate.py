"""The promotion gate of `pulse-fm publish --gate STORE_OR_RECORDINGS`: the candidate against the
version that unpinned traffic gets now, on the same held-out data, before it is published. A
segment store (participants with labels) gets the probe comparison (and the real-recording
benchmark); a folder of recordings gets the real-recording benchmark on those recordings.

    probes     every target of training.probe.TARGETS on STORE, both encoders' embeddings, the
               SAME participant split; per target the paired bootstrap improvement (candidate -
               current, sign so that > 0 is better) with its 95 % CI
    real       the real-recording benchmark (training/realbench.py) for both, where its files can
               be fetched: heart-rate MAE and same-recording top-1

A regression, per target: the candidate is worse by more than `tolerance` (relative to the
current metric) AND the paired CI lies below zero (clearly worse, not noise). Real benchmark: HR
MAE worse by more than `tolerance` relative, or top-1 lower by more than `tolerance`. Any
regression refuses the candidate unless --force. The decision, every number and the store's
digest go into the new version's encoder card (`promotion_gate`), shown by /v1/models.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pulsefm import contract as C
from training.embed import Encoder, embed_store, embedding_matrix, load_encoder
from training.probe import TARGETS, headline_metric, paired_improvement, run_probes

TOLERANCE = 0.05


def current_version(repo: Path, modality: str) -> int | None:
    """What unpinned traffic gets: the promoted version in rollout.json, else the newest served."""
    from service import rollout
    from service.registry import served_versions

    enc_dir = repo / C.model_name(modality, "encoder")
    served = served_versions(enc_dir) if enc_dir.is_dir() else []
    if not served:
        return None
    try:
        rollouts = rollout.load(repo)
    except ValueError:
        rollouts = {}
    return rollout.current_version(rollouts, modality, served)


def store_digest(store: Path) -> str:
    """sha256 (16 hex) of the store's manifest rows, participants' labels and settings (or of the
    recording files' bytes): which data the gate saw, cheap to recompute."""
    from training.store import SegmentStore

    if not (store / "store.json").is_file():
        from pulsefm.io import find_recordings

        h = hashlib.sha256()
        for f in [store] if store.is_file() else find_recordings(store):
            h.update(f.name.encode() + f.read_bytes())
        return h.hexdigest()[:16]

    s = SegmentStore(store)
    h = hashlib.sha256(s.manifest.to_csv(index=False).encode())
    h.update(s.participants.round(6).to_csv(index=False).encode())
    h.update(json.dumps(s.info.get("settings", {}), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _probe_comparison(
    candidate: Encoder,
    current: Encoder,
    store: Path,
    tolerance: float,
    test_fraction: float,
    seed: int,
    n_boot: int,
) -> list[dict[str, Any]]:
    table_a, table_b = embed_store(store, candidate), embed_store(store, current)
    targets = [t for t in TARGETS if TARGETS[t].column in table_a.columns]
    res_a = run_probes(table_a, embedding_matrix(table_a), targets, test_fraction, seed, n_boot)
    res_b = run_probes(table_b, embedding_matrix(table_b), targets, test_fraction, seed, n_boot)
    rows = []
    for a, b in zip(res_a, res_b, strict=True):
        metric = headline_metric(a.kind)
        cmp = paired_improvement(a, b, n_boot, seed)
        lo, hi = cmp["ci95"]
        allowed = tolerance * abs(b.metrics[metric])
        rows.append(
            {
                "target": a.target,
                "metric": metric,
                "candidate": a.metrics[metric],
                "current": b.metrics[metric],
                "improvement": cmp["improvement"],
                "ci95": [lo, hi],
                "regression": bool(cmp["improvement"] < -allowed and hi < 0),
            }
        )
    return rows


def _real_comparison(
    candidate: Encoder,
    current: Encoder,
    tolerance: float,
    n_boot: int,
    seed: int,
    files: list[Path] | None = None,
) -> dict[str, Any]:
    from training.evaluate import load_random_init_like
    from training.realbench import benchmark

    try:
        a = benchmark(candidate, load_random_init_like(candidate), n_boot, seed, files)["features"]["ssl"]
        b = benchmark(current, load_random_init_like(current), n_boot, seed, files)["features"]["ssl"]
    except (RuntimeError, OSError, KeyError, ValueError) as exc:  # files not fetchable here
        return {"available": False, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return {
        "available": True,
        "hr_mae": {"candidate": a["hr_mae"], "current": b["hr_mae"]},
        "top1": {"candidate": a["top1"], "current": b["top1"]},
        "regression": bool(a["hr_mae"] > b["hr_mae"] * (1 + tolerance) or a["top1"] < b["top1"] - tolerance),
    }


def evaluate_gate(
    repo: Path,
    encoder: Path,
    store: Path,
    tolerance: float = TOLERANCE,
    real: bool = True,
    test_fraction: float = 0.3,
    seed: int = 0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    candidate = load_encoder(encoder)
    version = current_version(repo, candidate.modality)
    gate: dict[str, Any] = {
        "store": str(store),
        "store_digest": store_digest(store),
        "tolerance": tolerance,
        "rule": "refused if any target is worse by > tolerance (relative) with its paired 95% CI below 0, "
        "or the real benchmark's HR MAE / top-1 is worse by > tolerance",
        "against_version": version,
    }
    if version is None:
        return gate | {"decision": "accepted", "reason": "nothing served yet to compare with"}
    current = load_encoder(repo / C.model_name(candidate.modality, "encoder") / str(version) / C.MODEL_FILE)
    if (store / "store.json").is_file():
        gate["probes"] = _probe_comparison(candidate, current, store, tolerance, test_fraction, seed, n_boot)
        gate["real"] = (
            _real_comparison(candidate, current, tolerance, n_boot, seed)
            if real
            else {"available": False, "reason": "not asked"}
        )
    else:  # a folder (or file) of held-out recordings: the real-recording benchmark on them
        from pulsefm.io import find_recordings

        files = [store] if store.is_file() else list(find_recordings(store))
        gate["probes"] = []
        gate["real"] = _real_comparison(candidate, current, tolerance, n_boot, seed, files) | {
            "recordings": [str(f) for f in files]
        }
    regressions = [p["target"] for p in gate["probes"] if p["regression"]]
    if gate["real"].get("regression"):
        regressions.append("real-recording benchmark")
    gate["regressions"] = regressions
    gate["decision"] = "refused" if regressions else "accepted"
    return gate


def format_gate(gate: dict[str, Any]) -> str:
    lines = [
        f"promotion gate vs version {gate['against_version']} on {gate['store']}: {gate['decision'].upper()}"
    ]
    for p in gate.get("probes", []):
        lo, hi = p["ci95"]
        mark = "  REGRESSION" if p["regression"] else ""
        lines.append(
            f"  {p['target']:<11} {p['metric'].upper()} candidate {p['candidate']:.4g} "
            f"current {p['current']:.4g}"
            f"  improvement {p['improvement']:+.3g} [{lo:+.3g}, {hi:+.3g}]{mark}"
        )
    real = gate.get("real", {})
    if real.get("available"):
        lines.append(
            f"  real: HR MAE {real['hr_mae']['candidate']:.2f} vs {real['hr_mae']['current']:.2f}; "
            f"top-1 {real['top1']['candidate']:.2f} vs {real['top1']['current']:.2f}"
            + ("  REGRESSION" if real["regression"] else "")
        )
    elif real:
        lines.append(f"  real: not run ({real.get('reason')})")
    return "\n".join(lines)


def dumps(gate: dict[str, Any]) -> str:
    return json.dumps(gate, indent=2, default=float)
