"""The worker: a consumer in `digits-workers` that reads new jobs AND reclaims dead workers' jobs.

Loops, all on one event loop that never blocks on torch:
- dispatch: for each free slot, take our own pending entries first (a restart), then a reclaim
  step (XAUTOCLAIM, cursor carried), then new entries (XREADGROUP `>`);
- heartbeat: XCLAIM our in-flight entries (idle time stays low, so no live job is reclaimed),
  refresh the per-job locks and the health key, and pass on cancellation requests;
- maintenance: move due retries back onto the stream, trim it, forget consumers that are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from handwriting_ai.logging import get_logger
from handwriting_ai.settings import Settings
from handwriting_ai.streams.compat import Entry
from handwriting_ai.streams.keys import HEALTH_TTL_S, status_key, worker_health_key
from handwriting_ai.streams.publisher import EventPublisher
from handwriting_ai.worker import group, ledger
from handwriting_ai.worker.delivery import ReclaimCursor, consumer_name
from handwriting_ai.worker.job import JobRun, Outcome, Running, WorkerParts, ids_of
from handwriting_ai.worker.slots import Slot, SlotPool

log = get_logger(__name__)
TRIM_INTERVAL_S = 30.0
ERROR_PAUSE_S = 0.5


class Worker:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        *,
        concurrency: int = 1,
        burst: bool = False,
        consumer: str | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.concurrency = max(1, concurrency)
        self.burst = burst
        self.consumer = consumer or consumer_name()
        streams = settings.streams
        self.parts = WorkerParts(
            redis=redis,
            settings=settings,
            publisher=EventPublisher(
                redis,
                maxlen=settings.events.maxlen,
                job_ttl_s=streams.failure_ttl_s,
                enabled=settings.events.enabled,
            ),
            consumer=self.consumer,
            concurrency=self.concurrency,
            lock_ttl_s=max(5, math.ceil(streams.claim_min_idle_s * 2)),
        )
        self.pool = SlotPool(
            self.concurrency, log_level=settings.app.log_level, log_format=settings.app.log_format
        )
        self.cursor = ReclaimCursor()
        self.own_cursor = "0"  # our own pending entries are read once, from the start
        self.running: dict[str, Running] = {}
        self.tasks: dict[str, asyncio.Task[Outcome]] = {}
        self.stopping = asyncio.Event()
        self.jobs_complete = 0
        self.jobs_failed = 0
        self.jobs_retried = 0
        self.jobs_skipped = 0
        self._last_trim = 0.0
        self.log = log.bind(consumer=self.consumer)

    def __repr__(self) -> str:
        return (
            f"<Worker {self.consumer} j_complete={self.jobs_complete} j_failed={self.jobs_failed}"
            f" j_retried={self.jobs_retried} j_skipped={self.jobs_skipped}"
            f" j_ongoing={len(self.tasks)}>"
        )

    def stop(self) -> None:
        """SIGTERM: stop reading; running jobs get `shutdown_grace_s` to finish."""
        self.log.info("worker_stopping", running=len(self.tasks))
        self.stopping.set()

    # ------------------------------------------------------------------ main

    async def run(self) -> None:
        await group.ensure_group(self.redis)
        await self.pool.start()
        await self.write_health()
        self.log.info("worker_started", concurrency=self.concurrency, burst=self.burst)
        background = [
            asyncio.create_task(self._every(self.settings.streams.heartbeat_interval_s, self.beat)),
            asyncio.create_task(self._every(self._maintenance_tick_s(), self.maintain)),
        ]
        try:
            await self.dispatch()
        finally:
            await self.shutdown(background)

    def _maintenance_tick_s(self) -> float:
        return max(0.05, min(1.0, self.settings.streams.reclaim_interval_s))

    async def _every(self, interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
            except ResponseError as exc:
                await self._on_response_error(exc)
            except RedisError as exc:
                self.log.warning("redis_error", step=step.__name__, error=str(exc))
            await asyncio.sleep(interval_s)

    async def _on_response_error(self, exc: ResponseError) -> None:
        if group.is_nogroup(exc):  # Redis came back empty: the group must exist again
            self.log.warning("group_missing", error=str(exc))
            await group.ensure_group(self.redis)
            self.own_cursor = "0"
        else:
            self.log.warning("redis_error", error=str(exc))
            await asyncio.sleep(ERROR_PAUSE_S)

    async def shutdown(self, background: list[asyncio.Task[None]]) -> None:
        self.stopping.set()
        tasks = list(self.tasks.values())
        if tasks:
            grace_s = self.settings.streams.shutdown_grace_s
            _, unfinished = await asyncio.wait(tasks, timeout=grace_s)
            for job_task in unfinished:
                job_task.cancel()  # kills the child; the entry stays pending for another worker
            await asyncio.gather(*unfinished, return_exceptions=True)
            if unfinished:
                self.log.warning("jobs_left_pending", count=len(unfinished))
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await self.pool.close()
        with contextlib.suppress(RedisError):
            await self.redis.delete(worker_health_key(self.consumer))
        self.log.info("worker_stopped", worker=repr(self))

    # ------------------------------------------------------------------ dispatch

    async def _free_slot(self) -> Slot | None:
        while not self.stopping.is_set():
            try:
                return await asyncio.wait_for(self.pool.acquire(), timeout=0.2)
            except TimeoutError:
                continue
        return None

    async def dispatch(self) -> None:
        last_reclaim = 0.0
        while not self.stopping.is_set():
            slot = await self._free_slot()
            if slot is None:
                return
            entry: Entry | None = None
            deliveries = 1
            try:
                entry, deliveries, last_reclaim = await self.next_entry(last_reclaim)
            except ResponseError as exc:
                await self._on_response_error(exc)
            except RedisError as exc:
                self.log.warning("redis_error", step="dispatch", error=str(exc))
                await asyncio.sleep(ERROR_PAUSE_S)
            if entry is None:
                self.pool.free.put_nowait(slot)
                if self.burst and await self._drained():
                    return
                continue
            self.start_job(entry, deliveries, slot)

    async def _drained(self) -> bool:
        """Burst mode ends when nothing runs, nothing is new and no retry is waiting."""
        return not self.tasks and await ledger.pending_retries(self.redis) == 0

    async def next_entry(self, last_reclaim: float) -> tuple[Entry | None, int, float]:
        if self.own_cursor:
            own = await group.read_own_pending(self.redis, self.consumer, count=1)
            own = [e for e in own if e[0] not in self.running]
            if own:
                self.own_cursor = own[0][0]
                return own[0], await group.deliveries(self.redis, own[0][0]), last_reclaim
            self.own_cursor = ""
        now = time.monotonic()
        if now - last_reclaim >= self.settings.streams.reclaim_interval_s:
            entries, nameless = await group.reclaim(
                self.redis,
                self.consumer,
                self.cursor,
                min_idle_ms=int(self.settings.streams.claim_min_idle_s * 1000),
                count=1,
            )
            if nameless:
                await group.ack_deleted_own(self.redis, self.consumer, set(self.running))
            entries = [e for e in entries if e[0] not in self.running]
            if entries:
                self.log.info("entry_reclaimed", entry_id=entries[0][0])
                # Keep scanning at once: a dead worker may have left more than one entry.
                return entries[0], await group.deliveries(self.redis, entries[0][0]), 0.0
            if self.cursor.cursor == "0-0":
                last_reclaim = now
        block_ms = int(
            min(self.settings.streams.block_ms, self.settings.streams.reclaim_interval_s * 1000)
        )
        if self.burst:
            block_ms = min(block_ms, 100)
        new = await group.read_new(self.redis, self.consumer, count=1, block_ms=max(1, block_ms))
        if new:
            return new[0], 1, last_reclaim
        return None, 1, last_reclaim

    def start_job(self, entry: Entry, deliveries: int, slot: Slot) -> None:
        entry_id, fields = entry
        running = Running(entry_id, ids_of(fields, entry_id).request_id)
        self.running[entry_id] = running
        run = JobRun(self.parts, entry_id, fields, deliveries)
        task = asyncio.create_task(self._job(run, running, slot))
        self.tasks[entry_id] = task

    async def _job(self, run: JobRun, running: Running, slot: Slot) -> Outcome:
        outcome: Outcome = "abandoned"
        try:
            outcome = await run.run(running, slot)
        except asyncio.CancelledError:
            run.log.warning("job_abandoned")
            raise
        except (RedisError, OSError, RuntimeError, ValueError) as exc:
            # Left pending: another delivery (or the poison cap) decides its fate.
            run.log.error("job_crashed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.running.pop(running.entry_id, None)
            self.tasks.pop(running.entry_id, None)
            self._count(outcome)
            if self.stopping.is_set():
                slot.kill()
            else:
                await self.pool.release(slot)
        return outcome

    def _count(self, outcome: Outcome) -> None:
        if outcome == "completed":
            self.jobs_complete += 1
        elif outcome in ("failed", "dead", "cancelled"):
            self.jobs_failed += 1
        elif outcome == "retried":
            self.jobs_retried += 1
        elif outcome == "skipped":
            self.jobs_skipped += 1

    # ------------------------------------------------------------------ heartbeat

    async def beat(self) -> None:
        snapshot = dict(self.running)
        if snapshot:
            mine = await group.heartbeat(self.redis, self.consumer, snapshot)
            for entry_id, running in snapshot.items():
                task = self.tasks.get(entry_id)
                if entry_id not in mine and running.slot is not None and task is not None:
                    # Another worker took the entry (we were frozen past min-idle): it runs it.
                    self.log.warning("entry_lost", entry_id=entry_id)
                    task.cancel()
            await ledger.refresh_locks(
                self.redis,
                [r.request_id for r in snapshot.values()],
                ttl_s=self.parts.lock_ttl_s,
            )
            await self.poll_cancellations(list(snapshot.values()))
        await self.write_health()

    async def poll_cancellations(self, running: list[Running]) -> None:
        for job in running:
            flag: object = await self.redis.hget(status_key(job.request_id), "cancel_requested")
            if flag in ("1", b"1") and job.slot is not None:
                self.log.info("job_cancel_requested", request_id=job.request_id)
                job.slot.cancel()

    async def write_health(self) -> None:
        await self.redis.set(worker_health_key(self.consumer), repr(self), ex=HEALTH_TTL_S)

    # ------------------------------------------------------------------ maintenance

    async def maintain(self) -> None:
        moved = await ledger.move_due_retries(self.redis, maxlen=self.settings.streams.jobs_maxlen)
        if moved:
            self.log.info("retries_moved", count=moved)
        now = time.monotonic()
        if now - self._last_trim >= TRIM_INTERVAL_S:
            self._last_trim = now
            point = await group.trim(self.redis)
            removed = await group.remove_gone_consumers(self.redis, self.consumer)
            self.log.debug("stream_maintained", trim_minid=point, removed_consumers=removed)


def run_worker(settings: Settings, *, concurrency: int = 1, burst: bool = False) -> int:
    """Blocking entry point (`digits worker`, `python -m handwriting_ai.worker`): exit code 0
    after SIGTERM/SIGINT or, with `burst`, once the stream is drained."""
    asyncio.run(serve_worker(settings, concurrency=concurrency, burst=burst))
    return 0


async def serve_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    burst: bool = False,
    install_signals: bool = True,
    consumer: str | None = None,
) -> Worker:
    """Run a worker until SIGTERM/SIGINT (or, with `burst`, until the stream is drained)."""
    import signal

    redis = Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0", decode_responses=True)
    worker = Worker(settings, redis, concurrency=concurrency, burst=burst, consumer=consumer)
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await redis.aclose()
    return worker
