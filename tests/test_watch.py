"""`digits watch`: a job's events in the terminal; the exit status says how the job ended."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import pytest
from redis.asyncio import Redis as AsyncRedis

import stream_helpers
from handwriting_ai import cli, watch
from handwriting_ai.api.app import create_app
from handwriting_ai.contracts.events import TrainFailed
from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM
from handwriting_ai.worker import Worker
from helpers import Artifact, make_settings
from redis_server import RedisServer
from stream_helpers import (
    batch,
    completed,
    epoch,
    failed,
    publish,
    set_status,
    started,
    sync_redis,
)
from tiny_mnist import write_tiny_mnist
from worker_support import (
    API_KEY,
    TINY_MODEL_ID,
    LiveApi,
    event_types,
    events,
    serve_app,
    wait_until_async,
    worker_env,
    worker_settings,
    xadd,
)

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url


def _watch(url: str, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = watch.main([*args, "--redis-url", url, "--timeout-s", "10"], out=out)
    return code, out.getvalue()


def test_watch_completed_job(redis_url: str) -> None:
    set_status(redis_url, "job-1", {"status": "running", "model_id": "mnist_digitnet_v1"})
    publish(redis_url, started("job-1"), batch("job-1", 1, 2), epoch("job-1", 1))
    publish(redis_url, batch("job-1", 2, 4), epoch("job-1", 2), completed("job-1"))
    code, text = _watch(redis_url, "job-1")
    assert code == 0
    assert "started: mnist_digitnet_v1, 2 epochs (attempt 1)\n" in text
    assert "\r██████░░░░░░░░░░░░░░░░░░  25.0%  epoch 1/2  batch 2/4  loss 0.6000" in text
    assert "\r████████████████████████ 100.0%  epoch 2/2  batch 4/4" in text
    assert "\repoch 1/2: train_loss 0.2500  val_acc 0.9700  1.5 s" in text
    assert text.endswith("completed: version 20250102T000000Z  val_acc 0.9800" + " " * 20 + "\n")


def test_watch_follows_live_and_fails(redis_url: str) -> None:
    set_status(redis_url, "job-2", {"status": "queued"})
    result: list[tuple[int, str]] = []
    follower = threading.Thread(target=lambda: result.append(_watch(redis_url, "job-2")))
    follower.start()
    publish(redis_url, started("job-2"), failed("job-2", will_retry=True))
    publish(redis_url, started("job-2"), failed("job-2"))
    follower.join(timeout=15)
    ((code, text),) = result
    assert code == 1
    assert "failed (system): out of memory (will retry)" in text
    assert text.endswith("failed (system): out of memory" + " " * 20 + "\n")


def test_watch_cancelled_without_final_event_exits_4(redis_url: str) -> None:
    set_status(redis_url, "job-3", {"status": "cancelled"})
    assert _watch(redis_url, "job-3") == (4, "job ended: cancelled\n")


def test_watch_failed_without_final_event_exits_1(redis_url: str) -> None:
    set_status(redis_url, "job-4", {"status": "dead"})
    assert _watch(redis_url, "job-4") == (1, "job ended: dead\n")


def test_watch_unknown_job_or_no_redis_exits_2(redis_url: str, redis_server: RedisServer) -> None:
    assert _watch(redis_url, "nope") == (2, "unknown job nope\n")
    code, text = _watch("redis://127.0.0.1:1/0", "job-1")
    assert code == 2
    assert text.startswith("redis unavailable at redis://127.0.0.1:1/0")


def test_digits_watch_from_the_command_line_waits_without_a_limit(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `digits watch ID` (no --timeout-s) must follow the job, not time out at once.
    monkeypatch.setenv("REDIS_URL", redis_url)
    set_status(redis_url, "job-cli", {"status": "running", "model_id": "mnist_digitnet_v1"})
    publish(redis_url, started("job-cli"))
    threading.Timer(1.0, lambda: publish(redis_url, completed("job-cli"))).start()
    assert cli.main(["watch", "job-cli"]) == 0
    assert "completed: version" in capsys.readouterr().out


def test_a_job_added_by_hand_is_followed_from_the_queue(redis_url: str) -> None:
    # `redis-cli XADD` gives no status until a worker takes the job: watch waits for one.
    client = sync_redis(redis_url)
    entry = str(client.xadd(JOBS_STREAM, {"model_id": "mnist_digitnet_v1", "epochs": "1"}))
    rid = f"job-{entry}"

    def worker_takes_it() -> None:
        set_status(redis_url, rid, {"status": "running", "model_id": "mnist_digitnet_v1"})
        publish(redis_url, started(rid), completed(rid))

    threading.Timer(1.5, worker_takes_it).start()
    code, text = _watch(redis_url, rid)
    assert code == 0, text
    assert text.startswith(f"queued: entry {entry} on digits:train, waiting for a worker\n")
    assert "completed: version" in text


def test_a_queued_job_with_its_own_request_id_is_found(redis_url: str) -> None:
    client = sync_redis(redis_url)
    client.xadd(JOBS_STREAM, {"model_id": "mnist_digitnet_v1", "request_id": "my-run-1"})
    done = (started("my-run-1"), completed("my-run-1"))
    threading.Timer(1.0, lambda: publish(redis_url, *done)).start()
    code, text = _watch(redis_url, "my-run-1")
    assert (code, text.splitlines()[0][:7]) == (0, "queued:")


def test_an_acknowledged_entry_whose_status_expired_is_unknown(redis_url: str) -> None:
    client = sync_redis(redis_url)
    entry = str(client.xadd(JOBS_STREAM, {"model_id": "mnist_digitnet_v1"}))
    client.xgroup_create(JOBS_STREAM, JOBS_GROUP, id="0")
    client.xreadgroup(JOBS_GROUP, "w-1", {JOBS_STREAM: ">"}, count=1)
    # Delivered, not acknowledged: still a job to run (a dead worker's is reclaimed), so wait.
    out = io.StringIO()
    code = watch.main([f"job-{entry}", "--redis-url", redis_url, "--timeout-s", "1.5"], out=out)
    assert (code, out.getvalue().splitlines()[0][:7]) == (3, "queued:")
    client.xack(JOBS_STREAM, JOBS_GROUP, entry)
    assert _watch(redis_url, f"job-{entry}") == (2, f"unknown job job-{entry}\n")


# --------------------------------------------------------------------------- cancelled


CANCELLED_LINE = "\rcancelled: cancelled by request" + " " * 20 + "\n"


@pytest.fixture
def api(model_dir: Path, seven_model: Artifact, redis_url: str) -> Iterator[LiveApi]:
    """The real app on uvicorn with the queue: jobs are cancelled through it, and a worker
    uploads to it."""
    extra = {"REDIS_URL": redis_url, "SECURITY__API_KEY": API_KEY}
    settings = make_settings(model_dir, [seven_model.model_id], extra)
    with serve_app(create_app(settings)) as url:
        yield LiveApi(url, model_dir)


def _http(api: LiveApi) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers={"X-Api-Key": API_KEY}, timeout=30)


def test_watch_a_job_cancelled_while_queued(redis_url: str, api: LiveApi) -> None:
    with _http(api) as http:
        job = {"request_id": "cq", "model_id": "mnist_digitnet_v1"}
        assert http.post("/v1/train", json=job).status_code == 202
        cancel = http.post("/v1/train/cq/cancel")
        assert (cancel.status_code, cancel.json()["status"]) == (202, "cancelled")
        # One added with `redis-cli XADD`, no status yet: cancelled the same way.
        entry = xadd(sync_redis(redis_url), {"model_id": "mnist_digitnet_v1"})
        by_hand = http.post(f"/v1/train/job-{entry}/cancel")
        assert (by_hand.status_code, by_hand.json()["status"]) == (202, "cancelled")
        assert http.get(f"/v1/train/job-{entry}").json()["status"] == "cancelled"
    assert _watch(redis_url, "cq") == (watch.EXIT_CANCELLED, CANCELLED_LINE)
    assert _watch(redis_url, f"job-{entry}") == (watch.EXIT_CANCELLED, CANCELLED_LINE)


def test_a_cancelled_event_from_before_the_cancelled_field_is_still_a_cancellation(
    redis_url: str,
) -> None:
    # An older API or worker wrote `failed (user)` without `cancelled`: the status decides.
    set_status(redis_url, "old", {"status": "cancelled"})
    old = attrs.evolve(failed("old"), error_kind="user", message="cancelled by request")
    publish(redis_url, old)
    assert _watch(redis_url, "old") == (4, CANCELLED_LINE)


@pytest.mark.slow
async def test_watch_a_job_cancelled_while_running(
    tmp_path: Path, redis_url: str, api: LiveApi
) -> None:
    data_root = write_tiny_mnist(tmp_path / "data")
    env = worker_env(redis_url, data_root, tmp_path, api, STREAMS__HEARTBEAT_INTERVAL_S="0.2")
    connection = AsyncRedis.from_url(redis_url, decode_responses=True)
    worker = Worker(worker_settings(env), connection)
    running = asyncio.create_task(worker.run())
    client = sync_redis(redis_url)
    try:
        async with httpx.AsyncClient(
            base_url=api.url, headers={"X-Api-Key": API_KEY}, timeout=30
        ) as http:
            job = {"request_id": "cr", "model_id": TINY_MODEL_ID, "epochs": 300, "batch_size": 32}
            assert (await http.post("/v1/train", json=job)).status_code == 202
            watching = asyncio.create_task(asyncio.to_thread(_watch, redis_url, "cr"))
            await wait_until_async(
                lambda: "epoch" in event_types(client, "cr"), timeout_s=60, what="training"
            )
            cancel = await http.post("/v1/train/cr/cancel")
            assert cancel.status_code == 202
            assert (cancel.json()["status"], cancel.json()["cancel_requested"]) == ("running", True)
            code, text = await asyncio.wait_for(watching, 30)
            assert (await http.get("/v1/train/cr")).json()["status"] == "cancelled"
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
        await connection.aclose()
    assert code == watch.EXIT_CANCELLED
    assert text.startswith("started: mnist_digitnet_tiny_v1")
    assert text.endswith(CANCELLED_LINE)
    assert "failed" not in text
    assert "completed" not in event_types(client, "cr")
    last = events(client, "cr")[-1]  # what any follower sees: the worker's final event
    assert isinstance(last, TrainFailed)
    assert (last.cancelled, last.error_kind, last.will_retry) == (True, "user", False)
