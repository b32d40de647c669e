"""A real S3-compatible server on loopback for tests and benchmarks: moto's standalone server
(`moto_server`, from PyPI `moto[server]`), a separate process speaking the S3 HTTP API.

    with local_s3() as env:          # env: the AWS_* variables that point s3fs/boto at it
        prepare(... --out s3://pulsefm/stores/syn ...)

The variables are also set in this process's environment while the block runs (and for child
processes started inside it), so `s3://` store URLs work everywhere without options.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUCKET = "pulsefm"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_s3(bucket: str = BUCKET, timeout_s: float = 30.0) -> Iterator[dict[str, str]]:
    """Start moto_server on a free loopback port, create `bucket`, yield the environment."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    if not Path(exe).exists():
        raise RuntimeError("moto_server not found: pip install 'moto[server]' (the dev extra)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    env = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {url}") from None
                time.sleep(0.1)
        os.environ.update(env)
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
