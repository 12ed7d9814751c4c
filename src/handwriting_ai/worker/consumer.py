"""The worker: a consumer in `digits-workers` that reads new jobs AND reclaims dead workers' jobs.

Loops, all on one event loop that never blocks on torch:
- dispatch (here): for each free slot, the next entry from the `Intake` (our own pending entries,
  then a dead worker's, then new ones), run as a `JobRun` whose outcome is counted;
- heartbeat and maintenance: `Upkeep`, each step repeated by `_every`.

Stopping: the first SIGTERM/SIGINT stops reading and gives running jobs `shutdown_grace_s`; the
second (or the death of the parent that started us) kills the training children and exits at once.
Either way an unfinished job stays pending, and the next worker takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from handwriting_ai.contracts.events import now_iso
from handwriting_ai.logging import get_logger
from handwriting_ai.settings import Settings
from handwriting_ai.streams.keys import worker_health_key
from handwriting_ai.streams.publisher import EventPublisher
from handwriting_ai.worker import group, lifecycle
from handwriting_ai.worker.commit import commit
from handwriting_ai.worker.counts import JobCounts
from handwriting_ai.worker.delivery import consumer_name
from handwriting_ai.worker.group import Entry
from handwriting_ai.worker.inflight import InFlight
from handwriting_ai.worker.intake import CLEANUP_TIMEOUT_S, Intake, unless_stopping
from handwriting_ai.worker.job import JobRun, Outcome, Running, WorkerParts
from handwriting_ai.worker.lifecycle import Limits
from handwriting_ai.worker.metrics import WorkerMetrics
from handwriting_ai.worker.slots import Slot, SlotPool, SlotsBrokenError
from handwriting_ai.worker.upkeep import Upkeep
from handwriting_ai.worker.uploader import check_upload_key

__all__ = ["CLEANUP_TIMEOUT_S", "EXIT_BROKEN", "EXIT_CONFIG_ERROR", "Worker"]

log = get_logger(__name__)
ERROR_PAUSE_S = 0.5
FORCED_EXIT_AFTER_S = 3.0  # a forced stop that has not finished by then ends the process
EXIT_CONFIG_ERROR = 2
EXIT_BROKEN = 1


class Worker:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        *,
        concurrency: int = 1,
        burst: bool = False,
        consumer: str | None = None,
        crash_at: str = "",
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """`metrics`: the registry a metrics server reads; without one, the worker keeps its
        counters for nobody and skips the Redis reads that only the gauges need."""
        self.settings = settings
        self.redis = redis
        self.concurrency = max(1, concurrency)
        self.burst = burst
        self.consumer = consumer or consumer_name()
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.metrics.slots.set(self.concurrency)
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
            limits=Limits(
                result_ttl_s=streams.result_ttl_s,
                failure_ttl_s=streams.failure_ttl_s,
                events_maxlen=settings.events.maxlen,
            ),
            metrics=self.metrics,
            crash_at=crash_at,
        )
        self.pool = SlotPool(
            self.concurrency,
            log_level=settings.app.log_level,
            log_format=settings.app.log_format,
            fail_restart=crash_at == "slot_restart",
        )
        self.jobs = InFlight()
        self.stopping = asyncio.Event()
        self.forced = False
        self.exit_code = 0
        self.main_task: asyncio.Task[None] | None = None
        self.counts = JobCounts()
        self.log = log.bind(consumer=self.consumer)
        self.intake = Intake(
            redis,
            settings,
            consumer=self.consumer,
            jobs=self.jobs,
            metrics=self.metrics,
            stopping=self.stopping,
            burst=burst,
            log=self.log,
        )
        self.upkeep = Upkeep(
            self.parts,
            jobs=self.jobs,
            intake=self.intake,
            pool=self.pool,
            health=self.__repr__,
            watch_pending=metrics is not None,
            log=self.log,
        )

    def __repr__(self) -> str:
        return f"<Worker {self.consumer} {self.counts.summary()} j_ongoing={len(self.jobs.tasks)}>"

    # ------------------------------------------------------------------ stopping

    def stop(self) -> None:
        """SIGTERM/SIGINT: stop reading, running jobs get `shutdown_grace_s`; asked again, or
        after the parent is gone: stop at once."""
        if self.stopping.is_set():
            self.force("asked again")
            return
        self.log.info("worker_stopping", running=len(self.jobs.tasks))
        self.stopping.set()  # a blocked read is abandoned at once (`unless_stopping`)

    def force(self, reason: str) -> None:
        if self.forced:
            return
        self.log.warning("worker_stopping_now", reason=reason, running=len(self.jobs.tasks))
        self.forced = True
        self.stopping.set()
        self.pool.kill_all()
        for task in self.jobs.tasks.values():
            task.cancel()
        if self.main_task is not None:
            self.main_task.cancel()
        asyncio.get_running_loop().call_later(FORCED_EXIT_AFTER_S, os._exit, 1)

    def fatal(self, exit_code: int, message: str) -> None:
        self.log.error("worker_cannot_go_on", message=message, exit_code=exit_code)
        self.exit_code = exit_code
        self.stopping.set()

    # ------------------------------------------------------------------ main

    async def run(self) -> None:
        self.main_task = asyncio.current_task()
        background: list[asyncio.Task[None]] = []
        try:
            if await self.start():
                background = [
                    asyncio.create_task(self._every(self.heartbeat_s, self.upkeep.beat)),
                    asyncio.create_task(
                        self._every(self._maintenance_tick_s(), self.upkeep.maintain)
                    ),
                ]
                self.log.info("worker_started", concurrency=self.concurrency, burst=self.burst)
                await self.dispatch()
        except asyncio.CancelledError:
            if not self.stopping.is_set():
                raise
        finally:
            await self.shutdown(background)

    @property
    def heartbeat_s(self) -> float:
        return self.settings.streams.heartbeat_interval_s

    async def start(self) -> bool:
        """Check the upload key, create the group (waiting out a Redis that is not up yet) and
        warm the slots; False when the worker must not go on."""
        problem = await check_upload_key(
            self.settings.handwriting_api_url, self.settings.handwriting_api_key
        )
        if problem is not None:
            self.fatal(EXIT_CONFIG_ERROR, problem)
            return False
        delay_s = ERROR_PAUSE_S
        while not self.stopping.is_set():
            try:
                await group.ensure_group(self.redis)
                break
            except RedisError as exc:  # not up yet, or coming back: wait for it
                self.log.warning("redis_unavailable", step="start", error=str(exc))
                await asyncio.sleep(delay_s)
                delay_s = min(self.heartbeat_s, delay_s * 2)
        # Warming the slots imports torch (seconds): a stop meanwhile does not wait for it.
        if not await unless_stopping(self.pool.start(), self.stopping, False):
            return False
        with contextlib.suppress(RedisError):  # the heartbeat writes it again
            await self.upkeep.write_health()
        return not self.stopping.is_set()

    def _maintenance_tick_s(self) -> float:
        return max(0.05, min(1.0, self.settings.streams.reclaim_interval_s))

    async def _every(self, interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
            except ResponseError as exc:
                await self._on_response_error(exc)
            except RedisError as exc:
                self.intake.cut_off()
                self.log.warning("redis_error", step=step.__name__, error=str(exc))
            except Exception:  # a bug in one step must not silently end the heartbeat
                self.log.exception("step_failed", step=step.__name__)
            await asyncio.sleep(interval_s)

    async def _on_response_error(self, exc: ResponseError) -> None:
        self.intake.cut_off()
        if group.is_nogroup(exc):  # Redis came back empty: the group must exist again
            self.log.warning("group_missing", error=str(exc))
            await group.ensure_group(self.redis)
            self.intake.own_cursor = True
        else:
            self.log.warning("redis_error", error=str(exc))
            await asyncio.sleep(ERROR_PAUSE_S)

    async def shutdown(self, background: list[asyncio.Task[None]]) -> None:
        self.stopping.set()
        tasks = list(self.jobs.tasks.values())
        if tasks:
            grace_s = 0.0 if self.forced else self.settings.streams.shutdown_grace_s
            unfinished = set(tasks)
            if grace_s > 0:
                _, unfinished = await asyncio.wait(tasks, timeout=grace_s)
            for job_task in unfinished:
                job_task.cancel()  # kills the child; the entry stays pending for another worker
            if unfinished:
                await asyncio.wait(unfinished, timeout=CLEANUP_TIMEOUT_S * 2)
                self.log.warning("jobs_left_pending", count=len(unfinished))
        for task in background:
            task.cancel()
        if background:
            await asyncio.wait(background, timeout=CLEANUP_TIMEOUT_S)
        if not self.forced:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                    await self.pool.close()
        self.pool.kill_all()  # whatever close left (a no-op after a clean close)
        with contextlib.suppress(RedisError, TimeoutError):
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await self.redis.delete(worker_health_key(self.consumer))
                await group.drop_lease(self.redis, self.consumer)
        self.log.info("worker_stopped", worker=repr(self), exit_code=self.exit_code)

    # ------------------------------------------------------------------ dispatch

    async def _free_slot(self) -> Slot | None:
        while not self.stopping.is_set():
            slot = self.pool.try_acquire()
            if slot is not None:
                return slot
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self.stopping.wait()
        return None

    async def dispatch(self) -> None:
        while not self.stopping.is_set():
            slot = await self._free_slot()
            if slot is None:
                return
            entry: Entry | None = None
            deliveries = 1
            try:
                entry, deliveries = await self.intake.next_entry()
            except ResponseError as exc:
                await self._on_response_error(exc)
            except RedisError as exc:
                self.intake.cut_off()
                self.log.warning("redis_error", step="dispatch", error=str(exc))
                await asyncio.sleep(ERROR_PAUSE_S)
            if entry is None or self.stopping.is_set():
                self.pool.free.put_nowait(slot)  # an entry read now stays pending to us
                if self.burst and await self.intake.drained():
                    return
                continue
            self.start_job(entry, deliveries, slot)

    def start_job(self, entry: Entry, deliveries: int, slot: Slot) -> None:
        entry_id, fields = entry
        run = JobRun(self.parts, entry_id, fields, deliveries)
        running = Running(entry_id, run.ref.request_id)
        self.jobs.running[entry_id] = running
        self.jobs.runs[entry_id] = run
        self.jobs.tasks[entry_id] = asyncio.create_task(self._job(run, running, slot))
        self.metrics.running.set(len(self.jobs.tasks))

    async def _job(self, run: JobRun, running: Running, slot: Slot) -> Outcome:
        outcome: Outcome = "abandoned"
        freed = False

        async def free_slot() -> None:
            nonlocal freed
            if freed:
                return
            if self.stopping.is_set():
                slot.kill()
            else:
                await self.pool.release(slot)
            freed = True  # only once back in the pool: a cancelled restart is done again below

        try:
            outcome = await run.run(running, slot, free_slot)
        except asyncio.CancelledError:
            if running.entry_id in self.jobs.lost:
                run.log.warning("job_lost")
            else:
                run.log.warning("job_abandoned")
                await self._release(run)
            raise
        except SlotsBrokenError as exc:
            self.fatal(EXIT_BROKEN, str(exc))
        except Exception as exc:  # one job's error must never stop the worker
            # The entry stays pending to us; the heartbeat sees it held but not running and
            # dispatch reads it again (a crash once it had started, counted toward the cap).
            run.log.exception("job_crashed", error=f"{type(exc).__name__}: {exc}")
        finally:
            if not freed:
                freed = True
                slot.kill()
                if not self.stopping.is_set():
                    with contextlib.suppress(SlotsBrokenError):
                        await self.pool.release(slot)
            if running.entry_id in self.jobs.lost:
                outcome = "lost"
            self.jobs.remove(running.entry_id)
            self._count(outcome)
        return outcome

    async def _release(self, run: JobRun) -> None:
        """A stop left the run unfinished: status back to `queued` (best effort, bounded)."""
        if not run.started_run or self.forced:
            return
        with contextlib.suppress(RedisError, TimeoutError):
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await commit(
                    self.redis,
                    lifecycle.released(run.ref, now=now_iso()),
                    entry_id=run.entry_id,
                    consumer=self.consumer,
                )

    def _count(self, outcome: Outcome) -> None:
        """Every run ends here exactly once: the health line's tally and the metrics."""
        self.counts.add(outcome)
        self.metrics.job_ended(outcome)
        self.metrics.running.set(len(self.jobs.tasks))
