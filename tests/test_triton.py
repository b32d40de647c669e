"""The generated model repository in a REAL Triton server (Triton 2.51, Python backend, CPU).

See docs/triton.md."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import torch

from pulsefm import contract as C
from tests.test_export import make_artifact, probes_doc
from training.export import ort_session, parity_segments
from training.publish import publish

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    from service.triton_local import TritonServer, setup

    setup()  # creates .venv-triton on first use (pip, no-deps; docs/triton.md)
    root = tmp_path_factory.mktemp("triton")
    art_path = root / "ppg.pt"
    art = make_artifact("ppg")
    torch.save(art, art_path)
    probes = probes_doc("ppg", art, root / "probes.json")
    repo = root / "repo"
    publish(repo, art_path, probes)
    with TritonServer(repo, root / "work", explicit=True, load=["ppg_encoder", "ppg_probes"]) as server:
        yield server, repo, root


def _infer(url: str, model: str, name_in: str, name_out: str, x: np.ndarray, version: str = "") -> np.ndarray:
    import tritonclient.http as th

    client = th.InferenceServerClient(url)
    inp = th.InferInput(name_in, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = th.InferRequestedOutput(name_out, binary_data=True)
    return np.asarray(client.infer(model, [inp], outputs=[out], model_version=version).as_numpy(name_out))


def test_repository_loads_unchanged_and_matches_in_process_ort(triton) -> None:
    server, repo, _ = triton
    x = parity_segments("ppg", 16)
    got = _infer(server.http_url, "ppg_encoder", C.ENCODER_INPUT, C.ENCODER_OUTPUT, x)
    ref = ort_session(repo / "ppg_encoder" / "1" / C.MODEL_FILE).run(None, {C.ENCODER_INPUT: x})[0]
    assert got.shape == (16, C.EMBED_DIM)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    probs = _infer(server.http_url, "ppg_probes", C.PROBES_INPUT, C.PROBES_OUTPUT, ref)
    pref = ort_session(repo / "ppg_probes" / "1" / C.MODEL_FILE).run(None, {C.PROBES_INPUT: ref})[0]
    np.testing.assert_allclose(probs, pref, rtol=0, atol=1e-5)


def test_grpc_matches_http(triton) -> None:
    import tritonclient.grpc as tg

    server, _, _ = triton
    x = parity_segments("ppg", 4)
    client = tg.InferenceServerClient(server.grpc_url)
    inp = tg.InferInput(C.ENCODER_INPUT, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("ppg_encoder", [inp]).as_numpy(C.ENCODER_OUTPUT)
    np.testing.assert_allclose(
        got, _infer(server.http_url, "ppg_encoder", C.ENCODER_INPUT, C.ENCODER_OUTPUT, x), atol=1e-6
    )


def test_published_version_is_loaded_by_explicit_model_control(triton) -> None:
    server, repo, root = triton
    art2 = make_artifact("ppg", seed=7)
    path2 = root / "ppg2.pt"
    torch.save(art2, path2)
    summary = publish(repo, path2)
    assert summary["version"] == 2
    req = urllib.request.Request(
        f"http://{server.http_url}/v2/repository/models/ppg_encoder/load", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(
        urllib.request.Request(f"http://{server.http_url}/v2/repository/index", data=b"{}", method="POST"),
        timeout=10,
    ) as resp:
        index = json.loads(resp.read())
    ready = {(m["name"], m.get("version")) for m in index if m.get("state") == "READY"}
    assert {("ppg_encoder", "1"), ("ppg_encoder", "2")} <= ready  # latest 2 versions served
    x = parity_segments("ppg", 4)
    v2 = _infer(server.http_url, "ppg_encoder", C.ENCODER_INPUT, C.ENCODER_OUTPUT, x, version="2")
    ref2 = ort_session(repo / "ppg_encoder" / "2" / C.MODEL_FILE).run(None, {C.ENCODER_INPUT: x})[0]
    np.testing.assert_allclose(v2, ref2, atol=1e-5)
    v1 = _infer(server.http_url, "ppg_encoder", C.ENCODER_INPUT, C.ENCODER_OUTPUT, x, version="1")
    assert np.abs(v1 - v2).max() > 1e-3  # really two different models
