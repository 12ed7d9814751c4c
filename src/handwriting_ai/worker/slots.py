"""The training slots: one long-lived spawned subprocess per slot, killable and replaceable.

The parent reads each slot's Pipe with `loop.add_reader`, so waiting for torch never blocks the
event loop; a child that dies (crash, OOM kill, our own kill on timeout) shows up as `ChildGone`.
Each run has its own token and `run` yields only answers tagged with it: a late answer of an
earlier run is dropped. A slot whose child cannot be started again is not lost silently: after
`RESTART_TRIES` failures the pool is broken, and the worker exits so that its supervisor restarts
it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import AsyncGenerator
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING

from attrs import frozen

from handwriting_ai.logging import get_logger
from handwriting_ai.training.progress import BatchProgress, BestProgress, EpochProgress
from handwriting_ai.worker.child import (
    Answer,
    ChildDone,
    ChildError,
    ChildJob,
    ChildReady,
    Tagged,
    child_main,
)

if TYPE_CHECKING:
    from handwriting_ai.worker.child import ParentConn

log = get_logger(__name__)
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 5.0
CLOSE_WAIT_S = 0.5
RESTART_TRIES = 3
RESTART_DELAYS_S = (1.0, 2.0, 4.0)


class SlotsBrokenError(RuntimeError):
    """A training slot could not be started again: the worker must exit and be restarted."""


@frozen
class ChildGone:
    """The subprocess ended (or its pipe broke) before answering."""

    exitcode: int | None


Progress = BatchProgress | EpochProgress | BestProgress
Outcome = ChildDone | ChildError | ChildGone


class Slot:
    """One training subprocess. `run` yields its progress and ends with exactly one outcome."""

    def __init__(
        self,
        index: int,
        ctx: SpawnContext,
        *,
        log_level: str,
        log_format: str,
        fail_restart: bool = False,
    ) -> None:
        self.index = index
        self.ctx = ctx
        self.log_level = log_level
        self.log_format = log_format
        self.fail_restart = fail_restart  # fault injection: children after the first never start
        self.cancel_event: Event = ctx.Event()
        self.process: SpawnProcess | None = None
        self.conn: ParentConn | None = None
        self.queue: asyncio.Queue[ChildReady | Tagged | ChildGone] = asyncio.Queue()
        self.jobs_run = 0
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _on_readable(self, conn: ParentConn) -> None:
        try:
            while conn.poll():
                message: object = conn.recv()
                if isinstance(message, ChildReady | Tagged):
                    self.queue.put_nowait(message)
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            process = self.process
            self.queue.put_nowait(ChildGone(process.exitcode if process else None))

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Spawn the child and wait until it has imported torch and said `ChildReady`."""
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        self.cancel_event.clear()
        self.starts += 1
        fail_start = self.fail_restart and self.starts > 1
        process = self.ctx.Process(
            target=child_main,
            args=(child_conn, self.cancel_event, self.log_level, self.log_format, fail_start),
            name=f"digits-slot-{self.index}",
            daemon=True,
        )
        process.start()
        child_conn.close()  # only the child holds its end, so its death reads as EOF here
        self.process, self.conn = process, parent_conn
        self.queue = asyncio.Queue()
        asyncio.get_running_loop().add_reader(parent_conn.fileno(), self._on_readable, parent_conn)
        first = await asyncio.wait_for(self.queue.get(), timeout_s)
        if not isinstance(first, ChildReady):
            raise RuntimeError(f"training slot {self.index} failed to start: {first!r}")
        log.info("slot_ready", slot=self.index, pid=first.pid)

    async def run(self, job: ChildJob) -> AsyncGenerator[Progress | Outcome, None]:
        """The run's progress, then exactly one outcome. The caller kills the slot if it stops
        reading before the outcome (timeout, cancellation): the child must not go on training."""
        conn = self.conn
        if conn is None:
            yield ChildGone(None)
            return
        self.cancel_event.clear()
        self.jobs_run += 1
        try:
            conn.send(job)
        except OSError:
            yield ChildGone(self.process.exitcode if self.process else None)
            return
        while True:
            received = await self.queue.get()
            if isinstance(received, ChildReady):
                continue
            if isinstance(received, Tagged):
                if received.token != job.token:
                    log.warning("stale_answer_dropped", slot=self.index, token=received.token)
                    continue
                message: Answer | ChildGone = received.message
            else:
                message = received
            yield message
            if isinstance(message, ChildDone | ChildError | ChildGone):
                return

    def cancel(self) -> None:
        self.cancel_event.set()

    def kill(self) -> None:
        """SIGKILL the child now (timeout, shutdown): its job is abandoned, not acknowledged."""
        process, conn = self.process, self.conn
        self.process, self.conn = None, None
        if conn is not None:
            # Already removed when the pipe broke: nothing to undo then.
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(conn.fileno())
            conn.close()
        if process is not None and process.is_alive():
            process.kill()
        if process is not None:
            process.join(STOP_TIMEOUT_S)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    async def restart(self) -> None:
        self.kill()
        await self.start()

    async def close(self) -> None:
        """Ask the child to stop; kill it if it has not within a moment (an idle child holds
        nothing worth waiting for, and a stop must be quick)."""
        process, conn = self.process, self.conn
        if conn is not None:
            with contextlib.suppress(OSError):  # already dead: kill() below tidies up
                conn.send(None)
        if process is not None:
            # join() blocks: run it off the loop, bounded.
            await asyncio.to_thread(process.join, CLOSE_WAIT_S)
        self.kill()


class SlotPool:
    """`concurrency` slots, started and warmed before the first job; `acquire` waits for one."""

    def __init__(
        self, concurrency: int, *, log_level: str, log_format: str, fail_restart: bool = False
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.slots = [
            Slot(i, ctx, log_level=log_level, log_format=log_format, fail_restart=fail_restart)
            for i in range(concurrency)
        ]
        self.free: asyncio.Queue[Slot] = asyncio.Queue()
        self.broken = False

    async def start(self) -> bool:
        """Start and warm every slot; True once all are ready."""
        await asyncio.gather(*(slot.start() for slot in self.slots))
        for slot in self.slots:
            self.free.put_nowait(slot)
        return True

    @property
    def free_count(self) -> int:
        return self.free.qsize()

    def try_acquire(self) -> Slot | None:
        try:
            return self.free.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def acquire(self) -> Slot:
        return await self.free.get()

    async def release(self, slot: Slot) -> None:
        """Back to the free list, replaced first if its child died or was killed. Raises
        `SlotsBrokenError` (and marks the pool broken) when it cannot be replaced."""
        if not slot.alive:
            for attempt, delay_s in enumerate(RESTART_DELAYS_S[:RESTART_TRIES], start=1):
                try:
                    await slot.restart()
                    break
                except (RuntimeError, TimeoutError, OSError) as exc:
                    log.error(
                        "slot_restart_failed", slot=slot.index, attempt=attempt, error=str(exc)
                    )
                    slot.kill()
                    await asyncio.sleep(delay_s)
            else:
                self.broken = True
                raise SlotsBrokenError(
                    f"training slot {slot.index} could not be started {RESTART_TRIES} times"
                )
        self.free.put_nowait(slot)

    def kill_all(self) -> None:
        """SIGKILL every child now (a forced stop)."""
        for slot in self.slots:
            slot.kill()

    async def close(self) -> None:
        await asyncio.gather(*(slot.close() for slot in self.slots), return_exceptions=True)
