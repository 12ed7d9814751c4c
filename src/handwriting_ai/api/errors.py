"""Every error leaves as `{code, message, request_id}`; tracebacks only for unexpected errors."""

from __future__ import annotations

import json
from collections.abc import Mapping

from litestar import Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from handwriting_ai.api.json_body import MAX_MESSAGE_CHARS, clip, safe_text
from handwriting_ai.api.metrics import READ_PATH
from handwriting_ai.api.state import read_refused
from handwriting_ai.errors import AppError
from handwriting_ai.logging import get_logger

log = get_logger("handwriting_ai.api")

# Litestar's 500 when the client disconnects before its body has arrived: not our error.
_CLIENT_GONE = "client disconnected prematurely"
_CODES_BY_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "too_large",
    415: "unsupported_media_type",
    422: "malformed_form",
    429: "too_many_requests",
    503: "unavailable",
}


def error_response(
    request: Request[object, object, State],
    status: int,
    code: str,
    message: str,
    *,
    retry_after_s: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[dict[str, str]]:
    request_id = str(request.scope.get("state", {}).get("request_id", ""))
    if request.scope["path"] == READ_PATH:
        read_refused(request.app.state, status, code)
    sent = dict(headers or {})
    if retry_after_s is not None:
        sent["Retry-After"] = str(retry_after_s)
    return Response(
        {"code": code, "message": readable(message), "request_id": request_id},
        status_code=status,
        headers=sent or None,
    )


def error_json(code: str, message: str, request_id: str = "") -> bytes:
    """The error body for answers made below the framework (the edge, the read shed)."""
    return json.dumps(
        {"code": code, "message": readable(message), "request_id": request_id}
    ).encode()


def readable(message: str) -> str:
    """A message that echoes client input stays short and encodable (no lone surrogates)."""
    return clip(safe_text(message), MAX_MESSAGE_CHARS)


def _app_error(request: Request[object, object, State], exc: Exception) -> Response[dict[str, str]]:
    assert isinstance(exc, AppError)
    log.info(
        "request_refused", code=exc.code, status=exc.status_code, message=readable(exc.message)
    )
    return error_response(
        request, exc.status_code, exc.code, exc.message, retry_after_s=exc.retry_after_s
    )


def _http_error(
    request: Request[object, object, State], exc: Exception
) -> Response[dict[str, str]]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if isinstance(exc, ValidationException):
        status = 400
    if exc.detail == _CLIENT_GONE:  # its body never came (the edge's deadline, or an abort)
        log.info("client_disconnected", path=request.url.path)
        return error_response(request, 400, "invalid_request", "The client went away mid-request.")
    if status >= 500:
        log.error("http_error", status=status, detail=exc.detail)
        return error_response(request, 500, "internal_error", "Internal error.")
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else "Request refused."
    # The router's 405 names the allowed methods in `Allow` (RFC 9110): keep its headers.
    code = _CODES_BY_STATUS.get(status, "invalid_request")
    return error_response(request, status, code, message, headers=exc.headers)


def _unexpected(
    request: Request[object, object, State], exc: Exception
) -> Response[dict[str, str]]:
    log.exception("unhandled_error", error=type(exc).__name__)
    return error_response(request, 500, "internal_error", "Internal error.")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AppError: _app_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
