"""/v1/models (API key) and /v1/admin/reload (admin key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service import schemas
from service.auth import AdminKey, ApiKey, GatewayState
from service.state import reload_models

router = APIRouter()


@router.get(
    "/v1/models",
    response_model=schemas.ModelsResponse,
    responses=schemas.ERROR_RESPONSES,
    summary="Served versions and their model cards; versions on disk that failed to load, and why",
)
async def models(state: GatewayState, _: ApiKey) -> dict[str, Any]:
    return {
        "models": [mv.describe() for mv in state.registry.all()],
        "retiring": [
            {"modality": mv.modality, "version": mv.version, "sunset": mv.sunset}
            for versions in state.registry.retiring.values()
            for mv in versions.values()
        ],
        "failed": [f.as_dict() for f in state.registry.failed],
        "backend": state.backend.name,
    }


@router.post(
    "/v1/admin/reload",
    responses=schemas.ERROR_RESPONSES,
    summary="Rescan the repository and load new versions (admin key)",
)
async def reload(state: GatewayState, _: AdminKey) -> dict[str, Any]:
    models = await reload_models(state)
    return {
        "served": [{"modality": m.modality, "version": m.version} for m in models],
        "failed": [f.as_dict() for f in state.registry.failed],
    }
