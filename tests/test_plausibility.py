"""Plausibility: the OOD score's properties, its trip through export -> card -> registry (checked
against the card's sha256), and the shipped model's flags on real recordings unlike its SYNTHETIC
training data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from fastapi.testclient import TestClient

from pulsefm import contract as C
from pulsefm.plausibility import OodModel, Plausibility, fit_ood, label_range
from service.app import create_app
from service.registry import scan_all
from service.settings import Settings
from training.export import write_plausibility

ROOT = Path(__file__).resolve().parents[1]
REPO = ROOT / "model_repository"
EXAMPLES = ROOT / "pulsefm" / "examples"


def _cloud(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(16, 256))  # the same low-rank structure for every call
    return rng.normal(size=(n, 16)) @ basis + 0.1 * rng.normal(size=(n, 256)) + shift


def test_in_distribution_scores_near_one_and_far_points_flagged() -> None:
    model = fit_ood(_cloud(2000, 0), _cloud(500, 1))
    fresh = model.score(_cloud(2000, 2))
    assert 0.8 < np.median(fresh) < 1.2
    assert 0.003 < (fresh > model.threshold).mean() < 0.03  # ~1 %: the held-out 99th percentile
    assert (model.score(_cloud(200, 3, shift=2.0)) > model.threshold).all()
    assert (model.score(_cloud(200, 4) * 3) > model.threshold).all()  # right axes, wrong scale


@hypothesis.settings(max_examples=30, deadline=None, database=None)
@hypothesis.given(
    n=st.integers(3, 60),
    k=st.integers(1, 40),
    seed=st.integers(0, 1000),
    scale=st.sampled_from([1e-9, 1e-3, 1.0, 1e5]),
)
def test_fit_and_round_trip_for_any_small_sample(n: int, k: int, seed: int, scale: float) -> None:
    train = np.random.default_rng(seed).normal(size=(n, 256)) * scale
    model = fit_ood(train, train[:2], k=k)
    back = OodModel.from_dict(json.loads(json.dumps(model.to_dict())))
    x = np.random.default_rng(seed + 1).normal(size=(5, 256)) * scale
    np.testing.assert_allclose(back.score(x), model.score(x), rtol=1e-5)
    assert np.isfinite(model.score(x)).all() and model.threshold > 0


def test_label_range_ignores_missing() -> None:
    assert label_range(np.array([3.0, np.nan, -1.0])) == (-1.0, 3.0)
    assert label_range(np.array([np.nan])) is None


def test_plausibility_file_is_checked_against_the_card(tmp_path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo)
    pdir = repo / "ecg_probes" / "1"
    card = json.loads((pdir / C.CARD_FILE).read_text())
    plaus = Plausibility({"age": (18.0, 80.0)}, fit_ood(_cloud(100, 0), _cloud(20, 1)))
    card["plausibility"] = write_plausibility(pdir, plaus.to_dict())
    (pdir / C.CARD_FILE).write_text(json.dumps(card))
    models, failed = scan_all(repo)
    assert models["ecg"][1].plausibility is not None and not failed
    assert models["ecg"][1].plausibility.ranges == {"age": (18.0, 80.0)}
    (pdir / C.PLAUSIBILITY_FILE).write_text((pdir / C.PLAUSIBILITY_FILE).read_text().replace("1", "2", 5))
    models, failed = scan_all(repo)
    assert 1 not in models.get("ecg", {}) and [(f.version, f.reason) for f in failed] == [(1, "plausibility")]


@pytest.fixture(scope="module")
def shipped():
    with TestClient(create_app(Settings(repo=REPO))) as c:
        yield c


def _upload(client, folder: str, modality: str):
    f = next((EXAMPLES / folder).glob("*.csv"))
    fs = json.loads(f.with_name(f.name + ".json").read_text())["fs"]
    return client.post(
        "/v1/predict", files={"file": (f.name, f.read_bytes())}, data={"modality": modality, "fs": str(fs)}
    ).json()


def test_shipped_model_flags_a_real_wrist_ppg_unlike_its_synthetic_training_data(shipped) -> None:
    """The shipped PPG model was trained on SYNTHETIC PPG; a real free-living wrist PPG at 20 Hz is
    far from it (measured: OOD scores 9-15 against a threshold of 3.3) and its BMI output is
    outside the training labels' range: both are flagged, the numbers still returned."""
    body = _upload(shipped, "ppg", "ppg")
    assert all("out_of_distribution" in q["flags"] and q["ood_score"] > 3 for q in body["quality"])
    bmi = body["aggregate"]["bmi"]
    assert bmi["range"] == [16.0, 34.57]
    assert ("out_of_range" in bmi["flags"]) == (not 16.0 <= bmi["value"] <= 34.57)
    assert body["aggregate"]["sex"]["range"] is None  # a probability has no label range


def test_every_output_says_its_range_and_every_window_its_score(shipped) -> None:
    body = _upload(shipped, "ecg", "ecg")
    assert all(isinstance(q["ood_score"], float) for q in body["quality"])
    for pred in [*body["predictions"], body["aggregate"]]:
        for target, out in pred.items():
            assert "flags" in out and (out["range"] is not None) == (out["kind"] == "regression"), target
            if out["range"]:
                lo, hi = out["range"]
                assert ("out_of_range" in out["flags"]) == (not lo <= out["value"] <= hi)
