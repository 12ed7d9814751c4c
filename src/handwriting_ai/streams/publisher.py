"""Publish training events: the shared `digits:events` stream (trimmed with MAXLEN ~) and the
job's own stream for SSE replay. Progress is best-effort. A worker's lifecycle events (started,
completed, failed) are not published here: they are written with the job's status and ack in one
fenced step (`worker/commit.py`)."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from handwriting_ai.contracts.events import (
    TrainBatch,
    TrainEpoch,
    TrainEvent,
    encode_event,
    is_final,
)
from handwriting_ai.logging import get_logger
from handwriting_ai.streams.keys import EVENTS_STREAM, job_events_key

log = get_logger(__name__)
_PROGRESS = (TrainBatch, TrainEpoch)
JOB_EVENTS_MAXLEN = 5_000


class EventPublisher:
    def __init__(self, redis: Redis, *, maxlen: int, job_ttl_s: int, enabled: bool = True) -> None:
        self.redis = redis
        self.maxlen = maxlen
        self.job_ttl_s = job_ttl_s
        self.enabled = enabled
        self.published = 0
        self.dropped = 0

    async def _store(self, event: TrainEvent) -> None:
        fields: dict[FieldT, EncodableT] = {k: v for k, v in encode_event(event).items()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(EVENTS_STREAM, fields, maxlen=self.maxlen, approximate=True)
            key = job_events_key(event.request_id)
            pipe.xadd(key, fields, maxlen=JOB_EVENTS_MAXLEN, approximate=True)
            pipe.expire(key, self.job_ttl_s)
            await pipe.execute()
        self.published += 1

    async def publish(self, event: TrainEvent, *, best_effort: bool = False) -> bool:
        """Progress (batch/epoch) is skipped when events are disabled and dropped on a Redis
        error: training never waits on it. With `best_effort` any event is tried once and a
        Redis error is raised to the caller. Everything else is retried until stored."""
        if isinstance(event, _PROGRESS) and not self.enabled:
            return False
        if best_effort:
            await self._store(event)
            return True
        if isinstance(event, _PROGRESS):
            try:
                await self._store(event)
            except RedisError as exc:
                self.dropped += 1
                log.warning("event_dropped", type=event.type, error=str(exc))
                return False
            return True
        await self.publish_reliably(event)
        return True

    async def publish_reliably(self, event: TrainEvent, *, max_delay_s: float = 5.0) -> None:
        delay = 0.1
        while True:
            try:
                await self._store(event)
                return
            except RedisError as exc:
                log.warning("event_retry", type=event.type, final=is_final(event), error=str(exc))
                await asyncio.sleep(delay)
                delay = min(max_delay_s, delay * 2)
