"""/v1/models (API key); /v1/admin/reload, /v1/admin/rollout, /v1/admin/promote, /v1/admin/rollback
(admin key). A rollout change is one call, persisted in the repository's rollout.json and logged."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal, TypeVar

import msgspec
from fastapi import APIRouter, Request

from service import rollout, schemas
from service.auth import AdminKey, ApiKey, GatewayState, key_digest
from service.decoding import parse_modality
from service.errors import Problem, UnknownModel, ValidationFailed
from service.state import State, reload_models, request_reload

log = logging.getLogger("pulsefm.gateway")

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
        "rollouts": {
            m: {**dataclasses.asdict(r), "current": state.registry.current(m)}
            for m, r in state.registry.rollouts.items()
            if m in state.registry.models
        },
        "backend": state.backend.name,
    }


@router.post(
    "/v1/admin/reload",
    responses=schemas.ERROR_RESPONSES,
    summary="Rescan the repository and load new versions (admin key)",
)
async def reload(state: GatewayState, _: AdminKey) -> dict[str, Any]:
    state.marks.reload = request_reload(state.registry.repo)  # the other workers and replicas follow
    models = await reload_models(state)
    return {
        "served": [{"modality": m.modality, "version": m.version} for m in models],
        "failed": [f.as_dict() for f in state.registry.failed],
    }


class _RolloutBody(msgspec.Struct, forbid_unknown_fields=True):
    modality: str
    candidate: int
    mode: Literal["canary", "shadow"]
    fraction: float = 0.0


class _PromoteBody(msgspec.Struct, forbid_unknown_fields=True):
    modality: str
    version: int | None = None


class _RollbackBody(msgspec.Struct, forbid_unknown_fields=True):
    modality: str


T = TypeVar("T")


async def _body(request: Request, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(await request.body(), type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValidationFailed([Problem("json", f"invalid request body: {exc}")]) from None


def _served(state: State, modality: str, version: int) -> None:
    served = state.registry.models.get(modality, {})
    if version not in served:
        raise UnknownModel(f"{modality} version {version} is not served; served: {sorted(served)}")


def _change(state: State, request: Request, modality: str, action: str, **facts: Any) -> dict[str, Any]:
    """Apply one rollout change: persisted in rollout.json (every replica and restart sees it),
    logged, and answered with the modality's new state."""
    reg = state.registry
    with rollout.changing(reg.repo) as rollouts:  # as on disk: another worker may have changed it
        reg.rollouts = rollouts
        r = rollouts.setdefault(modality, rollout.Rollout())
        before = reg.current(modality)
        if action == "promote":
            facts["to"] = facts["to"] if facts["to"] is not None else r.candidate
            if facts["to"] is None:
                raise ValidationFailed(
                    [Problem("version", "no candidate in rollout: name the version to promote")]
                )
            _served(state, modality, facts["to"])
            r.current, r.candidate, r.mode, r.fraction = facts["to"], None, None, 0.0
        elif action == "rollback":
            if r.mode is not None:
                r.candidate, r.mode, r.fraction = None, None, 0.0
            else:
                previous = [h["from"] for h in r.history if h["action"] == "promote"]
                if not previous or previous[-1] not in reg.models.get(modality, {}):
                    raise ValidationFailed(
                        [Problem("rollback", f"{modality}: no rollout and no earlier promotion to undo")]
                    )
                r.current = previous[-1]
            facts["to"] = reg.current(modality)
        else:
            if facts["to"] == before:
                raise ValidationFailed([Problem("candidate", f"{modality} v{before} is already current")])
            r.candidate, r.mode, r.fraction = facts["to"], action, facts.get("fraction", 0.0)
        entry = r.record(action, key_digest(request, "loopback"), **{"from": before, **facts})
    state.marks.rollout = rollout.stamp(reg.repo)  # this worker has it; its watcher need not re-read
    log.info("rollout %s %s", modality, action, extra={"fields": {"modality": modality, **entry}})
    return {"modality": modality, **dataclasses.asdict(r), "current": reg.current(modality)}


@router.post(
    "/v1/admin/rollout",
    responses=schemas.ERROR_RESPONSES,
    summary="Canary or shadow a candidate version (admin key)",
)
async def start_rollout(request: Request, state: GatewayState, _: AdminKey) -> dict[str, Any]:
    body = await _body(request, _RolloutBody)
    modality = parse_modality(body.modality)
    _served(state, modality, body.candidate)
    if not (0.0 <= body.fraction <= 1.0) or (body.mode == "canary" and body.fraction == 0.0):
        raise ValidationFailed(
            [Problem("fraction", "fraction must be in (0, 1] for a canary, [0, 1] for a shadow")]
        )
    return _change(state, request, modality, body.mode, to=body.candidate, fraction=body.fraction)


@router.post(
    "/v1/admin/promote", responses=schemas.ERROR_RESPONSES, summary="Make a version current (admin key)"
)
async def promote(request: Request, state: GatewayState, _: AdminKey) -> dict[str, Any]:
    body = await _body(request, _PromoteBody)
    return _change(state, request, parse_modality(body.modality), "promote", to=body.version)


@router.post(
    "/v1/admin/rollback",
    responses=schemas.ERROR_RESPONSES,
    summary="Stop a rollout, or undo the last promotion (admin key)",
)
async def rollback(request: Request, state: GatewayState, _: AdminKey) -> dict[str, Any]:
    body = await _body(request, _RollbackBody)
    return _change(state, request, parse_modality(body.modality), "rollback")
