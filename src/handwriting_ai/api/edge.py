"""The server edge: uvicorn's httptools protocol with deadlines for a request's headers and
body, and a cap on open connections.

uvicorn has a keep-alive timeout but none for a request in progress: a client that sends its
headers one byte a second holds a connection (and its memory) for as long as it likes, and 50 such
clients hold 50. Here every request must deliver its headers within `APP__HEADER_TIMEOUT_S` of its
first byte (of the connection, for a new one) and its body within `APP__BODY_TIMEOUT_S` after
that; a late one gets 408 and the connection is closed. Beyond `APP__MAX_CONNECTIONS` open
connections a new one gets 503 `overloaded` at once, in our error shape, instead of waiting.
And every connection sends without Nagle's delay (see `_no_delay`).

The edge also counts the reads that have arrived and not yet reached the app (`ReadsWaiting`,
handed to the app in the scope's state): with small reads run on the event loop itself, the
loop's own queue is where reads wait, and only the edge sees it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Literal

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from handwriting_ai.api.admission import READS_WAITING_KEY, ReadsWaiting
from handwriting_ai.api.errors import error_json
from handwriting_ai.logging import get_logger

log = get_logger("handwriting_ai.edge")
Phase = Literal["headers", "body"]


def _raw_response(status: str, code: str, message: str, retry_after_s: int | None = None) -> bytes:
    body = error_json(code, message)
    extra = f"retry-after: {retry_after_s}\r\n" if retry_after_s is not None else ""
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{extra}connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_TIMED_OUT = {
    phase: _raw_response(
        "408 Request Timeout", "timeout", f"The request's {phase} did not arrive in time."
    )
    for phase in ("headers", "body")
}
_TOO_MANY = _raw_response(
    "503 Service Unavailable", "overloaded", "Too many open connections; retry shortly.", 1
)


def _no_delay(transport: asyncio.Transport) -> None:
    """Send small writes at once. asyncio sets TCP_NODELAY only on sockets whose `proto` is
    IPPROTO_TCP, and a listening socket made with `socket.socket(AF_INET)` (uvicorn's
    `bind_socket`, the one `digits up` hands over) has proto 0: its connections kept Nagle, and
    a response written as headers then body waited for the client's delayed ACK, 40 ms a request.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Flow(FlowControl):
    """uvicorn's flow control, telling the edge when it reads again after a pause."""

    def __init__(self, transport: asyncio.Transport, on_resume: Callable[[], None]) -> None:
        super().__init__(transport)
        self._on_resume = on_resume

    def resume_reading(self) -> None:
        was_paused = self.read_paused
        super().resume_reading()
        if was_paused:
            self._on_resume()


class EdgeProtocol(HttpToolsProtocol):
    """Set the three limits with `configure` (a subclass per server) before uvicorn uses it."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 1000
    reads_waiting: ReadsWaiting | None = None  # one per server (`configure`)

    @classmethod
    def configure(
        cls, *, header_timeout_s: float, body_timeout_s: float, max_connections: int
    ) -> type[EdgeProtocol]:
        return type(
            "ConfiguredEdgeProtocol",
            (cls,),
            {
                "header_timeout_s": header_timeout_s,
                "body_timeout_s": body_timeout_s,
                "max_connections": max_connections,
                "reads_waiting": ReadsWaiting(),
            },
        )

    _timer: asyncio.TimerHandle | None = None
    _phase: Phase | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Made here, before any request: every request's cycle shares this one.
        self.flow = _Flow(transport, self._reading_resumed)
        _no_delay(transport)
        if len(self.connections) > self.max_connections:
            log.warning(
                "connection_refused", open=len(self.connections), limit=self.max_connections
            )
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._arm("headers")  # a new connection owes its first request's headers from now

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # The parser's callbacks mark the phases of each request.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase is None:  # the next request on a kept-alive connection
            self._arm("headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # Counted where the task is made (pipelined requests only when their turn comes): every
        # task made reaches the app, whose read shedding (`api/shed.py`) takes it off the count.
        waiting = self.reads_waiting
        scope = cycle.scope
        if waiting is not None and scope["method"] == "POST" and scope["path"] == "/v1/read":
            waiting.count += 1
            scope["state"][READS_WAITING_KEY] = waiting
        super()._start_asgi_task(cycle, app)

    def _reading_resumed(self) -> None:
        # While uvicorn did not read (a pipelined request waiting for the one before it, or the
        # app behind on a body), the client's bytes sat unread: its deadline starts again now.
        # Without this, a deadline that fell just after the resume fired before those bytes
        # were read, and an on-time request got 408.
        if self._phase is not None:
            self._arm(self._phase)

    def _arm(self, phase: Phase) -> None:
        self._disarm()
        seconds = self.header_timeout_s if phase == "headers" else self.body_timeout_s
        self._phase = phase
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._phase = None, None

    def _expired(self) -> None:
        phase = self._phase or "headers"
        self._timer, self._phase = None, None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # uvicorn stopped reading (a pipelined request waits for the one before it, or the
            # app is behind on the body): the wait is ours, not the client's. Look again later.
            self._arm(phase)
            return
        log.warning("request_timed_out", phase=phase, client=str(self.client))
        # `cycle` is the latest request's: in the header phase of the next request on a
        # kept-alive connection it is the previous one, whose answer is complete.
        cycle = self.cycle
        answering = cycle is not None and cycle.response_started and not cycle.response_complete
        if not answering:
            self.transport.write(_TIMED_OUT[phase])
        self.transport.close()
