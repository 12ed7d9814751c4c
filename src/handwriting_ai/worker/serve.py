"""Run one worker as a process: its Redis client, its signals, its parent watch, its exit code.

`run_worker` blocks until the worker stops: exit code 0 after SIGTERM/SIGINT (or, with `burst`,
once the stream is drained), 2 for a configuration error (the API refuses the upload key), 1 when
a training slot cannot be started again. Started by a supervisor (`digits up` passes its pid), the
worker also stops at once when that parent is gone, whatever killed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from redis.asyncio import Redis
from redis.exceptions import RedisError

from handwriting_ai.settings import Settings
from handwriting_ai.worker.consumer import CLEANUP_TIMEOUT_S, Worker


def run_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    burst: bool = False,
    crash_at: str = "",
    parent_pid: int | None = None,
) -> int:
    """Blocking entry point (`digits worker`, `python -m handwriting_ai.worker`)."""
    worker = asyncio.run(
        serve_worker(
            settings,
            concurrency=concurrency,
            burst=burst,
            crash_at=crash_at,
            parent_pid=parent_pid,
        )
    )
    return worker.exit_code


async def _watch_parent(worker: Worker, parent_pid: int) -> None:
    """Started by a supervisor: when it is gone (re-parented), stop at once."""
    while True:  # polled: nothing else tells a process that its parent has died
        if os.getppid() != parent_pid:
            worker.force(f"parent process {parent_pid} is gone")
            return
        await asyncio.sleep(0.5)


async def serve_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    burst: bool = False,
    install_signals: bool = True,
    consumer: str | None = None,
    crash_at: str = "",
    parent_pid: int | None = None,
) -> Worker:
    """Run a worker until SIGTERM/SIGINT (or, with `burst`, until the stream is drained)."""
    import signal

    redis = Redis.from_url(
        settings.redis_url or "redis://127.0.0.1:6379/0",
        decode_responses=True,
        # Any bytes may arrive in an entry: they round-trip exactly instead of killing the read.
        encoding_errors="surrogateescape",
        socket_connect_timeout=5,
        socket_keepalive=True,
    )
    worker = Worker(
        settings,
        redis,
        concurrency=concurrency,
        burst=burst,
        consumer=consumer,
        crash_at=crash_at,
    )
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
    watcher = (
        asyncio.create_task(_watch_parent(worker, parent_pid)) if parent_pid is not None else None
    )
    try:
        await worker.run()
    finally:
        if watcher is not None:
            watcher.cancel()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        with contextlib.suppress(RedisError, TimeoutError):
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await redis.aclose()
    return worker
