"""/docs and /redoc without internet: Swagger UI and ReDoc from the fastapi-offline distribution's
files (served under /docs-assets), and a real recording as the request example.

FastAPI's own pages load their scripts from a CDN and are blank offline; these are the same pages
with local script URLs. The JSON example of /v1/embed and /v1/predict is 30 s of a real ECG
(pulsefm/examples: MIT-BIH record 208, resampled to 128 Hz), so "Try it out" answers 200.
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
EXAMPLE_ECG = Path(str(files("pulsefm"))) / "examples" / "ecg" / "mitbih208_75s.csv"
EXAMPLE_FS = 128.0

router = APIRouter(include_in_schema=False)


def assets_dir() -> Path:
    return Path(str(files("fastapi_offline"))) / "static"


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="pulse-fm gateway - Swagger UI",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon.png",
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title="pulse-fm gateway - ReDoc",
        redoc_js_url=f"{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS}/favicon.png",
        with_google_fonts=False,
    )


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=assets_dir()), name="docs-assets")


@functools.lru_cache(maxsize=1)
def example_request() -> dict[str, Any]:
    """The first 30 s of the shipped real ECG at 128 Hz: a body /v1/embed and /v1/predict accept."""
    from pulsefm.preprocess import resample

    raw = np.loadtxt(EXAMPLE_ECG, skiprows=1)
    x = resample(raw[: 30 * 360], 360.0, EXAMPLE_FS)[: round(30 * EXAMPLE_FS)]
    return {"modality": "ecg", "fs": EXAMPLE_FS, "segments": [[[round(float(v), 3) for v in x]]]}
