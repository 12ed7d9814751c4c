"""Test helpers for training over Redis: a shared throwaway server, events, SSE frames, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping

import pytest
import redis
from attrs import frozen
from redis.asyncio import Redis as AsyncRedis

from handwriting_ai.contracts.events import (
    TrainBatch,
    TrainCompleted,
    TrainEpoch,
    TrainEvent,
    TrainFailed,
    TrainStarted,
    now_iso,
)
from handwriting_ai.streams.follow import Entry, entries_of
from handwriting_ai.streams.publisher import EventPublisher
from handwriting_ai.streams.status import update_status
from redis_server import RedisServer, running_redis

SyncRedis = redis.Redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server, emptied for this test (and started again if a test stopped it)."""
    if not _alive(redis_server.url):
        redis_server.start()
    with SyncRedis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


def _alive(url: str) -> bool:
    try:
        with SyncRedis.from_url(url, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis.exceptions.ConnectionError:
        return False


def sync_redis(url: str) -> SyncRedis:
    return SyncRedis.from_url(url, decode_responses=True)


def xrange(url: str, key: str) -> list[Entry]:
    """A stream's entries, read as `redis-cli XRANGE key - +` would show them."""
    with sync_redis(url) as client:
        return entries_of(client.xrange(key))


def set_status(url: str, request_id: str, fields: Mapping[str, str | int | float]) -> None:
    """Write status fields as a worker does (`update_status`)."""

    async def go() -> None:
        client = AsyncRedis.from_url(url, decode_responses=True)
        try:
            await update_status(client, request_id, fields)
        finally:
            await client.aclose()

    asyncio.run(go())


def publish(url: str, *events: TrainEvent) -> None:
    """Publish as a worker does: `EventPublisher` onto `digits:events` and the job's stream."""

    async def go() -> None:
        client = AsyncRedis.from_url(url, decode_responses=True)
        try:
            publisher = EventPublisher(client, maxlen=1000, job_ttl_s=3600)
            for event in events:
                await publisher.publish(event)
        finally:
            await client.aclose()

    asyncio.run(go())


MODEL = "mnist_digitnet_v1"


def started(rid: str, model_id: str = MODEL) -> TrainStarted:
    return TrainStarted(request_id=rid, user_id=7, model_id=model_id, ts=now_iso(), total_epochs=2)


def batch(rid: str, epoch: int, number: int, model_id: str = MODEL) -> TrainBatch:
    return TrainBatch(
        request_id=rid,
        user_id=7,
        model_id=model_id,
        ts=now_iso(),
        epoch=epoch,
        total_epochs=2,
        batch=number,
        total_batches=4,
        batch_loss=0.5,
        batch_acc=0.8,
        avg_loss=0.6,
        samples_per_sec=1000.0,
    )


def epoch(rid: str, number: int, model_id: str = MODEL) -> TrainEpoch:
    return TrainEpoch(
        request_id=rid,
        user_id=7,
        model_id=model_id,
        ts=now_iso(),
        epoch=number,
        total_epochs=2,
        train_loss=0.25,
        val_acc=0.97,
        time_s=1.5,
    )


def completed(
    rid: str, model_id: str = MODEL, *, version: str = "20250102T000000Z", val_acc: float = 0.98
) -> TrainCompleted:
    return TrainCompleted(
        request_id=rid,
        user_id=7,
        model_id=model_id,
        ts=now_iso(),
        val_acc=val_acc,
        version=version,
    )


def failed(rid: str, model_id: str = MODEL, *, will_retry: bool = False) -> TrainFailed:
    return TrainFailed(
        request_id=rid,
        user_id=7,
        model_id=model_id,
        ts=now_iso(),
        error_kind="system",
        message="out of memory",
        will_retry=will_retry,
    )


@frozen
class Frame:
    event: str
    data: str
    id: str


def sse_frames(text: str) -> list[Frame]:
    """The events of an SSE body; comments (keep-alives) are skipped."""
    frames = []
    for block in text.split("\n\n"):
        lines = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if lines:
            frames.append(Frame(lines["event"], lines["data"], lines["id"]))
    return frames


def wait_for(check: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
