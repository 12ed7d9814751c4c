"""The worker: a consumer in `digits-workers` that reads new jobs AND reclaims dead workers' jobs.

Loops, all on one event loop that never blocks on torch:
- dispatch: for each free slot, take our own pending entries first (a restart, or a job of ours
  that ended without an outcome), then a dead worker's entry (`group.suspects` -> a confirmation
  window -> `group.claim`), then new entries (XREADGROUP `>`);
- heartbeat: renew our lease, XCLAIM our in-flight entries (idle time stays low), cancel a run
  whose entry another worker took, refresh the per-job locks and the health key, and pass on
  cancellation requests;
- maintenance: move due retries back onto the stream, trim it, forget consumers that are gone.

Stopping: the first SIGTERM/SIGINT stops reading and gives running jobs `shutdown_grace_s`; the
second (or the death of the parent that started us) kills the training children and exits at once.
Either way an unfinished job stays pending, and the next worker takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from handwriting_ai.contracts.events import now_iso
from handwriting_ai.logging import get_logger
from handwriting_ai.settings import Settings
from handwriting_ai.streams.keys import HEALTH_TTL_S, status_key, worker_health_key
from handwriting_ai.streams.publisher import EventPublisher
from handwriting_ai.worker import group, ledger, lifecycle
from handwriting_ai.worker.commit import commit
from handwriting_ai.worker.delivery import SuspectTracker, consumer_name
from handwriting_ai.worker.group import Entry
from handwriting_ai.worker.job import JobRun, Outcome, Running, WorkerParts
from handwriting_ai.worker.lifecycle import Limits
from handwriting_ai.worker.slots import Slot, SlotPool, SlotsBrokenError
from handwriting_ai.worker.uploader import check_upload_key

log = get_logger(__name__)
T = TypeVar("T")
TRIM_INTERVAL_S = 30.0
ERROR_PAUSE_S = 0.5
CLEANUP_TIMEOUT_S = 2.0
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
            limits=Limits(
                result_ttl_s=streams.result_ttl_s,
                failure_ttl_s=streams.failure_ttl_s,
                events_maxlen=settings.events.maxlen,
            ),
            crash_at=crash_at,
        )
        self.pool = SlotPool(
            self.concurrency,
            log_level=settings.app.log_level,
            log_format=settings.app.log_format,
            fail_restart=crash_at == "slot_restart",
        )
        # A lease outlives a few missed heartbeats; a dead owner's entries are suspect after it.
        self.lease_ms = int(streams.heartbeat_interval_s * 2000)
        self.confirm_window_s = streams.heartbeat_interval_s * 2
        self.suspects = SuspectTracker()
        self.own_cursor = True  # read our own pending entries (from the start) before new ones
        self.running: dict[str, Running] = {}
        self.runs: dict[str, JobRun] = {}
        self.tasks: dict[str, asyncio.Task[Outcome]] = {}
        self.lost: set[str] = set()
        self.stopping = asyncio.Event()
        self.forced = False
        self.exit_code = 0
        self.main_task: asyncio.Task[None] | None = None
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

    # ------------------------------------------------------------------ stopping

    def stop(self) -> None:
        """SIGTERM/SIGINT: stop reading, running jobs get `shutdown_grace_s`; asked again, or
        after the parent is gone: stop at once."""
        if self.stopping.is_set():
            self.force("asked again")
            return
        self.log.info("worker_stopping", running=len(self.tasks))
        self.stopping.set()  # a blocked read is abandoned at once (`_unless_stopping`)

    def force(self, reason: str) -> None:
        if self.forced:
            return
        self.log.warning("worker_stopping_now", reason=reason, running=len(self.tasks))
        self.forced = True
        self.stopping.set()
        self.pool.kill_all()
        for task in self.tasks.values():
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
                    asyncio.create_task(self._every(self.heartbeat_s, self.beat)),
                    asyncio.create_task(self._every(self._maintenance_tick_s(), self.maintain)),
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
        if not await self._unless_stopping(self.pool.start(), False):
            return False
        with contextlib.suppress(RedisError):  # the heartbeat writes it again
            await self.write_health()
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
                self.suspects.reset()  # we were cut off too: what we saw says nothing
                self.log.warning("redis_error", step=step.__name__, error=str(exc))
            except Exception:  # a bug in one step must not silently end the heartbeat
                self.log.exception("step_failed", step=step.__name__)
            await asyncio.sleep(interval_s)

    async def _on_response_error(self, exc: ResponseError) -> None:
        self.suspects.reset()
        if group.is_nogroup(exc):  # Redis came back empty: the group must exist again
            self.log.warning("group_missing", error=str(exc))
            await group.ensure_group(self.redis)
            self.own_cursor = True
        else:
            self.log.warning("redis_error", error=str(exc))
            await asyncio.sleep(ERROR_PAUSE_S)

    async def shutdown(self, background: list[asyncio.Task[None]]) -> None:
        self.stopping.set()
        tasks = list(self.tasks.values())
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
                self.suspects.reset()
                self.log.warning("redis_error", step="dispatch", error=str(exc))
                await asyncio.sleep(ERROR_PAUSE_S)
            if entry is None or self.stopping.is_set():
                self.pool.free.put_nowait(slot)  # an entry read now stays pending to us
                if self.burst and await self._drained():
                    return
                continue
            self.start_job(entry, deliveries, slot)

    async def _unless_stopping(self, step: Awaitable[T], default: T) -> T:
        """The step's result, or `default` if a stop comes first: the step is then cancelled (an
        entry a read was handed stays pending to us, and the lease we drop on exit frees it)."""
        running = asyncio.ensure_future(step)
        stopped = asyncio.ensure_future(self.stopping.wait())
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

    async def _drained(self) -> bool:
        """Burst mode ends when nothing runs, no retry is waiting and nothing is new. The stream
        is asked last: a retry moved onto it after our empty read is then still seen."""
        if self.tasks or await ledger.pending_retries(self.redis) > 0:
            return False
        return not await group.has_undelivered(self.redis)

    async def _own_pending(self) -> Entry | None:
        own = await group.read_own_pending(self.redis, self.consumer, count=100)
        fresh = [e for e in own if e[0] not in self.running]
        if fresh:
            return fresh[0]
        self.own_cursor = False
        return None

    async def _reclaim(self) -> Entry | None:
        started = time.monotonic()
        found = await group.suspects(self.redis, self.consumer)
        now = time.monotonic()
        if now - started > self.heartbeat_s:
            self.suspects.reset()  # a stalled round trip (a paused Redis): we saw nothing
            return None
        self.suspects.observe(found, now)
        for entry_id, owner in self.suspects.confirmed(now, self.confirm_window_s):
            if entry_id in self.running:
                continue
            self.suspects.forget(entry_id)
            entry = await group.claim(
                self.redis,
                self.consumer,
                entry_id,
                owner=owner,
                min_idle_ms=int(self.settings.streams.claim_min_idle_s * 1000),
            )
            if entry is not None:
                self.log.info("entry_reclaimed", entry_id=entry_id, owner=owner)
                return entry
        return None

    async def next_entry(self, last_reclaim: float) -> tuple[Entry | None, int, float]:
        if self.own_cursor:
            own = await self._own_pending()
            if own is not None:
                return own, await group.deliveries(self.redis, own[0]), last_reclaim
        now = time.monotonic()
        if now - last_reclaim >= self.settings.streams.reclaim_interval_s:
            last_reclaim = now
            entry = await self._reclaim()
            if entry is not None:
                return entry, await group.deliveries(self.redis, entry[0]), last_reclaim
        block_ms = int(
            min(self.settings.streams.block_ms, self.settings.streams.reclaim_interval_s * 1000)
        )
        if self.burst:
            block_ms = min(block_ms, 100)
        new = await self._unless_stopping(
            group.read_new(self.redis, self.consumer, count=1, block_ms=max(1, block_ms)), []
        )
        if new:
            return new[0], 1, last_reclaim
        return None, 1, last_reclaim

    def start_job(self, entry: Entry, deliveries: int, slot: Slot) -> None:
        entry_id, fields = entry
        run = JobRun(self.parts, entry_id, fields, deliveries)
        running = Running(entry_id, run.ref.request_id)
        self.running[entry_id] = running
        self.runs[entry_id] = run
        self.tasks[entry_id] = asyncio.create_task(self._job(run, running, slot))

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
            if running.entry_id in self.lost:
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
            self.running.pop(running.entry_id, None)
            self.runs.pop(running.entry_id, None)
            self.tasks.pop(running.entry_id, None)
            self.lost.discard(running.entry_id)
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
        # A run that wrote its ending no longer holds its entry, even while its slot restarts.
        snapshot = {e: r for e, r in self.running.items() if not self._ended(e)}
        mine, held = await group.heartbeat(
            self.redis, self.consumer, snapshot, lease_ms=self.lease_ms
        )
        for entry_id in snapshot:
            task = self.tasks.get(entry_id)
            if entry_id not in mine and task is not None and not task.done():
                # Another worker took the entry (we were frozen past its checks): it runs it now,
                # and our fenced writes would be refused anyway.
                self.log.warning("entry_lost", entry_id=entry_id)
                self.lost.add(entry_id)
                task.cancel()
        if held - set(self.running):
            self.own_cursor = True  # ours but not running: a job that ended without an outcome
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

    def _ended(self, entry_id: str) -> bool:
        run = self.runs.get(entry_id)
        return run is not None and run.ended

    async def poll_cancellations(self, running: list[Running]) -> None:
        for job in running:
            flag: object = await self.redis.hget(status_key(job.request_id), "cancel_requested")
            if flag in ("1", b"1") and job.slot is not None:
                self.log.info("job_cancel_requested", request_id=job.request_id)
                job.slot.cancel()

    async def write_health(self) -> None:
        if self.pool.broken:
            return  # no healthy line for a worker that cannot train
        await self.redis.set(worker_health_key(self.consumer), repr(self), ex=HEALTH_TTL_S)

    # ------------------------------------------------------------------ maintenance

    async def maintain(self) -> None:
        moved = await ledger.move_due_retries(self.redis)
        if moved:
            self.log.info("retries_moved", count=moved)
        now = time.monotonic()
        if now - self._last_trim >= TRIM_INTERVAL_S:
            self._last_trim = now
            point = await group.trim(self.redis)
            removed = await group.remove_gone_consumers(self.redis, self.consumer)
            self.log.debug("stream_maintained", trim_minid=point, removed_consumers=removed)
