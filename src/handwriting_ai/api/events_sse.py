"""Server-Sent Events framing of a job's events, and the body generator behind the SSE route."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from redis.asyncio import Redis
from redis.exceptions import RedisError

from handwriting_ai.logging import get_logger
from handwriting_ai.streams.follow import JobEntry, follow_job

log = get_logger("handwriting_ai.train")
KEEPALIVE_S = 15.0
BLOCK_MS = 1000


def sse_frame(entry: JobEntry) -> bytes:
    """`event:`/`data:`/`id:`; the event document is one-line JSON, so one `data:` line."""
    data = entry.document.replace("\n", " ")
    return f"event: {entry.type}\ndata: {data}\nid: {entry.entry_id}\n\n".encode()


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


async def event_stream(
    redis: Redis,
    request_id: str,
    *,
    after_id: str = "0-0",
    keepalive_s: float = KEEPALIVE_S,
    block_ms: int = BLOCK_MS,
) -> AsyncIterator[bytes]:
    """Frames until the job's final event; a comment every `keepalive_s` while idle so proxies
    keep the connection. A Redis error ends the stream; the client resumes with Last-Event-ID."""
    yield sse_comment("connected")
    quiet_since = time.monotonic()
    try:
        async for entry in follow_job(redis, request_id, after_id=after_id, block_ms=block_ms):
            if entry is not None:
                quiet_since = time.monotonic()
                yield sse_frame(entry)
            elif time.monotonic() - quiet_since >= keepalive_s:
                quiet_since = time.monotonic()
                yield sse_comment("keep-alive")
    except RedisError as exc:
        log.warning("sse_redis_error", request_id=request_id, error=str(exc))
        yield sse_comment("redis unavailable; reconnect with Last-Event-ID")
