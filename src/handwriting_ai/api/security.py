"""Optional shared-secret guard: `X-Api-Key`, compared in constant time."""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler

from handwriting_ai.api.state import AppState
from handwriting_ai.errors import UnauthorizedError


def key_matches(configured: str, presented: str | None) -> bool:
    if not configured:
        return True
    return presented is not None and hmac.compare_digest(configured.encode(), presented.encode())


async def require_api_key(
    connection: ASGIConnection[BaseRouteHandler, object, object, State], _: BaseRouteHandler
) -> None:
    state = AppState.of(connection.app.state)
    if not key_matches(state.settings.security.api_key, connection.headers.get("x-api-key")):
        raise UnauthorizedError("Missing or wrong X-Api-Key.")
