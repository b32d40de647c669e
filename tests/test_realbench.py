"""The real-recording benchmark (training/realbench.py): band power sees a rhythm's frequency,
the recording bootstrap brackets its estimate, and `pulse-fm evaluate --real-only` on the shipped
models writes every feature set with CIs, the paired differences and the rule's verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.baselines import band_edges, band_power
from training.realbench import FEATURES, recording_bootstrap

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("freq", [0.8, 1.3, 2.5, 7.0, 30.0])
def test_band_power_peaks_in_the_band_holding_the_rhythm(freq: float) -> None:
    fs = 64.0
    t = np.arange(3840) / fs
    x = np.sin(2 * np.pi * freq * t)[None, None, :] + 0.01 * np.random.default_rng(0).normal(
        size=(1, 1, 3840)
    )
    feats = band_power(x, fs)
    edges = band_edges(fs)
    assert feats.shape == (1, edges.size - 1)
    band = int(np.searchsorted(edges, freq, side="right")) - 1
    assert int(feats[0].argmax()) == band


def test_recording_bootstrap_brackets_the_mean() -> None:
    rec = np.repeat(["a", "b", "c", "d"], 10)
    values = np.repeat([1.0, 2.0, 3.0, 4.0], 10)
    lo, hi = recording_bootstrap(rec, lambda w: float((values * w).sum() / w.sum()), 500)
    assert 1.0 <= lo < values.mean() < hi <= 4.0
    same = recording_bootstrap(rec, lambda w: 2.0, 50)
    assert same == (2.0, 2.0)


@pytest.mark.real_data
def test_real_only_benchmark_on_the_shipped_models(tmp_path) -> None:
    from training.evaluate import main

    repo = ROOT / "model_repository"
    argv = ["--real-only", "--bootstrap", "200", "--out", str(tmp_path)]
    argv += ["--encoder", str(repo / "ppg_encoder" / "2" / "model.onnx")]
    argv += ["--encoder", str(repo / "ecg_encoder" / "1" / "model.onnx")]
    assert main(argv) == 0
    results = json.loads((tmp_path / "real_benchmark.json").read_text())["results"]
    assert [r["modality"] for r in results] == ["ppg", "ecg"]
    for res in results:
        assert len(res["recordings"]) >= 3 and res["bootstrap"]["unit"] == "recording"
        for name in (*FEATURES, "predict_mean"):
            f = res["features"][name]
            lo, hi = f["hr_mae_ci95"]
            assert lo <= f["hr_mae"] <= hi, (res["modality"], name)
            by_rec = f["hr_mae_by_recording"]
            assert set(by_rec) == set(res["recordings"])
            weights = np.array([res["recordings"][r] for r in by_rec])
            assert np.average(list(by_rec.values()), weights=weights) == pytest.approx(f["hr_mae"])
            if name != "predict_mean":
                assert 0 <= f["chance"] <= f["top1_ci95"][1] <= 1 and f["queries"] > 0
        v = res["verdict"]
        assert v["passes"] == (
            v["retrieval_at_least_band_power"]
            and v["hr_below_band_power"]
            and v["hr_clearly_below_predict_mean"]
        )
        assert v["hr_clearly_below_predict_mean"] == (
            res["paired"]["hr_mae_predict_mean_minus_ssl"]["ci95"][0] > 0
        )
    table = (tmp_path / "real_benchmark.md").read_text()
    assert "band_power" in table and "predict_mean" in table and "the rule" in table
