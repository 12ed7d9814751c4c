"""Promises of the streams worker, each checked from outside against real Redis, real HTTP and
real workers (on the test's event loop, or as processes where one must die):

- a job cancelled while queued is never started, and its entry is acknowledged;
- a job cancelled while its worker was dead is not started again by the worker that takes it;
- `EVENTS__ENABLED=false` stops batch and epoch events, never the lifecycle ones or the status;
- `EVENTS__MAXLEN` keeps `digits:events` near its cap (`XADD … MAXLEN ~`) at every moment;
- `STREAMS__RETRY_INTERVALS_S` delays each retry by its interval, not less and not much more;
- a job's ending and its `XACK` are one step: no observer ever sees a final status written by
  a worker while the entry is still pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType

import httpx
import pytest
import redis
from redis.asyncio import Redis

import stream_helpers
from handwriting_ai.api.app import create_app
from handwriting_ai.contracts.events import TrainEvent, TrainFailed, TrainStarted, decode_event
from handwriting_ai.streams.keys import EVENTS_STREAM, JOBS_GROUP, JOBS_STREAM, status_key
from handwriting_ai.worker import Worker, serve_worker
from helpers import make_settings, write_artifact
from redis_server import RedisServer
from tiny_mnist import write_tiny_mnist
from worker_support import (
    API_KEY,
    LiveApi,
    consumer_of,
    event_types,
    events,
    is_healthy,
    kill_group,
    serve_app,
    start_worker_process,
    status,
    wait_until,
    wait_until_async,
    worker_env,
    worker_settings,
    xadd,
)

pytestmark = pytest.mark.slow
redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url
FINAL = frozenset({"completed", "failed", "dead", "cancelled"})
BURST_TIMEOUT_S = 180.0
# A dead worker's entry is taken 3.5 to 4.5 s after its death (more under load): room for
# the test's cancel request to land first.
FAST_RECLAIM = {
    "STREAMS__CLAIM_MIN_IDLE_S": "4",
    "STREAMS__HEARTBEAT_INTERVAL_S": "0.5",
    "STREAMS__RECLAIM_INTERVAL_S": "0.5",
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[LiveApi]:
    """The real app on uvicorn with the queue (REDIS_URL) and uploads (the API key): jobs are
    queued and cancelled through it, and workers upload to it."""
    model_dir = tmp_path_factory.mktemp("api") / "models"
    model_dir.mkdir()
    write_artifact(model_dir, "tiny_seven", seed=1, prefer=7)
    extra = {"SECURITY__API_KEY": API_KEY, "REDIS_URL": redis_server.url}
    with serve_app(create_app(make_settings(model_dir, ["tiny_seven"], extra))) as url:
        yield LiveApi(url, model_dir)


@pytest.fixture
def http(api: LiveApi) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers={"X-Api-Key": API_KEY}, timeout=30) as client:
        yield client


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connection:
        yield connection


class LedgerWatch:
    """Polls Redis every 20 ms from a thread. In one MULTI it reads the watched jobs' status
    hashes and the group's pending entries, so each observation is one instant: a final status
    (written by a worker) whose entry is still pending means the ending and its XACK were not
    one step. Also records the largest `XLEN digits:events` seen."""

    def __init__(self, url: str, request_ids: Sequence[str]) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.request_ids = list(request_ids)
        self.broken: list[str] = []
        self.max_events_len = 0
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LedgerWatch:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            # NOGROUP before a worker made the group: nothing is pending yet, nothing to see.
            with contextlib.suppress(redis.RedisError):
                self._observe()
            self._stop.wait(0.02)

    def _observe(self) -> None:
        with self.client.pipeline(transaction=True) as pipe:
            for request_id in self.request_ids:
                pipe.hgetall(status_key(request_id))
            pipe.xlen(EVENTS_STREAM)
            pipe.xpending_range(JOBS_STREAM, JOBS_GROUP, min="-", max="+", count=1000)
            replies = pipe.execute()
        *statuses, events_len, pending_rows = replies
        self.rounds += 1
        self.max_events_len = max(self.max_events_len, int(events_len))
        pending = {str(row["message_id"]) for row in pending_rows}
        for request_id, fields in zip(self.request_ids, statuses, strict=True):
            state, entry_id = fields.get("status"), fields.get("entry_id", "")
            if state in FINAL and entry_id in pending:
                seen = f"{request_id}: status {state!r} while its entry {entry_id} is pending"
                if seen not in self.broken:
                    self.broken.append(seen)

    def assert_atomic(self) -> None:
        assert self.rounds > 10, f"the watch observed only {self.rounds} times"
        assert not self.broken, self.broken


def shared_events(client: redis.Redis, request_id: str) -> list[TrainEvent]:
    """The job's events as `digits:events` holds them."""
    found = []
    for _, raw in client.xrange(EVENTS_STREAM) or []:
        event = decode_event({_text(k): _text(v) for k, v in (raw or {}).items()})
        if event.request_id == request_id:
            found.append(event)
    return found


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def short(event: TrainEvent) -> str:
    return event.type.removeprefix("digits.train.").removesuffix(".v1")


def at(event: TrainEvent) -> datetime:
    return datetime.fromisoformat(event.ts.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- cancellation


async def test_a_job_cancelled_while_queued_is_never_started(
    tmp_path: Path, data_root: Path, api: LiveApi, client: redis.Redis, redis_url: str
) -> None:
    model_id = "mnist_digitnet_tiny_cancelq"
    headers = {"X-Api-Key": API_KEY}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30) as http:
        job = {"request_id": "cq", "model_id": model_id, "batch_size": 32}
        queued = await http.post("/v1/train", json=job)
        assert queued.status_code == 202, queued.text
        entry_id = queued.json()["entry_id"]
        cancel = await http.post("/v1/train/cq/cancel")
        assert cancel.status_code == 202, cancel.text
        assert cancel.json()["status"] == "cancelled"

        env = worker_env(redis_url, data_root, tmp_path, api)
        worker = await asyncio.wait_for(
            serve_worker(worker_settings(env), burst=True, install_signals=False), BURST_TIMEOUT_S
        )
        assert (await http.get("/v1/train/cq")).json()["status"] == "cancelled"

    # The worker did take the entry (the group delivered it) and acknowledged it...
    (group,) = client.xinfo_groups(JOBS_STREAM)
    assert _text(group["last-delivered-id"]) == entry_id
    assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0
    # ... without starting it or writing a second ending: the only event is the API's.
    assert event_types(client, "cq") == ["failed"]
    final = status(client, "cq")
    assert (final["status"], final["attempts"], final.get("worker", "")) == ("cancelled", "0", "")
    assert api.versions(model_id) == []
    assert not list((tmp_path / "artifacts").rglob("model.pt"))
    assert "j_skipped=1" in repr(worker)


def test_a_job_cancelled_while_its_worker_was_dead_is_not_started_again(
    tmp_path: Path,
    data_root: Path,
    api: LiveApi,
    http: httpx.Client,
    client: redis.Redis,
    redis_url: str,
) -> None:
    """The API can only flag a running job; if its worker dies before acting on the flag, the
    worker that takes the entry over must end it `cancelled`, not train it again."""
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("a", "b"):
            env = worker_env(redis_url, data_root, tmp_path / name, api, **FAST_RECLAIM)
            workers.append(start_worker_process(env))
        names = {consumer_of(p): p for p in workers}
        wait_until(
            lambda: all(is_healthy(client, n) for n in names), timeout_s=90, what="two workers"
        )
        job = {"request_id": "orphan", "model_id": "mnist_digitnet_tiny_orphan", "epochs": 300}
        assert http.post("/v1/train", json={**job, "batch_size": 32}).status_code == 202
        wait_until(
            lambda: "started" in event_types(client, "orphan"), timeout_s=60, what="the start"
        )
        runner = status(client, "orphan")["worker"]
        kill_group(names[runner])
        with LedgerWatch(redis_url, ["orphan"]) as watch:
            asked = http.post("/v1/train/orphan/cancel")
            assert asked.status_code == 202, asked.text
            assert (asked.json()["status"], asked.json()["cancel_requested"]) == ("running", True)
            wait_until(
                lambda: status(client, "orphan").get("status") == "cancelled",
                timeout_s=60,
                what="the survivor to end the job",
            )
        watch.assert_atomic()
        assert event_types(client, "orphan").count("started") == 1
        assert status(client, "orphan")["attempts"] == "1"
        last = events(client, "orphan")[-1]
        assert isinstance(last, TrainFailed)
        assert (last.message, last.will_retry) == ("cancelled by request", False)
        assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0
        assert api.versions("mnist_digitnet_tiny_orphan") == []
    finally:
        for process in workers:
            kill_group(process)


# --------------------------------------------------------------------------- events settings


async def test_events_disabled_stops_progress_events_only(
    tmp_path: Path, data_root: Path, api: LiveApi, client: redis.Redis, redis_url: str
) -> None:
    model_id = "mnist_digitnet_tiny_quiet"
    xadd(client, {"request_id": "quiet", "model_id": model_id, "epochs": "2", "batch_size": "32"})
    env = worker_env(
        redis_url, data_root, tmp_path, api, EVENTS__ENABLED="false", EVENTS__BATCH_EVERY="1"
    )
    with LedgerWatch(redis_url, ["quiet"]) as watch:
        await asyncio.wait_for(
            serve_worker(worker_settings(env), burst=True, install_signals=False),
            BURST_TIMEOUT_S,
        )
    watch.assert_atomic()
    own = event_types(client, "quiet")
    shared = [short(e) for e in shared_events(client, "quiet")]
    assert own == shared
    assert "batch" not in own, own
    assert "epoch" not in own, own
    assert "best" in own  # a lifecycle step of training, not progress
    assert [t for t in own if t != "best"] == [
        "started", "artifact", "upload", "prune", "completed",
    ]  # fmt: skip
    final = status(client, "quiet")
    assert (final["status"], final["attempts"]) == ("completed", "1")
    assert json.loads(final["result"])["version"] in api.versions(model_id)
    # The status still follows the training (GET /v1/train/{id} shows it).
    assert json.loads(final["progress"]) == {"epoch": 2, "total_epochs": 2}
    assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0


MAXLEN = 20
NODE_ENTRIES = 5  # `stream-node-max-entries`: MAXLEN ~ trims whole nodes of this many entries
MALFORMED = 10


async def test_events_maxlen_keeps_the_shared_stream_near_its_cap(
    tmp_path: Path, data_root: Path, api: LiveApi, client: redis.Redis, redis_url: str
) -> None:
    """`XADD … MAXLEN ~ N` removes whole macro nodes only: the stream never drops below N and
    stays under N + (entries per node). Progress events (the publisher) and lifecycle events
    (the fenced commits) both trim; a job's own stream keeps all of its events."""
    model_id = "mnist_digitnet_tiny_capped"
    node_default = _text(client.config_get("stream-node-max-entries")["stream-node-max-entries"])
    client.config_set("stream-node-max-entries", NODE_ENTRIES)
    try:
        xadd(client, {"request_id": "cap", "model_id": model_id, "epochs": "6", "batch_size": "32"})
        # Jobs that fail before training: each writes one lifecycle event, nothing else.
        bad = [xadd(client, {"model_id": model_id, "epochs": "x"}) for _ in range(MALFORMED)]
        env = worker_env(
            redis_url,
            data_root,
            tmp_path,
            api,
            EVENTS__MAXLEN=str(MAXLEN),
            EVENTS__BATCH_EVERY="1",
        )
        with LedgerWatch(redis_url, ["cap"]) as watch:
            await asyncio.wait_for(
                serve_worker(worker_settings(env), burst=True, install_signals=False),
                BURST_TIMEOUT_S,
            )
    finally:
        client.config_set("stream-node-max-entries", node_default)
    watch.assert_atomic()
    own = event_types(client, "cap")
    published = len(own) + MALFORMED
    assert published > 2 * (MAXLEN + NODE_ENTRIES), own  # enough to overflow the cap twice
    assert (own[0], own[-1]) == ("started", "completed")  # the job's own stream is whole
    assert status(client, "cap")["status"] == "completed"
    assert watch.max_events_len < MAXLEN + NODE_ENTRIES
    assert MAXLEN <= client.xlen(EVENTS_STREAM) < MAXLEN + NODE_ENTRIES
    # The oldest entries went; the newest stayed: the last malformed job's failure.
    ((_, newest),) = client.xrevrange(EVENTS_STREAM, count=1) or []
    assert json.loads(_text((newest or {})[b"event"]))["request_id"] == f"job-{bad[-1]}"
    assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0


# --------------------------------------------------------------------------- retries

RETRY_INTERVALS_S = (2.0, 6.0)
RETRY_SLACK_S = 3.0  # a retry is moved within one maintenance tick (0.2 s); the rest is load


async def test_retries_wait_their_interval(
    tmp_path: Path, data_root: Path, api: LiveApi, client: redis.Redis, redis_url: str
) -> None:
    """A job past `STREAMS__JOB_TIMEOUT_S` fails (a system failure) and is retried: the n-th
    retry starts no sooner than the n-th interval after the failure, and not much later. A run
    that timed out has its slot's process killed and started again (seconds under load): with
    one slot per run, no retry waits for that."""
    xadd(
        client,
        {"request_id": "again", "model_id": "mnist_digitnet_tiny_again", "epochs": "300"},
    )
    env = worker_env(
        redis_url,
        data_root,
        tmp_path,
        api,
        STREAMS__JOB_TIMEOUT_S="1",
        STREAMS__RETRY_INTERVALS_S=",".join(str(s) for s in RETRY_INTERVALS_S),
        STREAMS__RECLAIM_INTERVAL_S="0.2",
    )
    connection = Redis.from_url(redis_url, decode_responses=True)
    worker = Worker(worker_settings(env), connection, concurrency=3)
    running = asyncio.create_task(worker.run())
    try:
        with LedgerWatch(redis_url, ["again"]) as watch:
            await wait_until_async(
                lambda: status(client, "again").get("status") == "dead",
                timeout_s=120,
                what="three runs and two retries",
            )
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
        await connection.aclose()
    watch.assert_atomic()
    seen = events(client, "again")
    starts = [e for e in seen if isinstance(e, TrainStarted)]
    failures = [e for e in seen if isinstance(e, TrainFailed)]
    assert [short(e) for e in seen if short(e) in ("started", "failed")] == [
        "started", "failed", "started", "failed", "started", "failed",
    ]  # fmt: skip
    assert [(f.attempt, f.will_retry) for f in failures] == [(1, True), (2, True), (3, False)]
    for n, interval in enumerate(RETRY_INTERVALS_S):
        gap = (at(starts[n + 1]) - at(failures[n])).total_seconds()
        # Timestamps have millisecond resolution: hence the 2 ms.
        assert interval - 0.002 <= gap <= interval + RETRY_SLACK_S, (n + 1, interval, gap)
    assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0
