"""Drift metrics: what the gateway exports per modality and version after real answers, and the
effective rank against training's definition."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.drift import DriftMonitor, effective_rank
from service.settings import Settings
from tests.gateway_helpers import build_repo, raw_segments


def test_effective_rank_matches_training() -> None:
    torch = pytest.importorskip("torch")
    from training.train import effective_rank as torch_rank

    x = np.random.default_rng(0).normal(size=(300, 256)) @ np.diag(np.linspace(0.01, 1, 256))
    assert effective_rank(x) == pytest.approx(torch_rank(torch.from_numpy(x.astype(np.float32))), rel=1e-4)
    assert effective_rank(np.outer(np.arange(50.0), np.ones(256))) == pytest.approx(1.0, abs=1e-3)


def test_rank_is_recomputed_on_the_recent_window() -> None:
    mon = DriftMonitor(window=64, every=16)
    rng = np.random.default_rng(0)
    mon.observe("ecg", 99, rng.normal(size=(64, 256)), [[]] * 64, [None] * 64)
    full = mon.recent[("ecg", 99)]
    assert len(full) == 64
    mon.observe("ecg", 99, np.outer(rng.normal(size=64), np.ones(256)), [[]] * 64, [None] * 64)  # collapse
    assert effective_rank(np.stack(mon.recent[("ecg", 99)])) == pytest.approx(1.0, abs=1e-3)


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    ]


def test_gateway_exports_drift_metrics_per_version(tmp_path) -> None:
    repo = build_repo(tmp_path)
    x = raw_segments("ppg", 3, 64.0)
    with TestClient(create_app(Settings(repo=repo))) as c:
        assert (
            c.post(
                "/v1/predict", json={"modality": "ppg", "fs": 64, "segments": x.tolist(), "quality": "full"}
            ).status_code
            == 200
        )
        text = c.get("/metrics").text
    served = _samples(text, "pulsefm_windows_served_total")
    assert any(lab == {"modality": "ppg", "version": "1"} and v >= 3 for lab, v in served)
    norms = _samples(text, "pulsefm_embedding_norm_count")
    assert any(lab["modality"] == "ppg" and v >= 3 for lab, v in norms)
    outputs = {
        lab["target"]
        for lab, v in _samples(text, "pulsefm_probe_output_count")
        if lab["modality"] == "ppg" and v >= 3
    }
    assert outputs == {"age", "sex"}
