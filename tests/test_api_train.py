"""Training over HTTP against a real Redis: queue, status, SSE replay and live, cancel, outage."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis as AsyncRedis

import stream_helpers
from conftest import Serve
from handwriting_ai.api.event_hub import EventHub
from handwriting_ai.api.events_sse import event_stream
from handwriting_ai.streams.keys import JOBS_STREAM, job_events_key
from helpers import (
    Artifact,
    Client,
    assert_error,
    json_of,
    make_settings,
    png_bytes,
    post_read,
    seven,
)
from redis_server import RedisServer
from stream_helpers import (
    batch,
    completed,
    epoch,
    failed,
    publish,
    set_status,
    sse_frames,
    started,
    sync_redis,
    xrange,
)

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url
JOB = {"request_id": "job-1", "model_id": "mnist_digitnet_v1", "epochs": 2, "user_id": 9}


def _serve(serve: Serve, model_dir: Path, url: str, extra: dict[str, str] | None = None) -> Client:
    return serve(make_settings(model_dir, ["tiny_seven"], {"REDIS_URL": url, **(extra or {})}))


def _body(response: httpx.Response) -> dict[str, object]:
    body = json_of(response)
    assert isinstance(body, dict), body
    return {str(k): v for k, v in body.items()}


def test_train_queues_a_job_with_flat_fields(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    response = client.post("/v1/train", json=JOB)
    assert response.status_code == 202, response.text
    body = _body(response)
    entry_id = body["entry_id"]
    assert body == {
        "request_id": "job-1",
        "entry_id": entry_id,
        "status": "queued",
        "duplicate": False,
        "status_url": "/v1/train/job-1",
        "events_url": "/v1/train/job-1/events",
    }
    entries = xrange(redis_url, JOBS_STREAM)
    assert entries == [
        (
            entry_id,
            {
                "type": "digits.train.v1",
                "request_id": "job-1",
                "user_id": "9",
                "model_id": "mnist_digitnet_v1",
                "epochs": "2",
                "batch_size": "0",
                "lr": "0.003",
                "seed": "42",
                "augment": "true",
                "notes": "",
            },
        )
    ]


def test_train_defaults_and_generated_request_id(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    body = _body(client.post("/v1/train", json={"model_id": "mnist_digitnet_v1"}))
    request_id = body["request_id"]
    assert isinstance(request_id, str)
    assert len(request_id) == 32
    ((_, fields),) = xrange(redis_url, JOBS_STREAM)
    assert (fields["request_id"], fields["epochs"], fields["user_id"]) == (request_id, "1", "0")


def test_train_duplicate_adds_nothing(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    first = _body(client.post("/v1/train", json=JOB))
    again = client.post("/v1/train", json=JOB)
    assert again.status_code == 202
    assert _body(again) == {**first, "duplicate": True}
    assert sync_redis(redis_url).xlen(JOBS_STREAM) == 1


def test_train_refuses_invalid_jobs_readably(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    typo = assert_error(
        client.post("/v1/train", json={"model_id": "mnist_digitnet_v1", "epoch": 3}),
        400,
        "invalid_job",
    )
    assert typo.message == (
        "unknown field (known: augment, batch_size, epochs, lr, model_id, notes, request_id, "
        "seed, type, use_feedback, user_id) @ $.epoch"
    )
    bad = assert_error(
        client.post("/v1/train", json={"model_id": "mnist_digitnet_v1", "epochs": "abc"}),
        400,
        "invalid_job",
    )
    assert bad.message == "expected an integer, got 'abc' @ $.epochs"
    arch = assert_error(
        client.post("/v1/train", json={"model_id": "mnist_nosucharch_v1"}), 400, "invalid_job"
    )
    assert arch.message.startswith("unknown arch 'mnist_nosucharch_v1'; valid: ")
    assert arch.message.endswith(" @ $.model_id")
    not_json = assert_error(client.post("/v1/train", content=b"{nope"), 400, "invalid_job")
    assert not_json.message.startswith("The body is not JSON")
    assert sync_redis(redis_url).xlen(JOBS_STREAM) == 0


def test_train_needs_the_api_key_when_configured(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url, {"SECURITY__API_KEY": "s3cret"})
    assert_error(client.post("/v1/train", json=JOB), 401, "unauthorized")
    ok = client.post("/v1/train", json=JOB, headers={"X-Api-Key": "s3cret"})
    assert ok.status_code == 202
    assert_error(client.post("/v1/train/job-1/cancel"), 401, "unauthorized")


def test_train_without_redis_configured_is_503(client: Client) -> None:
    assert_error(client.post("/v1/train", json=JOB), 503, "queue_unavailable")
    assert_error(client.get("/v1/train/job-1"), 503, "queue_unavailable")


def test_redis_down_is_503_while_reads_go_on(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str, redis_server: RedisServer
) -> None:
    client = _serve(serve, model_dir, redis_url)
    assert client.post("/v1/train", json=JOB).status_code == 202
    redis_server.stop()
    try:
        assert_error(client.post("/v1/train", json=JOB), 503, "queue_unavailable")
        assert_error(client.get("/v1/train/job-1"), 503, "queue_unavailable")
        assert_error(client.get("/v1/train/job-1/events"), 503, "queue_unavailable")
        read = post_read(client, png_bytes(seven()))
        assert read.status_code == 200, read.text
    finally:
        redis_server.start()
    again = client.post("/v1/train", json=JOB)  # the server came back empty: queued anew
    assert again.status_code == 202, again.text
    assert _body(again)["duplicate"] is False


def test_status_unknown_then_reflects_updates(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    assert_error(client.get("/v1/train/nope"), 404, "not_found")
    client.post("/v1/train", json=JOB)
    queued = _body(client.get("/v1/train/job-1"))
    assert (queued["status"], queued["attempts"], queued["model_id"]) == (
        "queued",
        0,
        "mnist_digitnet_v1",
    )

    progress = json.dumps({"epoch": 1, "batch": 3})
    fields: dict[str, str | int] = {
        "status": "running",
        "attempts": 1,
        "crashes": 1,
        "worker": "w-1",
        "progress": progress,
    }
    set_status(redis_url, "job-1", fields)
    body = _body(client.get("/v1/train/job-1"))
    assert body["status"] == "running"
    assert body["attempts"] == 1
    assert (body["crashes"], body["failures"]) == (1, 0)
    assert body["worker"] == "w-1"
    assert body["progress"] == {"epoch": 1, "batch": 3}
    assert set(body) == {
        "request_id", "model_id", "user_id", "status", "entry_id", "attempts", "progress", "result",
        "error_kind", "message", "created_at", "updated_at", "worker", "retry_at",
        "cancel_requested", "crashes", "failures",
    }  # fmt: skip


def test_events_replay_in_order_and_close_after_completed(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    client.post("/v1/train", json=JOB)
    publish(redis_url, started("job-1"), batch("job-1", 1, 2), epoch("job-1", 1))
    publish(redis_url, completed("job-1"))
    response = client.get("/v1/train/job-1/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = sse_frames(response.text)
    assert [f.event for f in frames] == [
        "digits.train.started.v1",
        "digits.train.batch.v1",
        "digits.train.epoch.v1",
        "digits.train.completed.v1",
    ]
    ids = [e[0] for e in xrange(redis_url, job_events_key("job-1"))]
    assert [f.id for f in frames] == ids
    first = json.loads(frames[0].data)
    assert (first["type"], first["request_id"], first["total_epochs"]) == (
        "digits.train.started.v1",
        "job-1",
        2,
    )
    resumed = client.get("/v1/train/job-1/events", headers={"Last-Event-ID": ids[1]})
    assert [f.id for f in sse_frames(resumed.text)] == ids[2:]


def test_events_follow_live_until_final(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    client.post("/v1/train", json=JOB)
    publish(redis_url, started("job-1"))
    result: list[httpx.Response] = []
    reader = threading.Thread(target=lambda: result.append(client.get("/v1/train/job-1/events")))
    reader.start()
    watcher = sync_redis(redis_url)

    def blocked_readers() -> int:
        return sum("b" in c.get("flags", "") for c in watcher.client_list())

    # The reload consumer is one blocked reader; the SSE request is the second.
    stream_helpers.wait_for(lambda: blocked_readers() >= 2, what="the SSE reader to block")
    publish(redis_url, failed("job-1", will_retry=True), started("job-1"), failed("job-1"))
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert [f.event.split(".")[2] for f in sse_frames(result[0].text)] == [
        "started", "failed", "started", "failed",
    ]  # fmt: skip


def test_events_unknown_job_is_404(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    assert_error(client.get("/v1/train/nope/events"), 404, "not_found")


def test_cancel_queued_running_final_unknown(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    assert_error(client.post("/v1/train/nope/cancel"), 404, "not_found")
    client.post("/v1/train", json=JOB)
    response = client.post("/v1/train/job-1/cancel")
    assert response.status_code == 202, response.text
    body = _body(response)
    assert (body["status"], body["cancel_requested"], body["message"]) == (
        "cancelled",
        True,
        "cancelled by request",
    )
    r = sync_redis(redis_url)
    assert 0 < r.ttl("digits:job:job-1") <= 604_800
    ((_, fields),) = xrange(redis_url, job_events_key("job-1"))
    event = json.loads(fields["event"])
    assert (event["type"], event["error_kind"], event["message"], event["will_retry"]) == (
        "digits.train.failed.v1",
        "user",
        "cancelled by request",
        False,
    )
    assert [f.event for f in sse_frames(client.get("/v1/train/job-1/events").text)] == [
        "digits.train.failed.v1"
    ]
    conflict = assert_error(client.post("/v1/train/job-1/cancel"), 409, "conflict")
    assert conflict.message == "Job 'job-1' is already cancelled."

    client.post("/v1/train", json={**JOB, "request_id": "job-2"})
    r.hset("digits:job:job-2", "status", "running")
    running = _body(client.post("/v1/train/job-2/cancel"))
    assert (running["status"], running["cancel_requested"]) == ("running", True)
    assert r.xlen(job_events_key("job-2")) == 0  # the worker publishes the final event


def test_sse_keeps_alive_and_ends_when_the_job_ended_without_a_final_event(redis_url: str) -> None:
    set_status(redis_url, "job-1", {"status": "dead"})
    publish(redis_url, started("job-1"))

    async def collect() -> list[bytes]:
        client = AsyncRedis.from_url(redis_url, decode_responses=True)
        hub = EventHub(client, max_streams=1)
        await hub.start()
        try:
            stream = event_stream(hub, "job-1", keepalive_s=0.05)
            return [chunk async for chunk in stream]
        finally:
            await hub.stop()
            await client.aclose()

    chunks = asyncio.run(collect())
    assert chunks[0] == b": connected\n\n"
    assert chunks[1].startswith(b"event: digits.train.started.v1\ndata: {")
    assert chunks[2:] == [b": keep-alive\n\n"]


# --------------------------------------------------------------------------- hostile bodies

_JOB_HEAD = b'{"model_id":"mnist_digitnet_v1",'
HOSTILE_BODIES = {
    "huge_int_field": _JOB_HEAD + b'"epochs":' + b"9" * 5000 + b"}",
    "huge_int_alone": b"9" * 5000,
    "huge_int_for_a_float": _JOB_HEAD + b'"lr":' + b"9" * 4000 + b"}",
    "deep_list": b"[" * 30_000 + b"]" * 30_000,
    "deep_list_unclosed": b"[" * 60_000,
    "deep_object_in_a_field": _JOB_HEAD + b'"notes":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001,
    "invalid_utf8": b'{"model_id":"mnist_digitnet_v1","notes":"\xff\xfe\xc3"}',
    "lone_surrogate": _JOB_HEAD + b'"notes":"\\ud800"}',
    "lone_surrogate_key": b'{"model_id":"mnist_digitnet_v1","\\udfff":1}',
    "nan": _JOB_HEAD + b'"lr":NaN}',
    "infinity": _JOB_HEAD + b'"lr":Infinity}',
    "minus_infinity_alone": b"-Infinity",
    "overflowing_float": _JOB_HEAD + b'"lr":1e999}',
    "duplicate_keys": b'{"model_id":"mnist_digitnet_v1","model_id":"mnist_digitnet_v1"}',
    "huge_string": _JOB_HEAD + b'"notes":"' + b"x" * 60_000 + b'"}',
    "huge_key": _JOB_HEAD + b'"' + b"k" * 60_000 + b'":1}',
    "unicode_digit_user_id": _JOB_HEAD + '"user_id":"²"}'.encode(),
    "huge_digit_string": _JOB_HEAD + b'"seed":"' + b"7" * 5000 + b'"}',
    "nul_in_id": _JOB_HEAD + b'"request_id":"a\\u0000b"}',
    "not_an_object": b'["model_id","mnist_digitnet_v1"]',
    "empty": b"",
    "whitespace": b" \n\t ",
    "trailing_garbage": b'{"model_id":"mnist_digitnet_v1"} {}',
    "bom_then_garbage": b"\xef\xbb\xbf\xff",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_BODIES))
def test_hostile_train_bodies_are_400_in_the_error_schema(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str, name: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    response = client.post(
        "/v1/train", content=HOSTILE_BODIES[name], headers={"Content-Type": "application/json"}
    )
    body = assert_error(response, 400, "invalid_job")
    assert len(body.message) <= 2000, len(body.message)
    assert sync_redis(redis_url).xlen(JOBS_STREAM) == 0
    assert client.post("/v1/train", json=JOB).status_code == 202  # the API still serves


def test_train_body_over_64_kib_is_413(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    nested = b"[" * 100_000 + b"]" * 100_000
    big = assert_error(client.post("/v1/train", content=nested), 413, "too_large")
    assert "65536" in big.message
    padded = json.dumps({**JOB, "notes": "x" * (70 * 1024)}).encode()
    assert_error(client.post("/v1/train", content=padded), 413, "too_large")
    just_under = json.dumps(JOB).encode() + b" " * (64 * 1024 - len(json.dumps(JOB)))
    assert len(just_under) == 64 * 1024
    assert client.post("/v1/train", content=just_under).status_code == 202
    assert sync_redis(redis_url).xlen(JOBS_STREAM) == 1


def test_a_full_queue_refuses_new_jobs_and_never_trims_one(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url, {"STREAMS__JOBS_MAXLEN": "3"})
    ids = []
    for n in range(3):
        response = client.post("/v1/train", json={**JOB, "request_id": f"job-{n}"})
        assert response.status_code == 202, response.text
        ids.append(_body(response)["entry_id"])
    full = assert_error(
        client.post("/v1/train", json={**JOB, "request_id": "job-3"}), 503, "queue_full"
    )
    assert "3 jobs" in full.message
    assert sync_redis(redis_url).exists("digits:job:job-3") == 0
    again = client.post("/v1/train", json={**JOB, "request_id": "job-0"})
    assert (again.status_code, _body(again)["duplicate"]) == (202, True)  # a repeat still answers
    assert [entry_id for entry_id, _ in xrange(redis_url, JOBS_STREAM)] == ids
    sync_redis(redis_url).xdel(JOBS_STREAM, str(ids[0]))  # workers trim what they acknowledged
    assert client.post("/v1/train", json={**JOB, "request_id": "job-3"}).status_code == 202


# --------------------------------------------------------------------------- issue 12: job states


def test_status_and_events_need_the_api_key_like_every_v1_route(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url, {"SECURITY__API_KEY": "s3cret"})
    key = {"X-Api-Key": "s3cret"}
    assert client.post("/v1/train", json=JOB, headers=key).status_code == 202
    publish(redis_url, started("job-1"), completed("job-1"))
    assert_error(client.get("/v1/train/job-1"), 401, "unauthorized")
    assert_error(client.get("/v1/train/job-1/events"), 401, "unauthorized")
    wrong = {"X-Api-Key": "nope"}
    assert_error(client.get("/v1/train/job-1/events", headers=wrong), 401, "unauthorized")
    assert client.get("/v1/train/job-1", headers=key).status_code == 200
    events = client.get("/v1/train/job-1/events", headers=key)
    assert [f.event for f in sse_frames(events.text)][-1] == "digits.train.completed.v1"


def test_a_job_added_with_xadd_is_queued_from_the_moment_it_is_on_the_stream(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    r = sync_redis(redis_url)
    # redis-cli XADD digits:train '*' model_id mnist_digitnet_v1 epochs 1 user_id 5
    entry = str(
        r.xadd(JOBS_STREAM, {"model_id": "mnist_digitnet_v1", "epochs": "1", "user_id": "5"})
    )
    body = _body(client.get(f"/v1/train/job-{entry}"))
    assert (body["request_id"], body["status"], body["entry_id"]) == (
        f"job-{entry}",
        "queued",
        entry,
    )
    assert (body["model_id"], body["user_id"], body["attempts"]) == ("mnist_digitnet_v1", 5, 0)
    assert str(body["created_at"]).endswith("Z")
    own = str(r.xadd(JOBS_STREAM, {"model_id": "mnist_digitnet_v1", "request_id": "mine-1"}))
    mine = _body(client.get("/v1/train/mine-1"))
    assert (mine["status"], mine["entry_id"]) == ("queued", own)
    # Taken and acknowledged by a worker whose status has since expired: no longer a job.
    r.xgroup_create(JOBS_STREAM, "digits-workers", id="0")
    r.xreadgroup("digits-workers", "w-1", {JOBS_STREAM: ">"}, count=2)
    assert _body(client.get("/v1/train/mine-1"))["status"] == "queued"  # pending: still to run
    r.xack(JOBS_STREAM, "digits-workers", own)
    assert_error(client.get("/v1/train/mine-1"), 404, "not_found")
    assert_error(client.get("/v1/train/job-0-1"), 404, "not_found")


def test_cancelling_a_job_added_with_xadd_ends_it_cancelled_for_everyone(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    r = sync_redis(redis_url)
    entry = str(r.xadd(JOBS_STREAM, {"model_id": "mnist_digitnet_v1", "user_id": "5"}))
    rid = f"job-{entry}"
    response = client.post(f"/v1/train/{rid}/cancel")
    assert response.status_code == 202, response.text
    body = _body(response)
    assert (body["status"], body["entry_id"], body["user_id"]) == ("cancelled", entry, 5)
    assert _body(client.get(f"/v1/train/{rid}"))["status"] == "cancelled"
    ((_, fields),) = xrange(redis_url, job_events_key(rid))
    event = json.loads(fields["event"])
    assert (event["type"], event["cancelled"], event["error_kind"], event["will_retry"]) == (
        "digits.train.failed.v1",
        True,
        "user",
        False,
    )
    frames = sse_frames(client.get(f"/v1/train/{rid}/events").text)
    assert [json.loads(f.data)["cancelled"] for f in frames] == [True]
    assert_error(client.post(f"/v1/train/{rid}/cancel"), 409, "conflict")


def test_a_queued_job_cancelled_through_the_api_says_so_in_its_final_event(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _serve(serve, model_dir, redis_url)
    client.post("/v1/train", json=JOB)
    assert client.post("/v1/train/job-1/cancel").status_code == 202
    ((_, fields),) = xrange(redis_url, job_events_key("job-1"))
    assert json.loads(fields["event"])["cancelled"] is True
    # A failure that is not a cancellation keeps `cancelled` false.
    publish(redis_url, failed("job-2"))
    ((_, other),) = xrange(redis_url, job_events_key("job-2"))
    assert json.loads(other["event"])["cancelled"] is False
