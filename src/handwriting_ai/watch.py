"""`digits watch REQUEST_ID`: follow one training job's events in the terminal until it ends.

Reads the job's own event stream from its first event, then live. Exit status: 0 completed,
1 failed / dead, 2 unknown job or Redis unreachable, 3 `--timeout-s` passed, 4 cancelled (by
`POST /v1/train/{id}/cancel`, queued or running: the last line reads `cancelled: ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TextIO

import attrs
from redis.asyncio import Redis
from redis.exceptions import RedisError

from handwriting_ai.contracts.events import (
    TrainBatch,
    TrainBest,
    TrainCompleted,
    TrainEpoch,
    TrainEvent,
    TrainFailed,
    TrainStarted,
    TrainUpload,
)
from handwriting_ai.streams.follow import follow_job, job_known, queued_entry
from handwriting_ai.streams.status import read_status
from handwriting_ai.training.progress import overall_fraction, progress_bar

EXIT_COMPLETED, EXIT_FAILED, EXIT_UNKNOWN, EXIT_TIMEOUT, EXIT_CANCELLED = 0, 1, 2, 3, 4
_CLEAR = " " * 20  # wipes the tail of a longer bar line when a shorter line replaces it


def render(event: TrainEvent) -> str:
    """The text one event adds to the terminal; a batch redraws the bar in place (`\\r`)."""
    if isinstance(event, TrainBatch):
        frac = overall_fraction(event.epoch, event.total_epochs, event.batch, event.total_batches)
        return (
            f"\r{progress_bar(frac)} {frac * 100:5.1f}%  epoch {event.epoch}/{event.total_epochs}"
            f"  batch {event.batch}/{event.total_batches}  loss {event.avg_loss:.4f}"
        )
    if isinstance(event, TrainStarted):
        return f"started: {event.model_id}, {event.total_epochs} epochs (attempt {event.attempt})\n"
    if isinstance(event, TrainEpoch):
        return (
            f"\repoch {event.epoch}/{event.total_epochs}: train_loss {event.train_loss:.4f}"
            f"  val_acc {event.val_acc:.4f}  {event.time_s:.1f} s{_CLEAR}\n"
        )
    if isinstance(event, TrainBest):
        return f"  new best: val_acc {event.val_acc:.4f} at epoch {event.epoch}\n"
    if isinstance(event, TrainUpload):
        return f"uploaded: HTTP {event.status}, model {event.model_bytes} bytes\n"
    if isinstance(event, TrainCompleted):
        return f"\rcompleted: version {event.version}  val_acc {event.val_acc:.4f}{_CLEAR}\n"
    if isinstance(event, TrainFailed) and event.cancelled:
        return f"\rcancelled: {event.message}{_CLEAR}\n"
    if isinstance(event, TrainFailed):
        retry = " (will retry)" if event.will_retry else ""
        return f"\rfailed ({event.error_kind}): {event.message}{retry}{_CLEAR}\n"
    return ""


QUEUED_POLL_S = 0.5


async def _wait_for_a_worker(redis: Redis, request_id: str, out: TextIO) -> bool:
    """A job still waiting in `digits:train` has no status or events yet: say so and wait until
    a worker takes it. False when there is no such job (or its entry went away)."""
    said = False
    while not await job_known(redis, request_id):
        entry_id = await queued_entry(redis, request_id)
        if entry_id is None:
            return False
        if not said:
            out.write(f"queued: entry {entry_id} on digits:train, waiting for a worker\n")
            out.flush()
            said = True
        await asyncio.sleep(QUEUED_POLL_S)
    return True


async def watch(redis: Redis, request_id: str, out: TextIO) -> int:
    if not await _wait_for_a_worker(redis, request_id, out):
        out.write(f"unknown job {request_id}\n")
        return EXIT_UNKNOWN
    async for entry in follow_job(redis, request_id):
        if entry is None or entry.event is None:
            continue
        event = entry.event
        if entry.final and isinstance(event, TrainFailed) and not event.cancelled:
            event = await _cancelled_by_status(redis, event)
        out.write(render(event))
        out.flush()
        if isinstance(event, TrainCompleted):
            return EXIT_COMPLETED
        if isinstance(event, TrainFailed) and not event.will_retry:
            return EXIT_CANCELLED if event.cancelled else EXIT_FAILED
    # The stream ended without a final event: the job's status says how it ended.
    status = await read_status(redis, request_id)
    final = "gone" if status is None else status.status
    out.write(f"job ended: {final}\n")
    return _EXIT_BY_STATUS.get(final, EXIT_FAILED)


_EXIT_BY_STATUS = {"completed": EXIT_COMPLETED, "cancelled": EXIT_CANCELLED}


async def _cancelled_by_status(redis: Redis, event: TrainFailed) -> TrainFailed:
    """A final failure whose job's status says `cancelled` is a cancellation, even when its
    event predates the `cancelled` field (written by an older API or worker)."""
    status = await read_status(redis, event.request_id)
    if status is None or status.status != "cancelled":
        return event
    return attrs.evolve(event, cancelled=True)


async def _main(request_id: str, url: str, timeout_s: float | None, out: TextIO) -> int:
    redis = Redis.from_url(url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10)
    try:
        return await asyncio.wait_for(watch(redis, request_id, out), timeout_s)
    except TimeoutError:
        out.write(f"\ntimed out after {timeout_s:g} s\n")
        return EXIT_TIMEOUT
    except (RedisError, OSError) as exc:
        out.write(f"redis unavailable at {url}: {exc}\n")
        return EXIT_UNKNOWN
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout  # looked up per call, so a redirected stdout is honoured
    parser = argparse.ArgumentParser(prog="digits watch", description=__doc__)
    parser.add_argument("request_id")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--timeout-s", type=float, default=None)
    args = parser.parse_args(argv)
    url: str = args.redis_url
    if not url:
        out.write("no Redis: set REDIS_URL or pass --redis-url\n")
        return EXIT_UNKNOWN
    request_id: str = args.request_id
    timeout_s: float | None = args.timeout_s
    if timeout_s is not None and timeout_s <= 0:
        timeout_s = None  # 0 = no limit, as `digits watch --help` says
    return asyncio.run(_main(request_id, url, timeout_s, out))
