"""Embedding, probes, baselines and the report (issue 4). Data here is SYNTHETIC."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch

from pulsefm.plausibility import Plausibility
from training.config import PRESETS
from training.embed import aggregate, embed_store, embedding_matrix, load_encoder, with_embeddings
from training.evaluate import effective_rank
from training.probe import (
    TARGETS,
    above_zero,
    bootstrap,
    design,
    fit,
    fold_linear,
    held_out_participants,
    paired_improvement,
    predict,
    run_probes,
)
from training.realbench import retrieval_top1
from training.train import build_model, encoder_artifact

REPO_ROOT = Path(__file__).resolve().parents[1]


def _table(n_participants: int = 60, per: int = 4, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Segments whose features carry age/sex linearly plus noise; heart rate per segment."""
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for p in range(n_participants):
        age, sex = rng.uniform(20, 80), int(rng.random() < 0.5)
        for s in range(per):
            hr = rng.uniform(50, 100)
            x = rng.normal(size=16)
            x[0] += (age - 50) / 10
            x[1] += 2.0 * sex
            x[2] += (hr - 75) / 10
            rows.append(
                {"participant_id": f"p{p:03d}", "segment": s, "age": age, "sex": sex, "heart_rate_bpm": hr}
            )
            feats.append(x)
    return pd.DataFrame(rows), np.asarray(feats, dtype=np.float32)


def test_probes_learn_linear_signal_on_disjoint_participants() -> None:
    table, x = _table()
    results = {
        r.target: r for r in run_probes(table, x, ["age", "sex", "heart_rate"], 0.3, seed=1, n_boot=200)
    }
    assert results["age"].metrics["r2"] > 0.7
    assert results["sex"].metrics["auc"] > 0.9
    assert results["heart_rate"].metrics["r2"] > 0.5
    for r in results.values():
        name = "mae" if r.kind == "regression" else "auc"
        lo, hi = r.ci95[name]
        assert lo <= r.metrics[name] <= hi
    # participant-level: one row per participant; segment-level: one per segment
    assert results["age"].n_train + results["age"].n_test == 60
    assert results["heart_rate"].n_train + results["heart_rate"].n_test == 240


def test_split_never_shares_a_participant_and_cv_groups_hold() -> None:
    table, x = _table()
    test_ids = held_out_participants(table["participant_id"].to_numpy(), 0.3, seed=0)
    data = design(table, x, TARGETS["heart_rate"])
    is_test = np.isin(data.groups, list(test_ids))
    assert not set(data.groups[is_test]) & set(data.groups[~is_test])
    assert 0.25 < len(test_ids) / 60 < 0.35
    # same seed, same split: baselines are compared on identical participants
    assert test_ids == held_out_participants(table["participant_id"].to_numpy(), 0.3, seed=0)


def test_folded_head_reproduces_the_pipeline() -> None:
    table, x = _table()
    for name in ("age", "sex"):
        t = TARGETS[name]
        data = design(table, x, t)
        pipe, strength = fit(data, t.kind)
        assert strength > 0
        w, b = fold_linear(pipe, t.kind)
        z = data.x.astype(np.float64) @ w + b
        if t.kind == "classification":
            z = 1 / (1 + np.exp(-z))
        np.testing.assert_allclose(z, predict(pipe, data.x, t.kind), rtol=1e-5, atol=1e-6)


def test_saved_heads_reproduce_predictions_through_the_export_reference() -> None:
    from training.export import probes_reference

    table, x = _table()
    results = run_probes(table, x, ["age", "sex"], 0.3, seed=0, n_boot=10)
    heads = [r.head() for r in results]
    for r, k in zip(results, range(len(heads)), strict=True):
        data = design(table, x, TARGETS[r.target])
        test = np.isin(data.groups, list(held_out_participants(table["participant_id"].to_numpy(), 0.3, 0)))
        ref = probes_reference(heads, data.x[test])[:, k]
        np.testing.assert_allclose(ref, r.test_pred, rtol=1e-5, atol=1e-6)


def test_bootstrap_resamples_whole_participants() -> None:
    y = np.array([0.0, 0.0, 10.0, 10.0])
    pred = np.array([0.0, 0.0, 0.0, 0.0])
    groups = np.array(["a", "a", "b", "b"])
    ci = bootstrap(y, pred, groups, "regression", n=300, seed=0)
    lo, hi = ci["mae"]
    assert lo == 0.0 and hi == 10.0  # only 0, 5 or 10 are possible when participants move as units


def test_paired_improvement_separates_a_better_encoder_from_an_equal_one() -> None:
    """The evaluation's done-criterion: SSL 'clearly' beats random-init only when the paired CI > 0."""
    table, x = _table(n_participants=80)
    rng = np.random.default_rng(1)
    noisy = x + rng.normal(0, 3.0, x.shape).astype(np.float32)  # same signal, buried in noise
    targets = ["age", "sex", "heart_rate"]
    good, bad, same = (run_probes(table, f, targets, 0.3, 0, 200) for f in (x, noisy, x))
    for g, b, s in zip(good, bad, same, strict=True):
        win = paired_improvement(g, b, 300, 0)
        assert win["clearly_better"] and win["ci95"][0] > 0 and win["improvement"] > 0, win
        tie = paired_improvement(g, s, 300, 0)
        assert tie["improvement"] == 0.0 and not tie["clearly_better"]
        assert not paired_improvement(b, g, 300, 0)["clearly_better"]  # direction matters
    with pytest.raises(ValueError, match="same test rows"):
        paired_improvement(good[0], run_probes(table, x, ["age"], 0.3, 1, 50)[0])


def test_a_float_rounding_bound_is_a_tie_not_a_win() -> None:
    assert not above_zero(1.1e-16) and not above_zero(0.0) and not above_zero(-0.01)
    assert above_zero(1e-4)


def test_aggregate_is_the_participant_mean() -> None:
    table, x = _table(n_participants=3, per=2)
    agg = aggregate(with_embeddings(table, x))
    assert list(agg["n_segments"]) == [2, 2, 2]
    np.testing.assert_allclose(embedding_matrix(agg)[1], x[2:4].mean(0), rtol=1e-6)


def test_retrieval_ignores_overlapping_neighbours() -> None:
    rec = np.array(["a", "a", "a", "b", "b", "b"])
    start = np.array([0.0, 30.0, 60.0, 0.0, 30.0, 60.0])  # 60 s segments at 50% overlap
    emb = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1], [0.01, 1], [0.02, 1]], dtype=np.float32)
    r = retrieval_top1(emb, rec, start, duration_s=60.0)
    # only 0 <-> 60 s are admissible same-recording pairs; both still find them
    assert r["queries"] == 4 and r["top1"] == 1.0
    assert 0 < r["chance"] < 1
    shuffled = retrieval_top1(emb[[0, 3, 1, 4, 2, 5]], rec, start, 60.0)
    assert shuffled["top1"] < 1.0


def test_effective_rank_counts_dimensions() -> None:
    rng = np.random.default_rng(0)
    assert effective_rank(rng.normal(size=(500, 8))) > 7.5
    assert effective_rank(np.outer(rng.normal(size=500), np.ones(8))) < 1.1


@pytest.fixture(scope="module")
def tiny_encoder_pt(tmp_path_factory) -> str:
    cfg = PRESETS["tiny"]
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    torch.save(encoder_artifact(cfg, model, 0, {"settings": {"source": "synthetic"}}), path)
    return str(path)


def test_random_init_baseline_is_calibrated(small_store, tiny_encoder_pt) -> None:
    from training.embed import embed_store

    raw = embed_store(small_store, load_encoder(tiny_encoder_pt), 16)
    base = embed_store(small_store, load_encoder(tiny_encoder_pt, random_init_seed=0), 16)
    assert len(raw) == len(base) and embedding_matrix(raw).shape[1] == 256
    # without BatchNorm calibration a random network's embedding vanishes; with it, it does not
    assert float(np.abs(embedding_matrix(base)).mean()) > 1e-3
    assert set(["participant_id", "age", "sex", "heart_rate_bpm"]) <= set(base.columns)


def test_embed_and_probe_cli(small_store, tiny_encoder_pt, tmp_path) -> None:
    from training.embed import main as embed_main
    from training.probe import main as probe_main

    out = tmp_path / "emb.parquet"
    assert embed_main(["--model", tiny_encoder_pt, "--store", str(small_store), "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["modality"] == "ppg" and len(df) > 0
    assert probe_main(["--embeddings", str(out), "--out", str(tmp_path / "p"), "--bootstrap", "50"]) == 0
    doc = json.loads((tmp_path / "p" / "probes.json").read_text())
    assert doc["encoder_version"] == meta["encoder_version"]
    for head in doc["probes"]:
        assert len(head["weights"]) == 256 and head["units"]
    plaus = Plausibility.from_dict(doc["plausibility"])  # training ranges + OOD model, fitted beside them
    assert set(plaus.ranges) == {h["target"] for h in doc["probes"] if h["kind"] == "regression"}
    assert plaus.ood.threshold > 0 and plaus.ood.n_heldout > 0
    agg = tmp_path / "agg.parquet"
    argv = [
        "--model",
        tiny_encoder_pt,
        "--store",
        str(small_store),
        "--out",
        str(agg),
        "--aggregate",
        "participant",
    ]
    assert embed_main(argv) == 0
    assert pd.read_parquet(agg)["participant_id"].is_unique


def test_embed_recordings_folder_lists_rejects(tmp_path, tiny_encoder_pt) -> None:
    from training.embed import main as embed_main
    from training.synthetic import CohortConfig, simulate_participant

    folder = tmp_path / "recs"
    folder.mkdir()
    _, recs = simulate_participant(CohortConfig(recordings=1, modalities=("ppg",), ppg_duration_s=130), 0)
    np.save(folder / "good.npy", recs[0].signal)
    flat = np.zeros_like(recs[0].signal)
    np.save(folder / "flat.npy", flat)
    out = tmp_path / "e.parquet"
    assert (
        embed_main(["--model", tiny_encoder_pt, "--recordings", str(folder), "--fs", "64", "--out", str(out)])
        == 0
    )
    assert len(pd.read_parquet(out)) == 2
    rejects = pd.read_csv(out.with_suffix(".rejects.csv"))
    assert (rejects["recording_id"].str.endswith("flat.npy")).all() and "flat_line" in rejects[
        "reasons"
    ].iloc[0]


def test_evaluate_cli_reports_the_paired_verdict(small_store, tiny_encoder_pt, tmp_path) -> None:
    from training.evaluate import main as evaluate_main

    out = tmp_path / "report"
    argv = ["--encoder", str(tiny_encoder_pt), "--store", str(small_store), "--out", str(out)]
    assert evaluate_main([*argv, "--bootstrap", "50", "--no-real"]) == 0
    res = json.loads((out / "results.json").read_text())["results"][0]
    assert res["synthetic"] and set(res["probes"]) == {
        "ssl",
        "random_init",
        "band_power",
        "hr_hrv",
        "true_params",
    }
    verdicts = res["ssl_vs_random_init"]
    assert [v["target"] for v in verdicts] == [r["target"] for r in res["probes"]["ssl"]]
    for v in verdicts:
        assert v["clearly_better"] == (v["ci95"][0] > 0)
    wins = sum(v["clearly_better"] for v in verdicts)
    page = (out / "report.html").read_text()
    assert "SYNTHETIC" in page and f"on <b>{wins} of {len(verdicts)}</b> targets" in page
    assert f"on {wins} of {len(verdicts)} targets" in (out / "results.md").read_text()
    heads = json.loads((out / "probes_ppg.json").read_text())
    assert heads["probes"] and Plausibility.from_dict(heads["plausibility"]).ood.n_train > 0


def test_random_init_baseline_of_a_published_onnx_comes_from_its_card(small_store, tiny_encoder_pt) -> None:
    """`pulse-fm evaluate --encoder model_repository/ppg_encoder/1/model.onnx` gets the same
    random-init baseline as the encoder.pt it was exported from (architecture from card.json)."""
    from training.embed import embed_store
    from training.evaluate import load_random_init_like

    onnx = REPO_ROOT / "model_repository" / "ppg_encoder" / "1" / "model.onnx"
    from_onnx = load_random_init_like(load_encoder(onnx))
    from_pt = load_random_init_like(load_encoder(tiny_encoder_pt))  # the shipped model is preset tiny
    a = embedding_matrix(embed_store(small_store, from_onnx, 16))
    b = embedding_matrix(embed_store(small_store, from_pt, 16))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert from_onnx.version.startswith("random-init")


def test_evaluate_refuses_an_onnx_without_its_card(tmp_path, capsys) -> None:
    import shutil

    from training.evaluate import main as evaluate_main

    shutil.copy(REPO_ROOT / "model_repository" / "ppg_encoder" / "1" / "model.onnx", tmp_path / "model.onnx")
    argv = ["--encoder", str(tmp_path / "model.onnx"), "--store", "nowhere", "--out", str(tmp_path / "r")]
    assert evaluate_main(argv) == 2
    assert "no card.json" in capsys.readouterr().err


def _script(name: str) -> ModuleType:
    """scripts/<name>.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_init_spread_probes_each_seed_on_the_same_split(
    small_store, tiny_encoder_pt, tmp_path
) -> None:
    """scripts/random_init_spread.py: one row per target, one entry per seed, seeds really differ."""
    spread = _script("random_init_spread")

    out = tmp_path / "spread.json"
    argv = ["--encoder", str(tiny_encoder_pt), "--store", str(small_store), "--seeds", "0", "1"]
    assert spread.main([*argv, "--bootstrap", "50", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["synthetic"] and result["seeds"] == [0, 1]
    rows = result["targets"]
    assert set(rows) >= {"age", "sex", "heart_rate"}
    assert all(set(r["random_init"]) == {"0", "1"} for r in rows.values())
    # seed 0 is the report's baseline; seed 1 is other weights, so its probes score differently
    assert any(r["random_init"]["0"]["value"] != r["random_init"]["1"]["value"] for r in rows.values())
    table = spread.markdown(result)
    assert all(f"| {t} |" in table for t in rows)
    # a SYNTHETIC PPG store: the simulator's parameters are the one upper bound, compared with each seed
    for r in rows.values():
        assert set(r["upper_bounds"]) == {"true_params"}
        assert set(r["upper_bounds"]["true_params"]["vs_random_init"]) == {"0", "1"}
    assert "| sex | true_params |" in table


def test_random_init_spread_bounds_ecg_by_its_recording_inputs(small_store, tmp_path) -> None:
    """On ECG the recordings' own simulator inputs are a second bound; it reads heart rate per
    recording, which the participant-level simulator parameters cannot."""
    cfg = PRESETS["tiny"].replace(modality="ecg", augment="ecg", **{"encoder.in_channels": 1})
    torch.manual_seed(0)
    enc = tmp_path / "ecg.pt"
    torch.save(encoder_artifact(cfg, build_model(cfg), 0, {"settings": {"source": "synthetic"}}), enc)
    spread = _script("random_init_spread")

    out = tmp_path / "spread.json"
    argv = ["--encoder", str(enc), "--store", str(small_store), "--seeds", "0", "--bootstrap", "50"]
    assert spread.main([*argv, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["targets"]
    assert all(set(r["upper_bounds"]) == {"true_params", "recording_inputs"} for r in rows.values())
    hr = rows["heart_rate"]["upper_bounds"]
    assert hr["recording_inputs"]["value"] < hr["true_params"]["value"]  # MAE, bpm
    assert hr["recording_inputs"]["vs_random_init"]["0"]["improvement"] > 0


def test_bound_cues_finds_the_per_recording_heart_rate(small_store, tmp_path) -> None:
    """scripts/bound_cues.py: without the recording's own heart rate the ECG bound loses heart
    rate; on that input alone it keeps it."""
    from training.synthetic import ECG_RECORDING_INPUTS

    cues = _script("bound_cues")
    out = tmp_path / "cues.json"
    argv = ["--store", str(small_store), "--modality", "ecg", "--targets", "heart_rate", "sex"]
    assert cues.main([*argv, "--bootstrap", "20", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["bound"] == "recording_inputs" and list(result["without"]) == list(ECG_RECORDING_INPUTS)
    assert result["metric"] == {"heart_rate": "mae", "sex": "auc"}
    hr_mae = result["all"]["heart_rate"]
    assert result["without"]["hr"]["heart_rate"] > 2 * hr_mae
    assert result["alone"]["hr"]["heart_rate"] < 2 * hr_mae


def test_param_decodability_reads_every_simulator_parameter(small_store, tiny_encoder_pt, tmp_path) -> None:
    """scripts/param_decodability.py: a test R2 per simulator parameter, SSL and random-init, same split."""
    from training.baselines import TRUE_PARAMS

    decode = _script("param_decodability")

    out = tmp_path / "decode.json"
    argv = ["--encoder", tiny_encoder_pt, "--store", str(small_store), "--bootstrap", "50", "--out", str(out)]
    assert decode.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["synthetic"] and list(result["params"]) == list(TRUE_PARAMS["ppg"])
    for row in result["params"].values():
        assert set(row) == {"ssl", "random_init"}
        assert all(r["r2"] <= 1.0 and r["ci95"][0] <= r["ci95"][1] and r["n_test"] > 0 for r in row.values())
    # the random-init encoder draws other weights than the (untrained) "SSL" one, so it reads differently
    assert any(row["ssl"]["r2"] != row["random_init"]["r2"] for row in result["params"].values())
    assert all(f"| {p} |" in decode.markdown(result) for p in result["params"])
    # classification targets read three ways; "direct" is the evaluation's own probe on that split
    through = result["through_parameters"]
    assert "sex" in through and set(through["sex"]) == {"ssl", "random_init"}
    ways = {"direct", "decoded_params", "true_param_probe_on_decoded"}
    assert all(
        set(v) == ways and all(0 <= a <= 1 for a in v.values()) for t in through.values() for v in t.values()
    )
    table = embed_store(str(small_store), load_encoder(tiny_encoder_pt))
    (sex,) = run_probes(table, embedding_matrix(table), ["sex"])
    assert through["sex"]["ssl"]["direct"] == pytest.approx(sex.metrics["auc"])
