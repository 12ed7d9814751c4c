"""The worker's periodic steps besides dispatch.

- heartbeat: renew our lease, XCLAIM our in-flight entries (idle time stays low), cancel a run
  whose entry another worker took, refresh the per-job locks and the health key, and pass on
  cancellation requests;
- maintenance: move due retries back onto the stream, trim it, forget consumers that are gone,
  and (when metrics are served) read the group's pending entries for the gauges.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from handwriting_ai.streams.keys import HEALTH_TTL_S, status_key, worker_health_key
from handwriting_ai.worker import group, ledger
from handwriting_ai.worker.inflight import InFlight
from handwriting_ai.worker.intake import Intake
from handwriting_ai.worker.job import Running, WorkerParts
from handwriting_ai.worker.slots import SlotPool

TRIM_INTERVAL_S = 30.0
PENDING_INTERVAL_S = 1.0  # the pending gauges' freshness: one XPENDING a second at most


class Upkeep:
    def __init__(
        self,
        parts: WorkerParts,
        *,
        jobs: InFlight,
        intake: Intake,
        pool: SlotPool,
        health: Callable[[], str],
        watch_pending: bool,
        log: FilteringBoundLogger,
    ) -> None:
        self.parts = parts
        self.redis = parts.redis
        self.consumer = parts.consumer
        self.jobs = jobs
        self.intake = intake
        self.pool = pool
        self.health = health
        self.watch_pending = watch_pending
        self.log = log
        # A lease outlives a few missed heartbeats.
        self.lease_ms = int(parts.settings.streams.heartbeat_interval_s * 2000)
        self._last_trim = 0.0
        self._last_pending = 0.0

    # ------------------------------------------------------------------ heartbeat

    async def beat(self) -> None:
        jobs = self.jobs
        # A run that wrote its ending no longer holds its entry, even while its slot restarts.
        snapshot = {e: r for e, r in jobs.running.items() if not jobs.ended(e)}
        mine, held = await group.heartbeat(
            self.redis, self.consumer, snapshot, lease_ms=self.lease_ms
        )
        for entry_id in snapshot:
            task = jobs.tasks.get(entry_id)
            if entry_id not in mine and task is not None and not task.done():
                # Another worker took the entry (we were frozen past its checks): it runs it now,
                # and our fenced writes would be refused anyway.
                self.log.warning("entry_lost", entry_id=entry_id)
                jobs.lost.add(entry_id)
                task.cancel()
        if held - set(jobs.running):
            self.intake.own_cursor = True  # ours but not running: ended without an outcome
        await ledger.refresh_locks(
            self.redis,
            {
                r.request_id: f"{self.consumer} {r.entry_id}"
                for e, r in snapshot.items()
                if e in mine
            },
            ttl_s=self.parts.lock_ttl_s,
        )
        await self.poll_cancellations([snapshot[e] for e in snapshot if e in mine])
        await self.write_health()

    async def poll_cancellations(self, running: list[Running]) -> None:
        for job in running:
            flag: object = await self.redis.hget(status_key(job.request_id), "cancel_requested")
            if flag in ("1", b"1") and job.slot is not None:
                self.log.info("job_cancel_requested", request_id=job.request_id)
                job.slot.cancel()

    async def write_health(self) -> None:
        if self.pool.broken:
            return  # no healthy line for a worker that cannot train
        await self.redis.set(worker_health_key(self.consumer), self.health(), ex=HEALTH_TTL_S)

    # ------------------------------------------------------------------ maintenance

    async def maintain(self) -> None:
        moved = await ledger.move_due_retries(self.redis)
        if moved:
            self.log.info("retries_moved", count=moved)
        now = time.monotonic()
        if self.watch_pending and now - self._last_pending >= PENDING_INTERVAL_S:
            self._last_pending = now
            await self.check_pending()
        if now - self._last_trim >= TRIM_INTERVAL_S:
            self._last_trim = now
            point = await group.trim(self.redis)
            removed = await group.remove_gone_consumers(self.redis, self.consumer)
            self.log.debug("stream_maintained", trim_minid=point, removed_consumers=removed)

    async def check_pending(self) -> None:
        summary = await group.pending_summary(self.redis)
        self.parts.metrics.pending_seen(summary, now_s=time.time())
