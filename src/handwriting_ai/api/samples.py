"""Keep each read's 28×28 sample in Redis for a while, so that a correction needs no re-upload.

Written after the answer is made, in a task of its own: a read never waits on Redis, and works
without it. While Redis fails, writes pause for `PAUSE_S` after each failure instead of piling
up on the connection pool (a correction of such a read is then a 404, as for an expired one).
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from handwriting_ai.contracts.feedback import encode_sample
from handwriting_ai.inference.read import Reading
from handwriting_ai.logging import get_logger
from handwriting_ai.streams.keys import read_sample_key

log = get_logger(__name__)
PAUSE_S = 5.0


class SampleKeeper:
    def __init__(self, redis: Redis, *, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.kept = 0
        self.failed = 0
        self._paused_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()

    def keep(self, request_id: str, reading: Reading) -> None:
        """Schedule the write; returns at once."""
        if self.ttl_s <= 0 or not request_id or time.monotonic() < self._paused_until:
            return
        fields: dict[FieldT, EncodableT] = {
            "sample": encode_sample(reading.preprocessed.pixels),
            "digit": str(reading.digit),
            "confidence": repr(float(reading.confidence)),
            "model_id": reading.model_id,
        }
        task = asyncio.create_task(self._write(read_sample_key(request_id), fields))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, key: str, fields: dict[FieldT, EncodableT]) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, self.ttl_s)
                await pipe.execute()
            self.kept += 1
        except (RedisError, OSError) as exc:
            self.failed += 1
            self._paused_until = time.monotonic() + PAUSE_S
            log.warning("read_sample_not_kept", reason=str(exc), paused_s=PAUSE_S)

    async def drain(self) -> None:
        """Let pending writes finish (at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2.0)
