"""The API's reload consumer: follow `digits:events` and hand each `completed` and
`digits.model.changed.v1` event to a callback.

Plain XREAD, no consumer group: every API replica must see every event, since each one serves
its own copy of the model. The callback only wakes the replica's reconciler
(`inference/reconcile.py`), which decides from the model directory what to serve; so this
consumer may start at the stream's newest entry, lose events while Redis is down, or see one
before its version is stored: the reconciler's pass at start-up and every
`DIGITS__RECONCILE_INTERVAL_S` makes good whatever an event did not. It survives Redis outages by
backing off and reconnecting, and stops when its task is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import ModelChanged, TrainCompleted, decode_event
from handwriting_ai.logging import get_logger
from handwriting_ai.streams.follow import entries_of, xread_entries
from handwriting_ai.streams.keys import EVENTS_STREAM

log = get_logger(__name__)
OnEvent = Callable[[TrainCompleted | ModelChanged], Awaitable[None]]
_HANDED_ON = {"digits.train.completed.v1", "digits.model.changed.v1"}


class ReloadConsumer:
    def __init__(
        self,
        redis: Redis,
        on_event: OnEvent,
        *,
        block_ms: int = 1000,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.redis = redis
        self.on_event = on_event
        self.block_ms = block_ms
        self.max_backoff_s = max_backoff_s
        self.last_id: str | None = None
        self.handled = 0
        self.errors = 0

    def __repr__(self) -> str:
        counts = f"handled={self.handled}, errors={self.errors}"
        return f"ReloadConsumer(last_id={self.last_id}, {counts})"

    async def prime(self) -> None:
        """Pin the start to the newest entry now (XREAD `$` would only pin it at the first read,
        and an event published in between would be missed)."""
        newest = entries_of(await self.redis.xrevrange(EVENTS_STREAM, count=1))
        self.last_id = newest[0][0] if newest else "0-0"

    async def poll(self) -> int:
        """One blocking read; returns how many events were handed on."""
        if self.last_id is None:
            await self.prime()
        assert self.last_id is not None
        reply: object = await self.redis.xread(
            {EVENTS_STREAM: self.last_id}, count=100, block=self.block_ms
        )
        handled = 0
        for entry_id, fields in xread_entries(reply):
            self.last_id = entry_id
            if fields.get("type") not in _HANDED_ON:
                continue
            try:
                event = decode_event(fields)
            except ContractError as exc:
                log.warning("event_malformed", entry_id=entry_id, errors=exc.errors)
                continue
            if isinstance(event, TrainCompleted | ModelChanged):
                await self._hand_on(event)
                handled += 1
        return handled

    async def _hand_on(self, event: TrainCompleted | ModelChanged) -> None:
        try:
            await self.on_event(event)
        except Exception as exc:  # a bad reload must never stop the consumer or the app
            log.exception("model_reload_failed", model_id=event.model_id, reason=str(exc))
        self.handled += 1

    async def run(self) -> None:
        delay_s = 0.1
        while True:
            try:
                await self.poll()
                delay_s = 0.1
            except (RedisError, OSError, ValueError) as exc:
                self.errors += 1
                log.warning("reload_consumer_error", error=str(exc), retry_in_s=delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(self.max_backoff_s, delay_s * 2)
