"""Probes and model information: `/healthz`, `/readyz`, `/version`, `/metrics`,
`GET /v1/models/active`."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from handwriting_ai.api.openapi import documented
from handwriting_ai.api.schemas import (
    ActiveModels,
    MemberInfo,
    ModelVersions,
    Readiness,
    StoredVersion,
    VersionInfo,
)
from handwriting_ai.api.security import require_api_key
from handwriting_ai.api.state import AppState
from handwriting_ai.errors import PredictTimeoutError, UnauthorizedError
from handwriting_ai.inference.manifest import SCHEMA_VERSION
from handwriting_ai.inference.store import (
    MANIFEST_FILE,
    current_version,
    list_versions,
    version_dir,
)
from handwriting_ai.preprocessing import preprocess_hash


def package_version() -> str:
    try:
        return version("handwriting-ai")
    except PackageNotFoundError:
        return "0+unknown"


def _stored_version(
    model_dir: Path, model_id: str, name: str, current: str | None
) -> StoredVersion:
    """Read leniently: a broken candidate is still listed, with what its manifest shows."""
    try:
        raw: object = json.loads(
            (version_dir(model_dir, model_id, name) / MANIFEST_FILE).read_text()
        )
    except (OSError, ValueError):
        raw = {}
    data = raw if isinstance(raw, dict) else {}
    val_acc, created_at = data.get("val_acc"), data.get("created_at")
    return StoredVersion(
        version=name,
        val_acc=float(val_acc) if isinstance(val_acc, int | float) else None,
        created_at=created_at if isinstance(created_at, str) else None,
        role="current" if name == current else "candidate",
    )


def stored_models(
    model_dir: Path, model_ids: tuple[str, ...], served: dict[str, str]
) -> list[ModelVersions]:
    """Blocking (disk): every stored version of each active model, oldest first."""
    out = []
    for model_id in model_ids:
        try:
            current = current_version(model_dir, model_id)
            names = list_versions(model_dir, model_id)
        except (OSError, ValueError):
            current, names = None, []
        versions = [_stored_version(model_dir, model_id, n, current) for n in names]
        out.append(ModelVersions(model_id, served.get(model_id), versions))
    return out


@get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    summary="Ready when at least one model is loaded",
    **documented(responses={503: ResponseSpec(Readiness, description="No model is loaded yet.")}),
)
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


@get(
    "/v1/models/active",
    guards=[require_api_key],
    summary="The ensemble being served",
    **documented(UnauthorizedError, PredictTimeoutError),
)
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
    served = {m.manifest.model_id: m.path.name for m in ensemble.members} if ensemble else {}
    settings = state.settings
    # The served models (the registry's set, which operators change at run time); the full
    # registry, every stored model with the gate's decisions, is `GET /v1/models`.
    ids = tuple(served) or settings.digits.active_model
    models = await state.run(
        lambda: stored_models(settings.model_dir, ids, served),
        timeout_s=10,
    )
    return ActiveModels(
        model_loaded=ensemble is not None,
        model_id=None if ensemble is None else ensemble.model_id,
        ensemble_size=len(members),
        model_ids=[m.model_id for m in members],
        tta_profile=state.settings.digits.tta_profile,
        preprocess_hash=preprocess_hash(),
        members=members,
        models=models,
    )


@get("/metrics", summary="Prometheus metrics (text exposition format)", include_in_schema=False)
async def prometheus_metrics(request: Request[object, object, State]) -> Response[bytes]:
    """Open like the probes (a scraper has no key): keep the API port off the internet, as the
    README says for `SECURITY__API_KEY`-less deployments, or scrape through the private network."""
    body = AppState.of(request.app.state).metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
