"""Workers as separate processes on a real Redis: a live long job is never taken by a second
worker, a `kill -9`ed worker's job is reclaimed and completed elsewhere, SIGTERM lets a short job
finish and leaves a long one pending for another worker."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM
from redis_server import running_redis
from tiny_mnist import write_tiny_mnist
from worker_support import (
    LiveApi,
    consumer_of,
    event_types,
    is_healthy,
    kill_group,
    live_api,
    start_worker_process,
    status,
    wait_until,
    worker_env,
)

pytestmark = pytest.mark.slow
FAST_RECLAIM = {
    "STREAMS__CLAIM_MIN_IDLE_S": "2",
    "STREAMS__HEARTBEAT_INTERVAL_S": "0.5",
    "STREAMS__RECLAIM_INTERVAL_S": "0.5",
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    with live_api(tmp_path_factory.mktemp("api")) as served:
        yield served


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        kill_group(process)


def test_live_job_is_never_reclaimed_and_a_killed_workers_job_is(
    tmp_path: Path, data_root: Path, api: LiveApi, workers: list[subprocess.Popen[bytes]]
) -> None:
    model_id = "mnist_digitnet_tiny_kill"
    with running_redis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        for name in ("a", "b"):
            env = worker_env(server.url, data_root, tmp_path / name, api, **FAST_RECLAIM)
            workers.append(start_worker_process(env))
        names = {consumer_of(p): p for p in workers}
        wait_until(
            lambda: all(is_healthy(client, n) for n in names), timeout_s=60, what="two workers"
        )
        client.xadd(
            JOBS_STREAM,
            # Long enough to still be running after the first epoch, 3 s and the kill on a fast
            # machine (45 epochs once finished first); short enough to finish once reclaimed.
            {"model_id": model_id, "epochs": "300", "batch_size": "32", "request_id": "long"},
        )
        wait_until(lambda: "epoch" in event_types(client, "long"), timeout_s=20, what="training")
        runner = status(client, "long")["worker"]
        # Longer than min-idle plus a few reclaim rounds of the idle worker: still started once.
        time.sleep(3.0)
        assert event_types(client, "long").count("started") == 1
        assert status(client, "long")["worker"] == runner

        kill_group(names[runner])
        killed_at = time.monotonic()
        wait_until(
            lambda: event_types(client, "long").count("started") == 2,
            timeout_s=20,
            what="the job to start again",
        )
        restarted_s = time.monotonic() - killed_at
        wait_until(
            lambda: status(client, "long").get("status") == "completed",
            timeout_s=120,
            what="the reclaimed job to complete",
        )
        assert status(client, "long")["worker"] != runner
        assert status(client, "long")["attempts"] == "2"
        assert len(api.versions(model_id)) == 1
        assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0
        print(f"kill -9 -> running elsewhere in {restarted_s:.1f} s (min idle 2 s)")
        client.close()


def test_sigterm_finishes_a_short_job_and_leaves_a_long_one_pending(
    tmp_path: Path, data_root: Path, api: LiveApi, workers: list[subprocess.Popen[bytes]]
) -> None:
    model_id = "mnist_digitnet_tiny_term"
    with running_redis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        env = worker_env(server.url, data_root, tmp_path / "a", api, **FAST_RECLAIM)
        graceful = start_worker_process(env)
        workers.append(graceful)
        client.xadd(
            JOBS_STREAM,
            {"model_id": model_id, "epochs": "8", "batch_size": "32", "request_id": "short"},
        )
        wait_until(lambda: "started" in event_types(client, "short"), timeout_s=60, what="start")
        graceful.send_signal(signal.SIGTERM)
        assert graceful.wait(60) == 0
        assert status(client, "short")["status"] == "completed"
        assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0

        hasty_env = {**env, "STREAMS__SHUTDOWN_GRACE_S": "0.2"}
        hasty = start_worker_process(hasty_env)
        workers.append(hasty)
        client.xadd(
            JOBS_STREAM,
            {"model_id": model_id, "epochs": "120", "batch_size": "32", "request_id": "cut"},
        )
        # Long enough that it cannot end within the grace, whatever the machine's load.
        wait_until(lambda: "batch" in event_types(client, "cut"), timeout_s=60, what="training")
        hasty.send_signal(signal.SIGTERM)
        assert hasty.wait(30) == 0
        # Released, not crashed: back to queued, the entry left pending (never acked).
        assert status(client, "cut")["status"] == "queued"
        assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 1

        workers.append(
            start_worker_process(
                worker_env(server.url, data_root, tmp_path / "c", api, **FAST_RECLAIM)
            )
        )
        wait_until(
            lambda: status(client, "cut").get("status") == "completed",
            timeout_s=120,
            what="another worker to complete the job",
        )
        assert event_types(client, "cut").count("started") == 2
        assert status(client, "cut")["crashes"] == "0"  # a stop is not a failure of the job
        client.close()
