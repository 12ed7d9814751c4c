"""Probes and model information: `/healthz`, `/readyz`, `/version`, `GET /v1/models/active`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from litestar import Request, Response, get
from litestar.datastructures import State

from handwriting_ai.api.schemas import ActiveModels, MemberInfo, Readiness, VersionInfo
from handwriting_ai.api.security import require_api_key
from handwriting_ai.api.state import AppState
from handwriting_ai.inference.manifest import SCHEMA_VERSION
from handwriting_ai.preprocessing import preprocess_hash


def package_version() -> str:
    try:
        return version("handwriting-ai")
    except PackageNotFoundError:
        return "0+unknown"


@get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Ready when at least one model is loaded")
async def readyz(request: Request[object, object, State]) -> Response[Readiness]:
    state = AppState.of(request.app.state)
    ensemble = state.engine.ensemble
    build = state.settings.app.build
    if ensemble is None:
        body = Readiness("not_ready", False, None, None, build, 0, [])
        return Response(body, status_code=503)
    ids = [m.manifest.model_id for m in ensemble.members]
    body = Readiness("ready", True, ensemble.model_id, SCHEMA_VERSION, build, len(ids), ids)
    return Response(body, status_code=200)


@get("/version", summary="Service version and build")
async def version_info(request: Request[object, object, State]) -> VersionInfo:
    app = AppState.of(request.app.state).settings.app
    return VersionInfo("handwriting-ai", package_version(), app.build, app.commit)


@get("/v1/models/active", guards=[require_api_key], summary="The ensemble being served")
async def active_models(request: Request[object, object, State]) -> ActiveModels:
    state = AppState.of(request.app.state)
    ensemble = state.engine.ensemble
    members = (
        []
        if ensemble is None
        else [
            MemberInfo(
                model_id=m.manifest.model_id,
                arch=m.manifest.arch,
                n_classes=m.manifest.n_classes,
                version=m.manifest.version,
                run_id=m.manifest.run_id,
                created_at=m.manifest.created_at,
                schema_version=m.manifest.schema_version,
                val_acc=m.manifest.val_acc,
                test_acc=m.manifest.test_acc,
                temperature=m.manifest.temperature,
            )
            for m in ensemble.members
        ]
    )
    return ActiveModels(
        model_loaded=ensemble is not None,
        model_id=None if ensemble is None else ensemble.model_id,
        ensemble_size=len(members),
        model_ids=[m.model_id for m in members],
        tta_profile=state.settings.digits.tta_profile,
        preprocess_hash=preprocess_hash(),
        members=members,
    )
