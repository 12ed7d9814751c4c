"""System failures and cancellation with a worker on the test's own event loop: a job past
`STREAMS__JOB_TIMEOUT_S` is retried with backoff, then dead-lettered; a running job whose status
hash gets `cancel_requested=1` stops between batches and ends `cancelled`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from handwriting_ai.contracts.events import TrainFailed
from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM, RETRY_ZSET, status_key
from handwriting_ai.worker import Worker, serve_worker
from redis_server import running_redis
from tiny_mnist import write_tiny_mnist
from worker_support import (
    TINY_MODEL_ID,
    LiveApi,
    dead_letters,
    event_types,
    events,
    live_api,
    status,
    wait_until_async,
    worker_env,
    worker_settings,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    with live_api(tmp_path_factory.mktemp("api")) as served:
        yield served


async def test_timeout_is_a_system_failure_retried_twice_then_dead(
    tmp_path: Path, data_root: Path, api: LiveApi
) -> None:
    with running_redis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        client.xadd(
            JOBS_STREAM,
            {"model_id": TINY_MODEL_ID, "epochs": "300", "batch_size": "32", "request_id": "slow"},
        )
        env = worker_env(
            server.url,
            data_root,
            tmp_path,
            api,
            STREAMS__JOB_TIMEOUT_S="1",
            STREAMS__RETRY_INTERVALS_S="0.2,0.2",
            STREAMS__RECLAIM_INTERVAL_S="0.2",
        )
        worker = await asyncio.wait_for(
            serve_worker(worker_settings(env), burst=True, install_signals=False), 120
        )
        failed = [e for e in events(client, "slow") if isinstance(e, TrainFailed)]
        assert [(f.attempt, f.will_retry, f.error_kind) for f in failed] == [
            (1, True, "system"),
            (2, True, "system"),
            (3, False, "system"),
        ]
        assert "longer than 1 s" in failed[-1].message
        assert event_types(client, "slow").count("started") == 3
        final = status(client, "slow")
        assert (final["status"], final["attempts"], final["error_kind"]) == ("dead", "3", "system")
        letters = dead_letters(client)
        assert [letter.request_id for letter in letters] == ["slow"]
        assert client.zcard(RETRY_ZSET) == 0
        assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0
        assert "j_retried=2" in repr(worker)
        client.close()


async def test_cancel_flag_stops_a_running_job(
    tmp_path: Path, data_root: Path, api: LiveApi
) -> None:
    with running_redis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        env = worker_env(server.url, data_root, tmp_path, api, STREAMS__HEARTBEAT_INTERVAL_S="0.2")
        connection = Redis.from_url(server.url, decode_responses=True)
        worker = Worker(worker_settings(env), connection)
        running = asyncio.create_task(worker.run())
        try:
            client.xadd(
                JOBS_STREAM,
                {"model_id": TINY_MODEL_ID, "epochs": "300", "batch_size": "32", "request_id": "c"},
            )
            await wait_until_async(
                lambda: "epoch" in event_types(client, "c"), timeout_s=60, what="training"
            )
            client.hset(status_key("c"), "cancel_requested", "1")  # what the API does
            await wait_until_async(
                lambda: status(client, "c").get("status") == "cancelled",
                timeout_s=20,
                what="the job to stop",
            )
            last = events(client, "c")[-1]
            assert isinstance(last, TrainFailed)
            assert (last.error_kind, last.message, last.will_retry) == (
                "user",
                "cancelled by request",
                False,
            )
            assert "completed" not in event_types(client, "c")
            assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0
            assert client.ttl(status_key("c")) > 0
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)
            await connection.aclose()
            client.close()
