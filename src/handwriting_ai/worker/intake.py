"""Where a free slot's next entry comes from, in this order: our own pending entries (a restart
under the same name, or a job of ours that ended without an outcome), then a dead worker's entry
(`group.suspects` -> a confirmation window -> `group.claim`), then new entries (XREADGROUP `>`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from redis.asyncio import Redis
from structlog.typing import FilteringBoundLogger

from handwriting_ai.settings import Settings
from handwriting_ai.worker import group, ledger
from handwriting_ai.worker.delivery import SuspectTracker
from handwriting_ai.worker.group import Entry
from handwriting_ai.worker.inflight import InFlight
from handwriting_ai.worker.metrics import WorkerMetrics

T = TypeVar("T")
CLEANUP_TIMEOUT_S = 2.0
BURST_BLOCK_MS = 100


async def unless_stopping(step: Awaitable[T], stopping: asyncio.Event, default: T) -> T:
    """The step's result, or `default` if a stop comes first: the step is then cancelled (an
    entry a read was handed stays pending to us, and the lease we drop on exit frees it)."""
    running = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not running.done():
            running.cancel()
            await asyncio.wait({running}, timeout=CLEANUP_TIMEOUT_S)
    if running.cancelled() or not running.done():
        return default
    return running.result()


class Intake:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        consumer: str,
        jobs: InFlight,
        metrics: WorkerMetrics,
        stopping: asyncio.Event,
        burst: bool,
        log: FilteringBoundLogger,
    ) -> None:
        self.redis = redis
        self.streams = settings.streams
        self.consumer = consumer
        self.jobs = jobs
        self.metrics = metrics
        self.stopping = stopping
        self.burst = burst
        self.log = log
        # A dead owner's entries are suspect after its lease (2 heartbeats) is gone.
        self.confirm_window_s = self.streams.heartbeat_interval_s * 2
        self.suspects = SuspectTracker()
        self.own_cursor = True  # read our own pending entries (from the start) before new ones
        self.last_reclaim = 0.0

    def cut_off(self) -> None:
        """A failed or stalled round trip: we were cut off too, so what we saw says nothing."""
        self.suspects.reset()

    async def next_entry(self) -> tuple[Entry | None, int]:
        """The next entry and how many times it was delivered; None when there is none now."""
        if self.own_cursor:
            own = await self._own_pending()
            if own is not None:
                return own, await group.deliveries(self.redis, own[0])
        now = time.monotonic()
        if now - self.last_reclaim >= self.streams.reclaim_interval_s:
            self.last_reclaim = now
            entry = await self._reclaim()
            if entry is not None:
                return entry, await group.deliveries(self.redis, entry[0])
        block_ms = int(min(self.streams.block_ms, self.streams.reclaim_interval_s * 1000))
        if self.burst:
            block_ms = min(block_ms, BURST_BLOCK_MS)
        new = await unless_stopping(
            group.read_new(self.redis, self.consumer, count=1, block_ms=max(1, block_ms)),
            self.stopping,
            [],
        )
        return (new[0], 1) if new else (None, 1)

    async def drained(self) -> bool:
        """Burst mode ends when nothing runs, no retry is waiting and nothing is new. The stream
        is asked last: a retry moved onto it after our empty read is then still seen."""
        if self.jobs.tasks or await ledger.pending_retries(self.redis) > 0:
            return False
        return not await group.has_undelivered(self.redis)

    async def _own_pending(self) -> Entry | None:
        own = await group.read_own_pending(self.redis, self.consumer, count=100)
        fresh = [e for e in own if e[0] not in self.jobs.running]
        if fresh:
            return fresh[0]
        self.own_cursor = False
        return None

    async def _reclaim(self) -> Entry | None:
        started = time.monotonic()
        found = await group.suspects(self.redis, self.consumer)
        now = time.monotonic()
        if now - started > self.streams.heartbeat_interval_s:
            self.cut_off()  # a stalled round trip (a paused Redis): we saw nothing
            return None
        self.suspects.observe(found, now)
        for entry_id, owner in self.suspects.confirmed(now, self.confirm_window_s):
            if entry_id in self.jobs.running:
                continue
            self.suspects.forget(entry_id)
            entry = await group.claim(
                self.redis,
                self.consumer,
                entry_id,
                owner=owner,
                min_idle_ms=int(self.streams.claim_min_idle_s * 1000),
            )
            if entry is not None:
                self.log.info("entry_reclaimed", entry_id=entry_id, owner=owner)
                self.metrics.reclaims.inc()
                return entry
        return None
