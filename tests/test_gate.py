"""The promotion gate (`pulse-fm publish --gate`): a candidate no worse than the current version is
published with the gate's decision, numbers and data digest in its card (shown by /v1/models); a
candidate that has lost the signal is refused, and published anyway only with --force, recorded."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient

from pulsefm import contract as C
from service.app import create_app
from service.settings import Settings
from tests.test_export import make_artifact
from training.publish import main as publish_main
from training.publish import publish


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    repo = root / "repo"
    art = make_artifact("ppg", 0)
    torch.save(art, root / "v1.pt")
    publish(repo, root / "v1.pt")
    torch.save(art, root / "same.pt")  # the same weights: no regression possible
    broken = make_artifact("ppg", 0)
    for key in ("head.1.weight", "head.1.bias"):  # the last BatchNorm's affine: every embedding constant
        broken["state_dict"][key] = torch.zeros_like(broken["state_dict"][key])
    torch.save(broken, root / "broken.pt")
    return root, repo


@pytest.mark.slow  # probes twice on a store (~35 s): in `make test-slow`; the fast suite gates on recordings
def test_an_equal_candidate_passes_and_the_card_says_why(setup, small_store, capsys) -> None:
    root, repo = setup
    argv = [
        "--encoder",
        str(root / "same.pt"),
        "--repo",
        str(repo),
        "--gate",
        str(small_store),
        "--no-gate-real",
    ]
    assert publish_main(argv) == 0
    assert "ACCEPTED" in capsys.readouterr().out
    card = json.loads((repo / "ppg_encoder" / "2" / C.CARD_FILE).read_text())
    gate = card["promotion_gate"]
    assert gate["decision"] == "accepted" and gate["against_version"] == 1 and len(gate["store_digest"]) == 16
    assert {p["target"] for p in gate["probes"]} >= {"age", "heart_rate"}
    # ONNX (current) vs PyTorch (candidate) of the same weights: equal up to float noise
    assert all(
        not p["regression"] and abs(p["improvement"]) <= 0.05 * abs(p["current"]) for p in gate["probes"]
    )
    with TestClient(create_app(Settings(repo=repo))) as c:
        shown = [m for m in c.get("/v1/models").json()["models"] if m["version"] == 2]
    assert shown[0]["encoder"]["promotion_gate"]["decision"] == "accepted"


@pytest.mark.slow  # two gate runs (~45 s): in `make test-slow`, which .ci/run runs too
def test_a_regressing_candidate_is_refused_unless_forced(setup, small_store, capsys) -> None:
    root, repo = setup
    before = C.versions_on_disk(repo / "ppg_encoder")
    argv = [
        "--encoder",
        str(root / "broken.pt"),
        "--repo",
        str(repo),
        "--gate",
        str(small_store),
        "--no-gate-real",
    ]
    assert publish_main(argv) == 3
    out = capsys.readouterr()
    assert "REFUSED" in out.out and "REGRESSION" in out.out and "--force" in out.err
    assert C.versions_on_disk(repo / "ppg_encoder") == before  # nothing published
    assert publish_main([*argv, "--force"]) == 0
    new = max(C.versions_on_disk(repo / "ppg_encoder"))
    gate = json.loads((repo / "ppg_encoder" / str(new) / C.CARD_FILE).read_text())["promotion_gate"]
    assert gate["decision"] == "forced" and "heart_rate" in gate["regressions"]


def test_a_folder_of_recordings_gates_on_the_real_benchmark(tmp_path, capsys) -> None:
    """--gate with held-out recordings instead of a store: the real-recording benchmark on them."""
    import shutil
    from pathlib import Path

    from tests.conftest import synthetic_ecg

    examples = Path(__file__).resolve().parents[1] / "pulsefm" / "examples" / "ecg"
    folder = tmp_path / "heldout"
    shutil.copytree(examples, folder)
    (folder / "syn.csv").write_text("\n".join(f"{v:.5f}" for v in synthetic_ecg(250.0, 70.0)))  # SYNTHETIC
    (folder / "syn.csv.json").write_text('{"fs": 250}')
    repo = tmp_path / "repo"
    art = make_artifact("ecg", 0)
    torch.save(art, tmp_path / "ecg.pt")
    publish(repo, tmp_path / "ecg.pt")
    argv = [
        "--encoder",
        str(tmp_path / "ecg.pt"),
        "--repo",
        str(repo),
        "--gate",
        str(folder),
        "--gate-bootstrap",
        "100",
    ]
    assert publish_main(argv) == 0
    gate = json.loads((repo / "ecg_encoder" / "2" / C.CARD_FILE).read_text())["promotion_gate"]
    assert gate["decision"] == "accepted" and gate["probes"] == [] and gate["real"]["available"]
    assert len(gate["real"]["recordings"]) == 2 and len(gate["store_digest"]) == 16
    assert "real: HR MAE" in capsys.readouterr().out
