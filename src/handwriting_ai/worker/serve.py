"""Run one worker as a process: its Redis client, its signals, its parent watch, its exit code.

`run_worker` blocks until the worker stops: exit code 0 after SIGTERM/SIGINT (or, with `burst`,
once the stream is drained), 2 for a configuration error (the API refuses the upload key, or the
metrics port cannot be bound), 1 when a training slot cannot be started again. Started by a
supervisor (`digits up` passes its pid), the worker also stops at once when that parent is gone,
whatever killed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from redis.asyncio import Redis
from redis.exceptions import RedisError

from handwriting_ai.logging import get_logger
from handwriting_ai.settings import Settings
from handwriting_ai.worker.consumer import CLEANUP_TIMEOUT_S, EXIT_CONFIG_ERROR, Worker
from handwriting_ai.worker.metrics import MetricsServer, WorkerMetrics

log = get_logger(__name__)


def run_worker(
    settings: Settings,
    *,
    concurrency: int = 1,
    burst: bool = False,
    crash_at: str = "",
    parent_pid: int | None = None,
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
) -> int:
    """Blocking entry point (`digits worker`, `python -m handwriting_ai.worker`)."""
    worker = asyncio.run(
        serve_worker(
            settings,
            concurrency=concurrency,
            burst=burst,
            crash_at=crash_at,
            parent_pid=parent_pid,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
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
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
) -> Worker:
    """Run a worker until SIGTERM/SIGINT (or, with `burst`, until the stream is drained), with
    its Prometheus metrics on `http://metrics_host:metrics_port/metrics` unless the port is 0."""
    import signal

    redis = Redis.from_url(
        settings.redis_url or "redis://127.0.0.1:6379/0",
        decode_responses=True,
        # Any bytes may arrive in an entry: they round-trip exactly instead of killing the read.
        encoding_errors="surrogateescape",
        socket_connect_timeout=5,
        socket_keepalive=True,
    )
    metrics = WorkerMetrics() if metrics_port else None
    worker = Worker(
        settings,
        redis,
        concurrency=concurrency,
        burst=burst,
        consumer=consumer,
        crash_at=crash_at,
        metrics=metrics,
    )
    server: MetricsServer | None = None
    if metrics is not None:
        try:
            server = MetricsServer(metrics, host=metrics_host, port=metrics_port)
        except OSError as exc:  # the port is taken, or the host is not ours
            worker.fatal(
                EXIT_CONFIG_ERROR, f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc}"
            )
            await _close(redis)
            return worker
        log.info("worker_metrics_serving", host=metrics_host, port=server.port)
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
        if server is not None:
            await asyncio.to_thread(server.close)
        await _close(redis)
    return worker


async def _close(redis: Redis) -> None:
    with contextlib.suppress(RedisError, TimeoutError):
        async with asyncio.timeout(CLEANUP_TIMEOUT_S):
            await redis.aclose()
