"""Two recoveries: Redis comes back empty (NOGROUP) and the worker re-creates its group and goes
on; an entry that keeps ending its workers (over the delivery cap) is dead-lettered, not retried."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from handwriting_ai.contracts.events import TrainFailed
from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM, status_key
from handwriting_ai.worker import Worker
from redis_server import running_redis
from tiny_mnist import write_tiny_mnist
from worker_support import (
    TINY_MODEL_ID,
    LiveApi,
    dead_letters,
    events,
    live_api,
    status,
    wait_until_async,
    worker_env,
    worker_settings,
    xadd,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    with live_api(tmp_path_factory.mktemp("api")) as served:
        yield served


def job(request_id: str) -> dict[str, str]:
    return {"model_id": TINY_MODEL_ID, "epochs": "1", "batch_size": "32", "request_id": request_id}


async def test_group_is_recreated_when_redis_comes_back_empty(
    tmp_path: Path, data_root: Path, api: LiveApi
) -> None:
    with running_redis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        settings = worker_settings(
            worker_env(server.url, data_root, tmp_path, api, STREAMS__RECLAIM_INTERVAL_S="0.2")
        )
        redis_async = Redis.from_url(server.url, decode_responses=True)
        worker = Worker(settings, redis_async, concurrency=1, burst=False)
        task = asyncio.create_task(worker.run())
        try:
            xadd(client, job("before"))
            await wait_until_async(
                lambda: status(client, "before").get("status") == "completed",
                timeout_s=90,
                what="the first job",
            )
            client.flushall()  # what a restarted Redis without persistence looks like
            xadd(client, job("after"))  # MKSTREAM-less: the group is gone
            await wait_until_async(
                lambda: status(client, "after").get("status") == "completed",
                timeout_s=90,
                what="the job added after Redis came back empty",
            )
            groups = client.xinfo_groups(JOBS_STREAM)
            assert [g["name"] for g in groups] == [JOBS_GROUP.encode()]
        finally:
            worker.stop()
            await asyncio.wait_for(task, 60)
            await redis_async.aclose()
            client.close()


async def test_a_job_whose_runs_keep_ending_their_worker_is_dead_lettered(
    tmp_path: Path, data_root: Path, api: LiveApi
) -> None:
    with running_redis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        client.xgroup_create(JOBS_STREAM, JOBS_GROUP, id="0", mkstream=True)
        xadd(client, job("poison"))
        # Four runs that ended their worker, the last one still marked running by a dead owner
        # (no lease): taking it over counts the fifth crash.
        client.xreadgroup(JOBS_GROUP, "ghost-4", {JOBS_STREAM: ">"}, count=1)
        ghost: dict[FieldT, EncodableT] = {"request_id": "poison", "status": "running"}
        ghost |= {"worker": "ghost-4", "attempts": "4", "crashes": "4", "model_id": TINY_MODEL_ID}
        client.hset(status_key("poison"), mapping=ghost)
        env = worker_env(
            server.url,
            data_root,
            tmp_path,
            api,
            STREAMS__HEARTBEAT_INTERVAL_S="0.1",
            STREAMS__CLAIM_MIN_IDLE_S="0.3",
            STREAMS__RECLAIM_INTERVAL_S="0.1",
            STREAMS__MAX_DELIVERIES="5",
        )
        assert await asyncio.wait_for(_run_until(env, client), 120)
        failed = [e for e in events(client, "poison") if isinstance(e, TrainFailed)]
        assert [(f.error_kind, f.will_retry) for f in failed] == [("system", False)]
        assert "ended the worker 5 times" in failed[0].message
        assert status(client, "poison")["status"] == "dead"
        assert [letter.request_id for letter in dead_letters(client)] == ["poison"]
        assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0
        client.close()


async def _run_until(env: dict[str, str], client: redis.Redis) -> bool:
    redis_async = Redis.from_url(env["REDIS_URL"], decode_responses=True)
    worker = Worker(worker_settings(env), redis_async, concurrency=1, burst=False)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until_async(
            lambda: status(client, "poison").get("status") == "dead",
            timeout_s=60,
            what="the poison entry to be dead-lettered",
        )
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)
        await redis_async.aclose()
    return True
