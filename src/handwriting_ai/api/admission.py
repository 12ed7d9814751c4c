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

Small quick reads skip the threads (`inline_ok`): a read of an image up to `INLINE_MAX_PIXELS`
runs on the event loop itself once such reads, with the ensemble now served, are measured quick
(`DIGITS__INLINE_READ_MS`). Handing a 1-2 ms read to a thread and back cost more than the read (a
thread wake-up, the GIL passed twice, a cold core). Big photos, slow models and a long queue
still go to the threads, where admission control applies. Figures in `ops/BENCHMARKS.md`.
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
# Reads of images up to this many source pixels (1024 x 1024: drawings, chat images, ~1000 px
# photos) may run on the event loop; a 12 MP photo's decode alone takes ~40 ms.
INLINE_MAX_PIXELS = 1 << 20
# Small reads measured, with the ensemble now served, before any runs on the loop: a slow model
# (or a new one) is timed on the threads first, so it never stalls the loop.
_INLINE_AFTER = 3


READS_WAITING_KEY = "handwriting_ai.reads_waiting"  # in the scope's state, set by the edge


class ReadsWaiting:
    """Reads whose requests have arrived (`digits serve`'s edge counts each one as its handler
    task is created) and have not yet reached the app: how deep the event loop's own queue of
    reads is, which the read threads' counts cannot see."""

    def __init__(self) -> None:
        self.count = 0

    def arrived_in_app(self) -> None:
        self.count -= 1


class ReadAdmission:
    def __init__(
        self,
        threads: int,
        queue: int,
        *,
        inline_max_s: float = 0.0,
        first_estimate_s: float = 0.005,
    ) -> None:
        self.threads = threads
        self.queue = queue
        self.inline_max_s = inline_max_s  # 0: every read runs on a thread
        # Small reads' running mean, and what it was measured with (the served ensemble).
        self._small_mean_s = 0.0
        self._small_n = 0
        self._small_key: object | None = None
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="read")
        self._lock = threading.Lock()
        self._admitted = 0  # running + waiting; released when the thread is done with it
        self._mean_s = first_estimate_s  # until the first read is measured
        self._measured = False
        self._drain_s: float | None = None  # mean interval between completions under a queue
        # The last completion, when a read was waiting for its thread then (so every thread
        # stayed busy from that moment on); None when none was.
        self._last_busy_done: float | None = None

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
        per_read = self._mean_s / self.threads
        if self._drain_s is not None:
            # Never slower than one thread alone: the threads finish reads at least that often.
            per_read = min(self._drain_s, self._mean_s)
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
            if self._last_busy_done is not None:
                # A read waited at the last completion, so no thread was idle since: this is
                # how fast the threads drain a queue. (Measured from any earlier completion, an
                # idle minute before a burst read as one slow read, and refused every read that
                # had to wait from then on.)
                interval = now - self._last_busy_done
                self._drain_s = (
                    interval
                    if self._drain_s is None
                    else self._drain_s + _EWMA_ALPHA * (interval - self._drain_s)
                )
            self._last_busy_done = now if self._admitted > self.threads else None
            self._admitted -= 1

    def _record(self, seconds: float) -> None:
        with self._lock:
            if self._measured:
                self._mean_s += _EWMA_ALPHA * (seconds - self._mean_s)
            else:
                self._mean_s, self._measured = seconds, True

    def inline_ok(
        self, pixels: int | None, cost_key: object, waiting: int, timeout_s: float
    ) -> bool:
        """Run this read on the event loop? Only a small image (`pixels`, from its header), once
        small reads with `cost_key` (the served ensemble) are measured at most `inline_max_s`
        (a 112 px PNG: ~1.5 ms), and while the `waiting` reads queued for the loop would be done
        within a quarter of the timeout. The loop then reads them one after another: cheaper
        than handing each to a thread and back. Slower reads (a ~900 px photo: ~4 ms) go to the
        threads even when alone: measured both ways, their parallelism (decode and OpenCV
        release the GIL) paid for the hand-over, and a photo on the loop held up the reads
        arriving behind it (`ops/BENCHMARKS.md`)."""
        if self.inline_max_s <= 0 or pixels is None or pixels > INLINE_MAX_PIXELS:
            return False
        with self._lock:
            if cost_key is not self._small_key or self._small_n < _INLINE_AFTER:
                return False
            mean = self._small_mean_s
        return mean <= self.inline_max_s and waiting * mean <= timeout_s / 4

    def record_small(self, seconds: float, cost_key: object) -> None:
        """A small read's CPU time, wherever it ran; a new ensemble starts a new mean."""
        with self._lock:
            if cost_key is not self._small_key:
                self._small_key, self._small_n = cost_key, 0
            if self._small_n == 0:
                self._small_mean_s = seconds
            else:
                self._small_mean_s += _EWMA_ALPHA * (seconds - self._small_mean_s)
            self._small_n += 1

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

    def run_inline(self, fn: Callable[[], T], *, cost_key: object | None = None) -> T:
        """Run `fn` here, on the event loop (see `ReadAdmission.inline_ok`); `cost_key`: a
        small read, whose cost is recorded under that key."""
        if not self._held:
            raise RuntimeError("an admitted read runs once")
        cpu = time.thread_time()
        try:
            result = fn()
        finally:
            self.release()
        if cost_key is not None:
            self._admission.record_small(time.thread_time() - cpu, cost_key)
        return result

    async def run(self, fn: Callable[[], T], *, cost_key: object | None = None) -> T:
        """Run `fn` on a read thread, carrying the log context; 504 when it did not finish in
        time (waiting included). `cost_key`: as for `run_inline`."""
        if not self._held:
            raise RuntimeError("an admitted read runs once")
        admission, timeout_s = self._admission, self._timeout_s
        ctx = contextvars.copy_context()

        def timed() -> T:
            started, cpu = time.monotonic(), time.thread_time()
            try:
                result = fn()
            finally:
                admission._record(time.monotonic() - started)
            if cost_key is not None:  # a read that failed is not a small read's cost
                # CPU time, not wall time: under load a thread waits for the GIL and the cores,
                # and those waits must not make a quick read look slow (it would never run on
                # the loop again).
                admission.record_small(time.thread_time() - cpu, cost_key)
            return result

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
