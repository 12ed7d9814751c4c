"""`digits watch`: a job's events in the terminal; the exit status says how the job ended."""

from __future__ import annotations

import io
import threading

import pytest

import stream_helpers
from handwriting_ai import cli, watch
from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM
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


def test_watch_cancelled_without_final_event_exits_1(redis_url: str) -> None:
    set_status(redis_url, "job-3", {"status": "cancelled"})
    assert _watch(redis_url, "job-3") == (1, "job ended: cancelled\n")


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
