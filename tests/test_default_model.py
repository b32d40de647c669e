"""The shipped model_repository: complete, honest about its data, and served out of the box."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pulsefm import contract as C
from service.app import create_app
from service.registry import scan
from service.settings import Settings
from tests.gateway_helpers import raw_segments

REPO = Path(__file__).resolve().parent.parent / "model_repository"


def test_repository_holds_both_modalities_with_cards() -> None:
    models = scan(REPO)
    assert set(models) == {"ppg", "ecg"}
    size = sum(p.stat().st_size for p in REPO.rglob("*") if p.is_file())
    assert size < 10 * 2**20  # small enough for git
    for modality, versions in models.items():
        mv = versions[max(versions)]
        card = mv.encoder_card
        assert "SYNTHETIC" in card["training_data"]
        # the gateway's preprocessing is the one trained on
        assert card["preprocess_version"] == mv.spec.version
        assert card["sha256"] == hashlib.sha256((mv.encoder_dir / C.MODEL_FILE).read_bytes()).hexdigest()
        assert mv.probes_card is not None and mv.probes_card["training_data"] == "synthetic"
        targets = [o["target"] for o in mv.outputs]
        assert {"age", "bmi", "sex", "condition", "heart_rate"} <= set(targets), (modality, targets)
        for o in mv.outputs:
            assert o["test_ci95"]  # every shipped head carries its test metric with a CI


@pytest.mark.parametrize(("modality", "fs"), [("ppg", 64.0), ("ecg", 500.0)])
def test_serve_answers_on_the_default_settings(modality: str, fs: float) -> None:
    """`pulse-fm serve` with no settings: onnxruntime in-process on ./model_repository, no Redis/Triton."""
    with TestClient(create_app(Settings())) as c:
        assert c.get("/readyz").status_code == 200
        x = raw_segments(modality, 2, fs)
        body = {"modality": modality, "fs": fs, "segments": x.tolist()}
        emb = c.post("/v1/embed", json=body)
        assert emb.status_code == 200 and np.asarray(emb.json()["embeddings"]).shape == (2, 256)
        pred = c.post("/v1/predict", json=body).json()
        age = pred["aggregate"]["age"]
        assert age["units"] == "years" and 0 < age["value"] < 120
        assert 0 <= pred["aggregate"]["sex"]["value"] <= 1
        assert "SYNTHETIC" in pred["model"]["training_data"]


def test_cards_are_valid_json_beside_every_version() -> None:
    for model_dir in REPO.iterdir():
        if not model_dir.is_dir():
            continue
        assert (model_dir / "config.pbtxt").is_file()
        for v in (p for p in model_dir.iterdir() if p.name.isdigit()):
            card = json.loads((v / C.CARD_FILE).read_text())
            assert card["version"] == int(v.name) and card["name"] == model_dir.name
