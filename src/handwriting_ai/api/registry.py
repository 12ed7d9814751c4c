"""The model registry over HTTP: `GET /v1/models`, and the admin actions behind the upload key.

Every action changes the registry (Redis when configured, else the model directory), publishes a
`digits.model.changed.v1` event and wakes this replica's reconciler; the other replicas follow on
the event or, having missed it, on their next periodic pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from litestar import Request, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath
from redis.exceptions import RedisError

from handwriting_ai.api.admin import require_upload_key
from handwriting_ai.api.openapi import documented
from handwriting_ai.api.security import key_matches
from handwriting_ai.api.state import AppState
from handwriting_ai.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    PredictTimeoutError,
    QueueUnavailableError,
    UnauthorizedError,
)
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.registry import actions
from handwriting_ai.registry.actions import RegistryChange
from handwriting_ai.registry.listing import RegistryListing, model_entry
from handwriting_ai.registry.state import RegistryState

T = TypeVar("T")
ADMIN_TIMEOUT_S = 30.0
_ADMIN_ERRORS = (
    UnauthorizedError,
    ForbiddenError,
    NotFoundError,
    ConflictError,
    QueueUnavailableError,
    PredictTimeoutError,
)


def read_listing(
    state: RegistryState, default: tuple[str, ...], loaded: dict[str, str]
) -> RegistryListing:
    """Blocking (disk or Redis): the listing from the registry as it stands."""
    served = state.served() or default
    ids = sorted(set(state.model_ids()) | set(served))
    models = [
        model_entry(
            model_id,
            state.model(model_id),
            state.manifests(model_id),
            served=model_id in served,
            loaded_version=loaded.get(model_id),
        )
        for model_id in ids
    ]
    return RegistryListing(
        store="redis" if state.shared else "directory", served=list(served), models=models
    )


def require_reader_key(
    connection: ASGIConnection[BaseRouteHandler, object, object, State], _: BaseRouteHandler
) -> None:
    """The API key, or the upload key: an operator's one key lists what it can change."""
    security = AppState.of(connection.app.state).settings.security
    presented = connection.headers.get("x-api-key")
    if key_matches(security.api_key, presented):
        return
    if security.upload_key and key_matches(security.upload_key, presented):
        return
    raise UnauthorizedError("Missing or wrong X-Api-Key.")


def _request_id(request: Request[object, object, State]) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


async def _on_registry(app: AppState, fn: Callable[[RegistryState], T]) -> T:
    registry = app.registry
    if registry is None:
        raise RuntimeError("registry not started")
    try:
        return await app.run(lambda: fn(registry), timeout_s=ADMIN_TIMEOUT_S)
    except (RedisError, TimeoutError) as exc:  # TimeoutError: a registry lock held elsewhere
        raise QueueUnavailableError(f"The model registry is unavailable: {exc}") from None


@get(
    "/v1/models",
    guards=[require_reader_key],
    summary="Every stored model with its versions, the served set, and the gate's decisions",
    **documented(UnauthorizedError, QueueUnavailableError, PredictTimeoutError),
)
async def list_models(request: Request[object, object, State]) -> RegistryListing:
    app = AppState.of(request.app.state)
    ensemble = app.engine.ensemble
    loaded = {m.manifest.model_id: m.path.name for m in (ensemble.members if ensemble else ())}
    default = app.settings.digits.active_model
    return await _on_registry(app, lambda r: read_listing(r, default, loaded))


async def _act(
    request: Request[object, object, State], fn: Callable[[RegistryState], RegistryChange]
) -> RegistryChange:
    app = AppState.of(request.app.state)
    answer = await _on_registry(app, fn)
    if answer.changed:
        if answer.action in ("promoted", "rolled_back"):
            app.metrics.promotions.labels("operator").inc()
        if app.wake is not None:
            app.wake.set()  # this replica at once; the others on the event
    return answer


_DOC = documented(*_ADMIN_ERRORS)


@post(
    "/v1/admin/models/{model_id:str}/serve",
    status_code=200,
    guards=[require_upload_key],
    summary="Add a stored model to the served ensemble, on every replica",
    **_DOC,
)
async def serve_model(
    request: Request[object, object, State], model_id: FromPath[str]
) -> RegistryChange:
    app, rid = AppState.of(request.app.state), _request_id(request)
    default = app.settings.digits.active_model
    return await _act(request, lambda r: actions.serve(r, default, model_id, request_id=rid))


@post(
    "/v1/admin/models/{model_id:str}/unserve",
    status_code=200,
    guards=[require_upload_key],
    summary="Take a model out of the served ensemble (its versions stay stored)",
    **_DOC,
)
async def unserve_model(
    request: Request[object, object, State], model_id: FromPath[str]
) -> RegistryChange:
    app, rid = AppState.of(request.app.state), _request_id(request)
    default = app.settings.digits.active_model
    return await _act(request, lambda r: actions.unserve(r, default, model_id, request_id=rid))


@post(
    "/v1/admin/models/{model_id:str}/versions/{version:str}/promote",
    status_code=200,
    guards=[require_upload_key],
    summary="Serve a stored version now, whatever the gate decided of it",
    **_DOC,
)
async def promote_model(
    request: Request[object, object, State], model_id: FromPath[str], version: FromPath[str]
) -> RegistryChange:
    app, rid = AppState.of(request.app.state), _request_id(request)
    default, expected = app.settings.digits.active_model, preprocess_hash()
    return await _act(
        request,
        lambda r: actions.promote(
            r, default, model_id, version, expected_hash=expected, request_id=rid
        ),
    )


@post(
    "/v1/admin/models/{model_id:str}/rollback",
    status_code=200,
    guards=[require_upload_key],
    summary="Serve the version that was current before this one",
    **_DOC,
)
async def rollback_model(
    request: Request[object, object, State], model_id: FromPath[str]
) -> RegistryChange:
    app, rid = AppState.of(request.app.state), _request_id(request)
    default = app.settings.digits.active_model
    return await _act(request, lambda r: actions.rollback(r, default, model_id, request_id=rid))


async def _pin(
    request: Request[object, object, State], model_id: str, version: str | None
) -> RegistryChange:
    app, rid = AppState.of(request.app.state), _request_id(request)
    default, expected = app.settings.digits.active_model, preprocess_hash()
    return await _act(
        request,
        lambda r: actions.pin(
            r, default, model_id, version, expected_hash=expected, request_id=rid
        ),
    )


@post(
    "/v1/admin/models/{model_id:str}/pin",
    status_code=200,
    guards=[require_upload_key],
    summary="Keep the current version served: new versions stay candidates until unpinned",
    **_DOC,
)
async def pin_model(
    request: Request[object, object, State], model_id: FromPath[str]
) -> RegistryChange:
    return await _pin(request, model_id, None)


@post(
    "/v1/admin/models/{model_id:str}/versions/{version:str}/pin",
    status_code=200,
    guards=[require_upload_key],
    summary="Serve this version and keep it: new versions stay candidates until unpinned",
    **_DOC,
)
async def pin_model_version(
    request: Request[object, object, State], model_id: FromPath[str], version: FromPath[str]
) -> RegistryChange:
    return await _pin(request, model_id, version)


@post(
    "/v1/admin/models/{model_id:str}/unpin",
    status_code=200,
    guards=[require_upload_key],
    summary="Let the promotion gate judge new versions again",
    **_DOC,
)
async def unpin_model(
    request: Request[object, object, State], model_id: FromPath[str]
) -> RegistryChange:
    app, rid = AppState.of(request.app.state), _request_id(request)
    default = app.settings.digits.active_model
    return await _act(request, lambda r: actions.unpin(r, default, model_id, request_id=rid))


ROUTES = [
    list_models,
    serve_model,
    unserve_model,
    promote_model,
    rollback_model,
    pin_model,
    pin_model_version,
    unpin_model,
]
