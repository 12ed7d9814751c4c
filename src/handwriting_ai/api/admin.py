"""Admin routes for workers, behind the upload key: hand in trained artifacts (only checked ones
are kept), and `GET /v1/admin/ping` to check the key before any work."""

from __future__ import annotations

from functools import partial

from attrs import frozen
from litestar import Request, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State, UploadFile
from litestar.exceptions import ClientException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers.base import BaseRouteHandler
from multipart import ParserLimitReached  # type: ignore[import-untyped]
from redis.exceptions import RedisError

from handwriting_ai.api.openapi import UPLOAD_FORM, documented
from handwriting_ai.api.security import key_matches
from handwriting_ai.api.state import AppState
from handwriting_ai.errors import (
    ForbiddenError,
    InvalidArtifactError,
    MalformedFormError,
    PredictTimeoutError,
    TooLargeError,
    UnauthorizedError,
)
from handwriting_ai.inference.upload import check_artifact, store_artifact
from handwriting_ai.logging import get_logger
from handwriting_ai.preprocessing import preprocess_hash
from handwriting_ai.registry.redis_state import RedisState

log = get_logger("handwriting_ai.admin")
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
MAX_JSON_PART_BYTES = 1024 * 1024


@frozen
class UploadResponse:
    model_id: str
    version: str
    model_bytes: int
    manifest_bytes: int
    model_sha256: str
    created: bool


async def _part(form: dict[str, UploadFile | str], name: str, limit: int) -> bytes:
    part = form.get(name)
    if not isinstance(part, UploadFile):
        raise MalformedFormError(f"Missing the '{name}' file part.")
    data = await part.read()
    await part.close()
    if len(data) > limit:
        raise TooLargeError(f"Part '{name}' is {len(data)} bytes; the limit is {limit}.")
    return data


def require_upload_key(
    connection: ASGIConnection[BaseRouteHandler, object, object, State], _: BaseRouteHandler
) -> None:
    """The upload key: `SECURITY__ADMIN_KEY`, else `SECURITY__API_KEY`; none configured: 403."""
    configured = AppState.of(connection.app.state).settings.security.upload_key
    if not configured:
        raise ForbiddenError(
            "Uploads are disabled: set SECURITY__ADMIN_KEY (or SECURITY__API_KEY) on the API"
            " and the same value as HANDWRITING_API_KEY on the workers."
        )
    if not key_matches(configured, connection.headers.get("x-api-key")):
        raise UnauthorizedError("Missing or wrong X-Api-Key.")


@get(
    "/v1/admin/ping",
    guards=[require_upload_key],
    summary="200 when X-Api-Key is the upload key (workers check theirs at start); else 401/403",
    **documented(UnauthorizedError, ForbiddenError),
)
async def admin_ping() -> dict[str, bool]:
    return {"ok": True}


@post(
    "/v1/admin/models/upload",
    status_code=201,
    guards=[require_upload_key],
    request_max_body_size=MAX_UPLOAD_BYTES,
    summary="Upload a trained model (model.pt, manifest.json, metrics.json); API key required",
    **documented(
        InvalidArtifactError,
        UnauthorizedError,
        ForbiddenError,
        TooLargeError,
        MalformedFormError,
        PredictTimeoutError,
        body=UPLOAD_FORM,
    ),
)
async def upload_model(request: Request[object, object, State]) -> UploadResponse:
    state = AppState.of(request.app.state)
    if request.content_type[0] != "multipart/form-data":
        raise MalformedFormError("Expected multipart/form-data.")
    try:
        raw_form = await request.form()
    except RequestEntityTooLarge:
        # A ClientException too: caught first, or a body over the limit answered 422.
        raise TooLargeError(
            f"The body is over {MAX_UPLOAD_BYTES} bytes, the limit for an upload."
        ) from None
    except ClientException as exc:
        if isinstance(exc.__context__, ParserLimitReached):  # more parts than the form allows
            raise TooLargeError(f"Multipart body over the limits: {exc.detail}") from None
        raise MalformedFormError(f"Malformed multipart body: {exc.detail}") from None
    form: dict[str, UploadFile | str] = {
        k: v for k, v in raw_form.items() if isinstance(v, UploadFile | str)
    }
    model_id = form.get("model_id")
    if not isinstance(model_id, str):
        raise MalformedFormError("Missing the 'model_id' field.")
    model = await _part(form, "model", MAX_UPLOAD_BYTES)
    manifest_raw = await _part(form, "manifest", MAX_JSON_PART_BYTES)
    metrics_raw = await _part(form, "metrics", MAX_JSON_PART_BYTES)
    manifest = await state.run(
        partial(
            check_artifact,
            model_id,
            model,
            manifest_raw,
            metrics_raw,
            expected_hash=preprocess_hash(),
        ),
        timeout_s=120,
    )
    stored = await state.run(
        partial(
            store_artifact, state.settings.model_dir, manifest, model, manifest_raw, metrics_raw
        ),
        timeout_s=120,
    )
    registry = state.registry
    if isinstance(registry, RedisState) and stored.version == manifest.version:
        try:
            await state.run(
                partial(
                    registry.put_artifact,
                    manifest.model_id,
                    manifest.version,
                    model,
                    manifest_raw,
                    metrics_raw,
                ),
                timeout_s=120,
            )
        except RedisError as exc:  # kept here: this replica publishes it on its next pass
            log.warning("model_publish_deferred", model_id=manifest.model_id, reason=str(exc))
    log.info(
        "model_uploaded",
        model_id=stored.model_id,
        version=stored.version,
        created=stored.created,
        model_bytes=stored.model_bytes,
        val_acc=manifest.val_acc,
    )
    return UploadResponse(
        model_id=stored.model_id,
        version=stored.version,
        model_bytes=stored.model_bytes,
        manifest_bytes=stored.manifest_bytes,
        model_sha256=stored.model_sha256,
        created=stored.created,
    )
