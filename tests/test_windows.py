"""Recordings of any length: cutting into windows (properties over lengths, strides and bad
stretches) and partial success end to end (the real app, onnxruntime backend)."""

from __future__ import annotations

import json

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from fastapi.testclient import TestClient

from pulsefm.preprocess import spec_for
from service.app import create_app
from service.decoding import NPY, Limits, parse_batch
from service.errors import ValidationFailed
from service.settings import Settings
from tests.gateway_helpers import build_repo, npy

ECG = spec_for("ecg")


def ecg_recording(seconds: float, fs: float, seed: int = 0) -> np.ndarray:
    """A SYNTHETIC single-lead ECG (neurokit2), (1, seconds x fs) float32."""
    import neurokit2 as nk

    x = nk.ecg_simulate(duration=seconds, sampling_rate=int(fs), heart_rate=70, random_state=seed)
    return np.asarray(x, dtype=np.float32)[None, : round(seconds * fs)]


REC = ecg_recording(100.0, 128.0)  # 100 s: windows at 0, 30, 60 s; 10 s dropped


@hypothesis.settings(max_examples=60, deadline=None, database=None)
@hypothesis.given(
    seconds=st.floats(min_value=29.5, max_value=100.0),
    stride=st.none() | st.floats(min_value=1.0, max_value=90.0),
    bad=st.lists(st.tuples(st.floats(0, 1), st.sampled_from([np.nan, np.inf, 1e39])), max_size=3),
)
def test_windows_cover_the_recording_and_only_bad_windows_are_rejected(
    seconds: float, stride: float | None, bad: list[tuple[float, float]]
) -> None:
    fs = 128.0
    n = round(seconds * fs)
    x = REC[:, :n].astype(np.float64)
    for where, value in bad:
        x[0, min(n - 1, int(where * n))] = value
    query = {"modality": "ecg", "fs": "128"} | ({"stride_s": str(stride)} if stride else {})
    try:
        batch = parse_batch(npy(x[None]), NPY, None, query, Limits())
    except ValidationFailed as exc:  # every window has a bad sample
        assert bad and {p.reason for p in exc.problems} <= {"nonfinite", "out_of_range"}
        return
    win = batch.windows
    window = round(ECG.duration_s * fs)
    if n <= window * 1.02:
        assert len(win) == 1 and win.length == n and win.dropped_tail_s == 0
    else:
        hop = round((stride or ECG.duration_s) * fs)
        assert win.length == window
        assert len(win) == (n - window) // hop + 1
        assert win.starts.tolist() == [k * hop for k in range(len(win))]
        assert win.dropped_tail_s == pytest.approx((n - win.starts[-1] - window) / fs)
    for w in range(len(win)):
        a = int(win.starts[w])
        span = x[0, a : a + win.length]
        expected = None if np.isfinite(span).all() and np.abs(span).max() < 3e38 else True
        assert (w in win.problems) == bool(expected), (w, win.problems.get(w))
        if w not in win.problems:
            np.testing.assert_array_equal(win.take([w])[0, 0], span.astype(np.float32))


def test_too_many_windows_is_named() -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_batch(npy(REC[None]), NPY, None, {"modality": "ecg", "fs": "128", "stride_s": "1"}, Limits(8))
    assert err.value.problems[0].reason == "too_many_windows"


def test_ppg_takes_one_to_four_channels_and_channels_selects() -> None:
    x = np.random.default_rng(0).standard_normal((1, 6, 3840)).astype(np.float32)
    for k in (1, 2, 3, 4):
        batch = parse_batch(npy(x[:, :k]), NPY, None, {"modality": "ppg", "fs": "64"}, Limits())
        assert batch.windows.x.shape[1] == k
    with pytest.raises(ValidationFailed, match="1 to 4 channel"):
        parse_batch(npy(x[:, :5]), NPY, None, {"modality": "ppg", "fs": "64"}, Limits())
    picked = parse_batch(npy(x), NPY, None, {"modality": "ppg", "fs": "64", "channels": "5,0"}, Limits())
    np.testing.assert_array_equal(picked.windows.x[0], x[0, [5, 0]])


# ---------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    repo = build_repo(tmp_path_factory.mktemp("win"))
    with TestClient(create_app(Settings(repo=repo))) as c:
        yield c


def test_a_long_recording_is_cut_into_windows_each_as_if_sent_alone(client) -> None:
    r = client.post("/v1/embed", json={"modality": "ecg", "fs": 128, "segments": [REC.tolist()]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["window_s"] == 30 and body["stride_s"] == 30 and body["windows_used"] == 3
    assert [q["start_s"] for q in body["quality"]] == [0, 30, 60]
    assert body["recordings"] == [
        {"recording": 0, "duration_s": 100.0, "windows": 3, "used": 3, "dropped_tail_s": 10.0}
    ]
    alone = client.post(
        "/v1/embed",
        json={
            "modality": "ecg",
            "fs": 128,
            "segments": [REC[:, a : a + 3840].tolist() for a in (0, 3840, 7680)],
        },
    ).json()
    assert all(q["cached"] for q in alone["quality"])  # the cache is per window
    np.testing.assert_allclose(alone["embeddings"], body["embeddings"], atol=1e-6)
    np.testing.assert_allclose(body["aggregate"], np.mean(body["embeddings"], axis=0), atol=1e-5)


def test_bad_windows_are_reported_and_the_rest_served(client) -> None:
    x = REC.astype(np.float64)
    x[0, 4000:4100] = np.nan  # window 1 (30-60 s)
    x[0, 8000:] = x[0, 8000]  # window 2 flat
    for endpoint in ("/v1/embed", "/v1/predict"):
        r = client.post(
            endpoint,
            content=npy(x[None]),
            headers={"Content-Type": NPY},
            params={"modality": "ecg", "fs": 128},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert [q["usable"] for q in body["quality"]] == [True, False, False]
        assert body["quality"][1]["reasons"] == ["nonfinite"] and "flat_line" in body["quality"][2]["reasons"]
        assert body["windows_used"] == 1 and body["recordings"][0]["used"] == 1
        key = "embeddings" if endpoint == "/v1/embed" else "predictions"
        assert body[key][0] is not None and body[key][1] is None and body[key][2] is None
    metrics = client.get("/metrics").text
    assert (
        'pulsefm_windows_rejected_total{endpoint="/v1/predict",modality="ecg",reason="nonfinite"} 1.0'
        in metrics
    )


def test_no_usable_window_is_a_422_naming_every_window(client) -> None:
    x = np.full((1, 1, 3 * 3840), np.nan)
    x[0, 0, 3840:] = 1.0  # windows 1 and 2 flat
    r = client.post(
        "/v1/embed", content=npy(x), headers={"Content-Type": NPY}, params={"modality": "ecg", "fs": 128}
    )
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert [(p["segment"], p["reason"]) for p in problems] == [
        (0, "nonfinite"),
        (1, "flat_line"),
        (2, "flat_line"),
    ]
    assert "window 1 (recording 0, 30.0-60.0 s)" in problems[1]["detail"]


@pytest.mark.parametrize("endpoint", ["/v1/embed", "/v1/predict"])
def test_windows_flat_in_the_band_only_are_a_422_not_nan(client, endpoint: str) -> None:
    """Noise of 1e-9 passes the raw checks (not constant) but has nothing left in the model's band:
    when that is every window, the answer is the 422 naming them, never NaN embeddings."""
    x = np.random.default_rng(0).normal(size=(1, 1, 2 * 3840)) * 1e-9
    r = client.post(
        endpoint, content=npy(x), headers={"Content-Type": NPY}, params={"modality": "ecg", "fs": 128}
    )
    assert r.status_code == 422, r.text[:300]
    assert [(p["segment"], p["reason"]) for p in r.json()["problems"]] == [(0, "flat_line"), (1, "flat_line")]
    x[0, 0, :3840] = REC[0, :3840]  # one good window: served, the other reported
    r = client.post(
        endpoint,
        content=npy(x),
        headers={"Content-Type": NPY},
        params={"modality": "ecg", "fs": 128, "quality": "full"},
    )
    assert r.status_code == 200, r.text[:300]
    rows = r.json()["quality"]
    assert [q["usable"] for q in rows] == [True, False] and rows[0]["heart_rate_bpm"] is not None


def test_a_long_recording_goes_through_in_admission_chunks(tmp_path) -> None:
    repo = build_repo(tmp_path)
    with TestClient(create_app(Settings(repo=repo, max_segments=2, max_inflight_segments=2))) as c:
        long = np.tile(REC[:, :7680], (1, 5))  # 320 s -> 10 windows, admitted 2 at a time
        r = c.post(
            "/v1/embed",
            content=npy(long[None]),
            headers={"Content-Type": NPY},
            params={"modality": "ecg", "fs": 128},
        )
        assert r.status_code == 200, r.text
        assert r.json()["windows_used"] == 10


def test_two_channel_ppg_is_served(client) -> None:
    from tests.gateway_helpers import raw_segments

    x = raw_segments("ppg", 1, 64.0)[:, :2]
    r = client.post("/v1/predict", json={"modality": "ppg", "fs": 64, "segments": x.tolist()})
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["windows_used"] == 1


def test_client_recording_calls_give_per_window_results(tmp_path) -> None:
    """PulseClient.embed_recording / predict_recording over a real socket: a file upload and an
    array (.npy body), per-window quality flags on both, sync and async."""
    import asyncio

    from service.client import AsyncPulseClient, PulseClient
    from tests.gateway_helpers import ServerThread

    repo = build_repo(tmp_path)
    x = REC.astype(np.float64)
    x[0, 4000:4100] = np.nan  # window 1 unusable
    csv = tmp_path / "rec.csv"
    csv.write_text("time,ecg\n" + "\n".join(f"{i / 128:.6f},{v}" for i, v in enumerate(x[0])))
    with ServerThread(create_app(Settings(repo=repo))) as server:
        with PulseClient(server.url) as c:
            from_file = c.embed_recording(csv, modality="ecg", quality="full")
            from_array = c.embed_recording(x[0], modality="ecg", fs=128)
            pred = c.predict_recording(csv, modality="ecg", stride_s=15)

        async def run():
            async with AsyncPulseClient(server.url) as ac:
                return await ac.embed_recording(x[0], modality="ecg", fs=128)

        from_async = asyncio.run(run())
    for res in (from_file, from_array, from_async):
        assert res.usable.tolist() == [True, False, True] and res.windows_used == 2
        assert res.windows[1]["reasons"] == ["nonfinite"]
        emb = res.embeddings
        assert emb is not None and np.isnan(emb[1]).all() and np.isfinite(emb[[0, 2]]).all()
    assert from_file.windows[0]["heart_rate_bpm"] is not None  # quality=full on the upload
    assert from_file.embeddings is not None and from_array.embeddings is not None
    np.testing.assert_allclose(from_file.embeddings[[0, 2]], from_array.embeddings[[0, 2]], atol=1e-4)
    assert pred.stride_s == 15 and len(pred.windows) == 5 and pred.predictions is not None
    assert [p is None for p in pred.predictions] == [not u for u in pred.usable]
    assert pred.aggregate and all("value" in o and "units" in o for o in pred.aggregate.values())


def test_windows_after_a_rejected_one_are_cached_under_their_own_keys(client) -> None:
    rec = REC.copy()
    rec[:, 3840:7680] = 0.0  # the middle window is flat: rejected, the others are embedded
    r = client.post("/v1/embed", json={"modality": "ecg", "fs": 128, "segments": [rec.tolist()]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["windows_used"] == 2
    alone = client.post(
        "/v1/embed",
        json={"modality": "ecg", "fs": 128, "segments": [rec[:, a : a + 3840].tolist() for a in (0, 7680)]},
    ).json()
    assert [q["cached"] for q in alone["quality"]] == [True, True]
    used = [e for e in body["embeddings"] if e is not None]
    np.testing.assert_allclose(alone["embeddings"], used, atol=1e-6)
