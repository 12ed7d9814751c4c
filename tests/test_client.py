"""`handwriting_ai.client` against the real app (uvicorn on a real socket) and a real Redis: every
method of both clients, errors typed from the service's real bodies, and the retry policy against
servers that fail once, drop the connection, refuse with a 4xx or never answer."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import stream_helpers
from client_support import (
    RELAY,
    Answer,
    Drop,
    Hang,
    cut_at_once,
    cutting_proxy,
    error_answer,
    scripted_server,
)
from handwriting_ai.api.app import create_app
from handwriting_ai.api.train import TrainStatus as ApiTrainStatus
from handwriting_ai.client import AsyncClient, Client, Reading, ServiceError, TrainStatus
from handwriting_ai.contracts.events import TrainCompleted, TrainFailed, TrainStarted
from handwriting_ai.contracts.jobs import TrainJob
from handwriting_ai.settings import load_settings
from handwriting_ai.streams.keys import JOBS_STREAM, job_events_key
from helpers import make_settings, png_bytes, seven, write_artifact
from redis_server import RedisServer
from stream_helpers import batch, completed, epoch, publish, started, sync_redis
from worker_support import serve_app

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url
API_KEY = "client-test-key"
MODEL = "mnist_digitnet_v1"
PROBS = [0.01, 0.02, 0.03, 0.8, 0.04, 0.02, 0.03, 0.02, 0.02, 0.01]
READING = json.dumps(
    {
        "digit": 3,
        "confidence": 0.8,
        "probs": PROBS,
        "model_id": "scripted",
        "uncertain": False,
        "visual_png_b64": None,
    }
).encode()


@pytest.fixture(scope="module")
def api_url(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app with an API key and Redis, one per module (each test empties Redis)."""
    model_dir = tmp_path_factory.mktemp("models")
    write_artifact(model_dir, "tiny_seven", seed=1, prefer=7)
    extra = {"REDIS_URL": redis_server.url, "SECURITY__API_KEY": API_KEY}
    with serve_app(create_app(make_settings(model_dir, ["tiny_seven"], extra))) as url:
        yield url


def _png_side(visual: str | None) -> tuple[int, int]:
    assert visual is not None
    image = Image.open(io.BytesIO(base64.b64decode(visual)))
    assert image.format == "PNG"
    return image.size


# --------------------------------------------------------------------------- reads


def test_read_bytes_a_path_and_a_str_path(api_url: str, tmp_path: Path) -> None:
    png = png_bytes(seven())
    path = tmp_path / "seven.png"
    path.write_bytes(png)
    with Client(api_url, api_key=API_KEY) as client:
        by_bytes = client.read(png, request_id="read-bytes-1")
        by_path = client.read(path)
        by_str = client.read(str(path))
    assert isinstance(by_bytes, Reading)
    assert by_bytes.digit == 7
    assert by_bytes.model_id == "tiny_seven"
    assert len(by_bytes.probs) == 10
    assert sum(by_bytes.probs) == pytest.approx(1.0, abs=1e-3)
    assert by_bytes.top(1) == [(7, by_bytes.confidence)]
    assert by_bytes.visual_png_b64 is None
    assert by_bytes.request_id == "read-bytes-1"  # the id sent is the one the service used
    assert by_path.probs == by_str.probs == by_bytes.probs
    assert by_path.request_id not in ("", by_str.request_id, by_bytes.request_id)


async def test_read_flags_reach_the_service(api_url: str) -> None:
    png = png_bytes(seven())
    async with AsyncClient(api_url, api_key=API_KEY) as client:
        auto = await client.read(png, visualize=True)
        not_inverted = await client.read(png, visualize=True, invert=False)
        inverted = await client.read(png, visualize=True, invert=True)
        centered = await client.read(png, visualize=True, center=True)
        uncentered = await client.read(png, visualize=True, center=False)
    assert _png_side(auto.visual_png_b64) == (28, 28)
    # Dark ink on paper: detection does not invert, so `invert=false` changes nothing and
    # `invert=true` reads the paper as ink; the service centres by default.
    assert not_inverted.visual_png_b64 == auto.visual_png_b64
    assert inverted.visual_png_b64 != auto.visual_png_b64
    assert centered.visual_png_b64 == auto.visual_png_b64
    assert uncentered.visual_png_b64 != auto.visual_png_b64


def test_service_errors_are_typed_from_the_real_bodies(api_url: str, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("not an image")
    with cutting_proxy(api_url, [RELAY] * 8) as proxy:
        with Client(proxy.url, api_key=API_KEY) as client:
            started_at = time.monotonic()
            with pytest.raises(ServiceError) as refused:
                client.read(note, request_id="text-file-1")
        unauthorized = _refused(proxy.url, api_key="wrong-key", request_id="wrong-key-1")
        elapsed_s = time.monotonic() - started_at
        sent = "".join(proxy.requests())
    assert refused.value.status == 415
    assert refused.value.code == "unsupported_media_type"
    assert refused.value.message == "Only PNG and JPEG images are accepted (got text/plain)."
    assert refused.value.request_id == "text-file-1"
    assert refused.value.retry_after_s is None
    assert unauthorized.status == 401
    assert unauthorized.code == "unauthorized"
    assert unauthorized.request_id == "wrong-key-1"
    # A 4xx is never retried: one request each, and no retry delay.
    assert sent.count("POST /v1/read ") == 2
    assert elapsed_s < 0.9


async def test_status_of_an_unknown_job_is_not_found(api_url: str, redis_url: str) -> None:
    async with AsyncClient(api_url, api_key=API_KEY) as client:
        with pytest.raises(ServiceError) as missing:
            await client.status("no-such-job")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert missing.value.request_id == "no-such-job"


# --------------------------------------------------------------------------- training


async def test_train_status_events_and_cancel_async(api_url: str, redis_url: str) -> None:
    async with AsyncClient(api_url, api_key=API_KEY) as client:
        accepted = await client.train({"model_id": MODEL, "epochs": 2, "user_id": 7})
        rid = accepted.request_id
        assert len(rid) == 32  # generated by the client, so a retry names the same job
        assert (accepted.status, accepted.duplicate) == ("queued", False)
        assert accepted.events_url == f"/v1/train/{rid}/events"
        again = await client.train({"request_id": rid, "model_id": MODEL, "epochs": 2})
        assert again.duplicate is True
        assert again.entry_id == accepted.entry_id

        status = await client.status(rid)
        assert isinstance(status, TrainStatus)
        assert (status.request_id, status.status, status.model_id) == (rid, "queued", MODEL)
        assert status.entry_id == accepted.entry_id

        # Replayed, then live: the iterator stops by itself after the final event.
        await asyncio.to_thread(publish, redis_url, started(rid), batch(rid, 1, 1))
        seen = []
        async for event in client.events(rid):
            seen.append(event)
            if len(seen) == 2:
                await asyncio.to_thread(
                    publish, redis_url, epoch(rid, 1), completed(rid, val_acc=0.97)
                )
        assert [e.type for e in seen] == [
            "digits.train.started.v1",
            "digits.train.batch.v1",
            "digits.train.epoch.v1",
            "digits.train.completed.v1",
        ]
        assert isinstance(seen[0], TrainStarted)
        assert seen[0].total_epochs == 2
        assert isinstance(seen[-1], TrainCompleted)
        assert seen[-1].val_acc == 0.97
        # From the middle: only what came after that id.
        ids = [entry_id for entry_id, _ in stream_helpers.xrange(redis_url, job_events_key(rid))]
        rest = [e.type async for e in client.events(rid, last_event_id=ids[1])]
        assert rest == ["digits.train.epoch.v1", "digits.train.completed.v1"]

        typed = await client.train(TrainJob(request_id="job-typed", model_id=MODEL, epochs=1))
        assert (typed.request_id, typed.status) == ("job-typed", "queued")
        cancelled = await client.cancel("job-typed")
        assert (cancelled.status, cancelled.cancel_requested) == ("cancelled", True)
        final = [e async for e in client.events("job-typed")]
        assert len(final) == 1
        assert isinstance(final[0], TrainFailed)
        assert (final[0].error_kind, final[0].message) == ("user", "cancelled by request")
        with pytest.raises(ServiceError) as conflict:
            await client.cancel("job-typed")
        assert (conflict.value.status, conflict.value.code) == (409, "conflict")


def test_train_status_events_and_cancel_sync(api_url: str, redis_url: str) -> None:
    with Client(api_url, api_key=API_KEY) as client:
        accepted = client.train(TrainJob(request_id="sync-1", model_id=MODEL, epochs=1))
        assert (accepted.request_id, accepted.status, accepted.duplicate) == (
            "sync-1",
            "queued",
            False,
        )
        assert client.status("sync-1").status == "queued"
        publish(redis_url, started("sync-1"), completed("sync-1"))
        assert [e.type for e in client.events("sync-1")] == [
            "digits.train.started.v1",
            "digits.train.completed.v1",
        ]
        client.train({"request_id": "sync-2", "model_id": MODEL})
        assert client.cancel("sync-2").status == "cancelled"
        assert [e.type for e in client.events("sync-2")] == ["digits.train.failed.v1"]


def test_a_lost_train_answer_is_retried_and_queues_one_job(api_url: str, redis_url: str) -> None:
    """The first attempt reaches the service, its answer is cut: the retry carries the same
    request_id, so the service answers `duplicate` and the stream holds one job."""
    with cutting_proxy(api_url, [cut_at_once]) as proxy:
        with Client(proxy.url, api_key=API_KEY) as client:
            accepted = client.train({"model_id": MODEL, "epochs": 1})
        requests = proxy.requests()
    assert accepted.duplicate is True
    assert len(requests) == 2
    bodies = [json.loads(r.partition("\r\n\r\n")[2]) for r in requests]
    assert bodies[0]["request_id"] == bodies[1]["request_id"] == accepted.request_id
    with sync_redis(redis_url) as redis:
        assert redis.xlen(JOBS_STREAM) == 1


def test_the_client_status_has_the_api_fields() -> None:
    import attrs

    assert {a.name for a in attrs.fields(TrainStatus)} == {
        a.name for a in attrs.fields(ApiTrainStatus)
    }


def test_from_settings_uses_the_api_url_and_key() -> None:
    settings = load_settings(
        {"HANDWRITING_API_URL": "http://127.0.0.1:1", "HANDWRITING_API_KEY": "k"}
    )
    with Client.from_settings(settings) as client:
        assert client.base_url == "http://127.0.0.1:1"
        with pytest.raises(ServiceError) as unreachable:
            client.status("x")
    assert (unreachable.value.status, unreachable.value.code) == (0, "unreachable")


# --------------------------------------------------------------------------- retry policy


def _refused(
    url: str, *, api_key: str = "", retry_delay_s: float = 1.0, request_id: str | None = None
) -> ServiceError:
    """The error a read of a seven ends with."""
    with Client(url, api_key=api_key, retry_delay_s=retry_delay_s) as client:
        try:
            client.read(png_bytes(seven()), request_id=request_id)
        except ServiceError as exc:
            return exc
    raise AssertionError("the read succeeded")


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_a_500_is_retried_once_a_second_later_with_the_same_request_id() -> None:
    with scripted_server(error_answer(500, "internal_error"), Answer(200, READING)) as server:
        client = Client(server.url, api_key="k")
        with client:
            reading = client.read(png_bytes(seven()), request_id="retry-500")
    assert reading.digit == 3
    assert reading.request_id == "retry-500"
    assert len(server.received) == 2
    assert 0.9 <= _gaps([r.at for r in server.received])[0] < 2.0
    assert [r.headers["x-request-id"] for r in server.received] == ["retry-500"] * 2
    assert [r.headers["x-api-key"] for r in server.received] == ["k"] * 2


async def test_a_dropped_connection_is_retried_once() -> None:
    with scripted_server(Drop(), Answer(200, READING)) as server:
        async with AsyncClient(server.url) as client:
            reading = await client.read(png_bytes(seven()))
    assert reading.digit == 3
    assert len(server.received) == 2
    assert "x-api-key" not in server.received[0].headers  # none configured: none sent
    assert 0.9 <= _gaps([r.at for r in server.received])[0] < 2.0


@pytest.mark.parametrize("status", [400, 401, 404, 409, 413, 415, 422])
def test_a_4xx_is_not_retried(status: int) -> None:
    with scripted_server(error_answer(status, "refused", "srv-1"), Answer(200, READING)) as server:
        refused = _refused(server.url, retry_delay_s=0.05)
    assert (refused.status, refused.code) == (status, "refused")
    assert refused.request_id == "srv-1"  # the body's id wins
    assert len(server.received) == 1


async def test_a_server_that_never_answers_times_out_after_one_retry() -> None:
    with scripted_server(Hang(5.0)) as server:
        async with AsyncClient(server.url, timeout_s=0.5, retry_delay_s=0.2) as client:
            started_at = time.monotonic()
            with pytest.raises(ServiceError) as timed_out:
                await client.status("slow")
            elapsed_s = time.monotonic() - started_at
    assert (timed_out.value.status, timed_out.value.code) == (0, "timeout")
    assert timed_out.value.request_id == "slow"
    assert len(server.received) == 2
    assert 1.1 <= elapsed_s < 2.5  # two timeouts and the delay between them


def test_retry_after_is_honoured_up_to_its_bound() -> None:
    busy = error_answer(503, "overloaded", **{"Retry-After": "2"})
    with scripted_server(busy, Answer(200, READING)) as server, Client(server.url) as client:
        client.read(png_bytes(seven()))
    assert 1.9 <= _gaps([r.at for r in server.received])[0] < 3.0

    too_long = error_answer(503, "overloaded", **{"Retry-After": "30"})
    with scripted_server(too_long, Answer(200, READING)) as server:
        refused = _refused(server.url)
    assert (refused.code, refused.retry_after_s) == ("overloaded", 30.0)
    assert len(server.received) == 1


def test_a_5xx_without_the_error_body_is_a_bad_response_after_one_retry() -> None:
    page = Answer(502, b"<html>Bad Gateway</html>")
    with scripted_server(page) as server:
        bad = _refused(server.url, retry_delay_s=0.05, request_id="proxy-502")
    assert (bad.status, bad.code, bad.request_id) == (
        502,
        "bad_response",
        "proxy-502",
    )
    assert "Bad Gateway" in bad.message
    assert len(server.received) == 2


def test_a_200_that_is_not_a_reading_is_a_bad_response() -> None:
    with scripted_server(Answer(200, b'{"digit": "seven"}')) as server:
        bad = _refused(server.url)
    assert (bad.status, bad.code) == (200, "bad_response")
    assert len(server.received) == 1
