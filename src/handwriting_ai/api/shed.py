"""Refuse reads the service cannot take before the framework sees them (ASGI, around the app).

Under a retry storm, refusals outnumber reads many times over; each one that went through
routing, the key guard, the handler and the exception handlers cost the event loop about as much
as the reads it was protecting, and the loop's backlog then made admitted reads late. Here a
`POST /v1/read` that admission would refuse gets its 503 `overloaded` (the same body and
`Retry-After` as the handler's) from a few lines of ASGI, its body never read. The handler still
takes its place itself: this is a fast path, not the rule.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPResponseStartEvent, Receive, Scope, Send

from handwriting_ai.api.admission import READS_WAITING_KEY, ReadsWaiting
from handwriting_ai.api.errors import error_json
from handwriting_ai.api.state import AppState
from handwriting_ai.logging import get_logger

log = get_logger("handwriting_ai.api")


class ShedReads:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state  # its read threads start (and stop) with the app's lifespan
        self.timeout_s = state.settings.digits.predict_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = None
        reads = self.state.reads
        if (
            scope["type"] == ScopeType.HTTP
            and scope["method"] == "POST"
            and scope["path"] == "/v1/read"
        ):
            waiting = scope.get("state", {}).get(READS_WAITING_KEY)
            if isinstance(waiting, ReadsWaiting):
                waiting.arrived_in_app()  # the edge counted it; the handler reads the count
            if reads is not None:
                refused = reads.refusal(self.timeout_s)
        if refused is None:
            await self.app(scope, receive, send)
            return
        log.info("request_refused", code=refused.code, status=refused.status_code)
        self.state.metrics.read_refused(refused.status_code, refused.code)
        request_id = str(scope.get("state", {}).get("request_id", ""))
        body = error_json(refused.code, refused.message, request_id)
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": refused.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(refused.retry_after_s).encode()),
            ],
        }
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})
