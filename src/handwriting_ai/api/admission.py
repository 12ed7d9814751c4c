"""Admission control in front of the read threads: a read that cannot start in time is refused
at once (503 `overloaded`, `Retry-After`), never left to wait out its timeout for a 504.

Two bounds, both checked on the event loop before anything is queued:
- at most `queue` reads wait for a thread (`DIGITS__READ_QUEUE`), beyond those running;
- a read that would have to wait is refused when the reads ahead of it, at the recent mean read
  time, would leave it no time to run within `DIGITS__PREDICT_TIMEOUT_SECONDS`.
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
from concurrent.futures import Future, ThreadPoolExecutor
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

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def waiting(self) -> int:
        return max(0, self._admitted - self.threads)

    @property
    def mean_read_s(self) -> float:
        return self._mean_s

    def _admit(self, timeout_s: float) -> None:
        with self._lock:
            ahead = max(0, self._admitted - self.threads + 1)  # must wait: this one included
            expected_start_s = ahead * self._mean_s / self.threads
            # A read that can start at once is always tried, whatever its timeout.
            if ahead > self.queue or (ahead and expected_start_s + self._mean_s > timeout_s):
                retry = max(1, math.ceil(expected_start_s))
                raise OverloadedError(
                    f"The service is at capacity ({self._admitted} reads in progress);"
                    f" retry in {retry} s.",
                    retry_after_s=retry,
                )
            self._admitted += 1

    def _release(self, _: Future[T]) -> None:
        with self._lock:
            self._admitted -= 1

    def _record(self, seconds: float) -> None:
        with self._lock:
            if self._measured:
                self._mean_s += _EWMA_ALPHA * (seconds - self._mean_s)
            else:
                self._mean_s, self._measured = seconds, True

    async def run(self, fn: Callable[[], T], *, timeout_s: float) -> T:
        """Run `fn` on a read thread, carrying the log context; 503 at once when it would not
        start in time, 504 when it did not finish in time."""
        self._admit(timeout_s)
        ctx = contextvars.copy_context()

        def timed() -> T:
            started = time.monotonic()
            try:
                return fn()
            finally:
                self._record(time.monotonic() - started)

        try:
            future = self._executor.submit(ctx.run, timed)
        except RuntimeError:  # shut down: stopping
            with self._lock:
                self._admitted -= 1
            raise
        # Released when the thread is done (or the read was cancelled before it started), not
        # when the caller stops waiting: a read that times out still holds its thread.
        future.add_done_callback(self._release)
        try:
            # On timeout, cancelling the wrapper cancels the executor's future: a read still
            # waiting for a thread never starts.
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            raise PredictTimeoutError(
                f"Prediction did not finish within {timeout_s:g} s."
            ) from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
