"""Request ids and cache keys, made without system calls on the event loop (service/asgi.py,
service/cache.py): still unique, still the same keys."""

from __future__ import annotations

import os
import re

import numpy as np

from service.asgi import request_id
from service.cache import cache_key, key_for, segment_digest


def test_made_request_ids_are_unique_hex() -> None:
    ids = {request_id(None) for _ in range(20_000)}
    assert len(ids) == 20_000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert request_id("client-id.1") == "client-id.1"


def test_a_forked_worker_makes_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids
        os.write(write, ",".join(request_id(None) for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = set(f.read().split(","))
    os.waitpid(pid, 0)
    parent = {request_id(None) for _ in range(50)}
    assert len(child) == 50 and not child & parent


def test_key_from_digest_is_the_key_of_the_segment() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 3840)).astype(np.float64)
    for seg in x:
        digest = segment_digest(64.0, seg)
        assert key_for("ppg_encoder", 2, "p1", "ab" * 32, digest) == cache_key(
            "ppg_encoder", 2, "p1", "ab" * 32, 64.0, seg
        )
    # a strided view (a window of a longer recording) hashes like its contiguous copy
    long = rng.standard_normal((4, 9000)).astype(np.float32)
    assert segment_digest(64.0, long[:, 100:3940]) == segment_digest(64.0, long[:, 100:3940].copy())
    assert segment_digest(64.0, x[0]) != segment_digest(128.0, x[0])


def test_window_digests_hash_each_window_of_each_recording() -> None:
    from service.pipeline import window_digests
    from service.windows import Windows

    x = np.random.default_rng(1).standard_normal((2, 4, 9000)).astype(np.float32)
    win = Windows(x, 64.0, 3840, np.array([0, 3840]), 60.0, 20.6)
    got = window_digests(win, [0, 1, 3])
    assert got == {
        0: segment_digest(64.0, x[0, :, :3840]),
        1: segment_digest(64.0, x[0, :, 3840:7680]),
        3: segment_digest(64.0, x[1, :, 3840:7680]),
    }
