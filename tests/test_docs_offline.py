"""/docs and /redoc render with no internet (their scripts come from the package), checked as a
picture and as a rendered page in headless Chromium; every request example in the schema,
executed as is against the shipped model, answers 200."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.settings import Settings
from tests.gateway_helpers import ServerThread

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# what this machine's closed network needs (docs/operating.md): no background connections at all
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
    "--virtual-time-budget=15000",
]


@pytest.fixture(scope="module")
def server():
    with ServerThread(create_app(Settings(repo=ROOT / "model_repository"))) as s:
        yield s


def chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    if CHROMIUM is None:
        pytest.skip("chromium not installed (.ci/run installs Debian's chromium)")
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_pages_load_nothing_from_outside(server, page) -> None:
    html = httpx.get(server.url + page).text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert urls and all(u.startswith("/") for u in urls), urls
    for u in urls:
        assert httpx.get(server.url + u).status_code == 200, u


@pytest.mark.parametrize(("page", "marker"), [("/docs", "opblock"), ("/redoc", "redoc-wrap")])
def test_docs_render_in_headless_chromium(server, tmp_path, page, marker) -> None:
    dom = chromium(["--dump-dom", server.url + page], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert marker in dom.stdout and "/v1/embed" in dom.stdout and "/v1/predict" in dom.stdout
    shot = tmp_path / "page.png"
    run = chromium([f"--screenshot={shot}", server.url + page], tmp_path)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]  # (H, W, 3) in [0, 1]
    ink = (img.min(axis=-1) < 0.9).mean()  # share of pixels that are not (near) white
    assert ink > 0.02, f"{page} looks blank ({ink:.1%} of pixels drawn)"
    if page == "/docs":  # Swagger UI's POST badges: its green, #49cc90
        green = (np.abs(img - np.array([0x49, 0xCC, 0x90]) / 255).max(axis=-1) < 0.08).mean()
        assert green > 0.0005, f"no POST operation drawn ({green:.3%})"


def test_every_request_example_in_the_schema_succeeds(server) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    ran = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for ctype, media in op.get("requestBody", {}).get("content", {}).items():
                examples = [media["example"]] if "example" in media else []
                examples += [e["value"] for e in media.get("examples", {}).values()]
                for ex in examples:
                    assert ctype == "application/json", (path, ctype)
                    r = httpx.request(method, server.url + path, json=ex, timeout=30)
                    assert r.status_code == 200, (path, r.status_code, r.text[:300])
                    ran += 1
    assert ran >= 2  # /v1/embed and /v1/predict
