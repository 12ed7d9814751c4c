"""Server-Sent Events framing of a job's events, and the body generator behind the SSE route.

The events come from the process's `EventHub` (one Redis reader for every open stream). The body
opens with a `: connected` comment, sends a `: keep-alive` comment after `keepalive_s` without an
event (proxies close idle connections), and ends after the job's final event. When it cannot go
on (Redis failed, the client fell too far behind, the API stops) it ends with a comment saying so:
the client reconnects with `Last-Event-ID` and gets exactly what it has not seen.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from redis.exceptions import RedisError

from handwriting_ai.api.event_hub import EventHub, StreamDroppedError, StreamSlot
from handwriting_ai.logging import get_logger
from handwriting_ai.streams.follow import JobEntry

log = get_logger("handwriting_ai.train")
KEEPALIVE_S = 15.0
STATUS_CHECK_S = 1.0  # how often an idle stream asks whether its job ended without a final event
RESUME = "reconnect with Last-Event-ID"


def sse_frame(entry: JobEntry) -> bytes:
    """`event:`/`data:`/`id:`; the event document is one-line JSON, so one `data:` line."""
    data = entry.document.replace("\n", " ")
    return f"event: {entry.type}\ndata: {data}\nid: {entry.entry_id}\n\n".encode()


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


async def event_stream(
    hub: EventHub,
    request_id: str,
    *,
    after_id: str = "0-0",
    keepalive_s: float = KEEPALIVE_S,
    slot: StreamSlot | None = None,
) -> AsyncIterator[bytes]:
    """Frames until the job's final event, keep-alive comments while idle; `slot` (the stream's
    place under `EVENTS__MAX_STREAMS`) is released however the stream ends."""
    try:
        yield sse_comment("connected")
        quiet_since = time.monotonic()
        idle_s = min(STATUS_CHECK_S, keepalive_s) if keepalive_s > 0 else STATUS_CHECK_S
        try:
            async for entry in hub.follow_job(request_id, after_id=after_id, idle_s=idle_s):
                if entry is not None:
                    quiet_since = time.monotonic()
                    yield sse_frame(entry)
                elif time.monotonic() - quiet_since >= keepalive_s:
                    quiet_since = time.monotonic()
                    yield sse_comment("keep-alive")
        except RedisError as exc:
            log.warning("sse_redis_error", request_id=request_id, error=str(exc))
            yield sse_comment(f"redis unavailable; {RESUME}")
        except StreamDroppedError as exc:
            log.info("sse_dropped", request_id=request_id, reason=str(exc))
            yield sse_comment(f"{exc}; {RESUME}")
    finally:
        if slot is not None:
            slot.release()
