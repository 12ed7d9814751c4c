"""Admission control in front of the read threads: a read that cannot start in time is refused
at once (503 `overloaded`, `Retry-After`), never left to wait out its timeout for a 504.

Two bounds, both checked on the event loop before anything is queued:
- at most `queue` reads wait for a thread (`DIGITS__READ_QUEUE`), beyond those running;
- a read that would have to wait is refused when the reads ahead of it would leave it no time to
  run within `DIGITS__PREDICT_TIMEOUT_SECONDS`. How long they take is measured, not assumed: the
  interval between reads finishing while others waited (the rate the threads really drain the
  queue at, however busy the CPU is), or before any such moment the mean read time per thread.
A read whose deadline passes while it waits is cancelled before it starts, not computed: its
client already has its 504, and the thread goes on to a read that can still be answered.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from handwriting_ai.errors import OverloadedError, PredictTimeoutError

T = TypeVar("T")
# Weight of the newest read in the running mean: about the last 10 reads count.
_EWMA_ALPHA = 0.2


class ReadAdmission:
    def __init__(self, threads: int, queue: int, *, first_estimate_s: float = 0.005) -> None:
        self.threads = threads
        self.queue = queue
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="read")
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting; released when the thread is done with it
        self._mean_s = first_estimate_s  # until the first read is measured
        self._measured = False
        self._drain_s: float | None = None  # mean interval between completions under a queue
        self._last_done: float | None = None

    @property
    def admitted(self) -> int:
        """Reads holding a place: running on a thread or waiting for one."""
        return self._admitted

    def refusal(self, timeout_s: float) -> OverloadedError | None:
        """Why a read arriving now would be refused, or None when it can be admitted."""
        with self._lock:
            return self._refusal(timeout_s)

    def _refusal(self, timeout_s: float) -> OverloadedError | None:
        ahead = max(0, self._admitted - self.threads + 1)  # must wait: this one included
        per_read = self._mean_s / self.threads if self._drain_s is None else self._drain_s
        expected_start_s = ahead * per_read
        # A read that can start at once is always tried, whatever its timeout.
        if ahead > self.queue or (ahead and expected_start_s + self._mean_s > timeout_s):
            retry = max(1, math.ceil(expected_start_s))
            return OverloadedError(
                f"The service is at capacity ({self._admitted} reads in progress);"
                f" retry in {retry} s.",
                retry_after_s=retry,
            )
        return None

    def admit(self, timeout_s: float) -> Admitted:
        """A place for one read, taken before its upload is parsed so that a refusal costs
        nothing; 503 `overloaded` when there is none. Run it, or release it, exactly once."""
        with self._lock:
            refused = self._refusal(timeout_s)
            if refused is not None:
                raise refused
            self._admitted += 1
        return Admitted(self, timeout_s)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def _finished(self) -> None:
        """A read's thread is done with it (or it was cancelled before it started)."""
        now = time.monotonic()
        with self._lock:
            if self._admitted > self.threads and self._last_done is not None:
                interval = now - self._last_done  # others waited: the threads were never idle
                self._drain_s = (
                    interval
                    if self._drain_s is None
                    else self._drain_s + _EWMA_ALPHA * (interval - self._drain_s)
                )
            self._last_done = now
            self._admitted -= 1

    def _record(self, seconds: float) -> None:
        with self._lock:
            if self._measured:
                self._mean_s += _EWMA_ALPHA * (seconds - self._mean_s)
            else:
                self._mean_s, self._measured = seconds, True

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class Admitted:
    """One admitted read: `run` hands it to a read thread, `release` gives its place back if it
    never ran (the form was bad, the client went away). Either way the place is returned once."""

    def __init__(self, admission: ReadAdmission, timeout_s: float) -> None:
        self._admission = admission
        self._timeout_s = timeout_s
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission._release()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on a read thread, carrying the log context; 504 when it did not finish in
        time (waiting included)."""
        if not self._held:
            raise RuntimeError("an admitted read runs once")
        admission, timeout_s = self._admission, self._timeout_s
        ctx = contextvars.copy_context()

        def timed() -> T:
            started = time.monotonic()
            try:
                return fn()
            finally:
                admission._record(time.monotonic() - started)

        future = admission._executor.submit(ctx.run, timed)  # RuntimeError when stopping
        # From here the place is released when the thread is done (or the read was cancelled
        # before it started), not when the caller stops waiting: a read that times out still
        # holds its thread.
        self._held = False
        future.add_done_callback(lambda _: admission._finished())
        try:
            # On timeout, cancelling the wrapper cancels the executor's future: a read still
            # waiting for a thread never starts.
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            if future.done() and not future.cancelled():
                # It finished in time; only its hand-over to a busy event loop was late.
                return future.result()
            raise PredictTimeoutError(
                f"Prediction did not finish within {timeout_s:g} s."
            ) from None
