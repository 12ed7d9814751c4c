"""The client's event stream: SSE parsed as the standard says, and a dropped connection resumed
with `Last-Event-ID` so that every event arrives exactly once, in order. The drops are real: a
TCP proxy in front of the live API cuts the connection in the middle of an event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import stream_helpers
from client_support import (
    REFUSE,
    Answer,
    cut_after_nth,
    cutting_proxy,
    error_answer,
    scripted_server,
)
from handwriting_ai.api.app import create_app
from handwriting_ai.client import AsyncClient, Client, ServiceError
from handwriting_ai.client.sse import SseDecoder, SseMessage, train_event
from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import TrainEvent, encode_event
from handwriting_ai.streams.keys import job_events_key
from helpers import Artifact, make_settings
from stream_helpers import batch, completed, epoch, publish, started, xrange
from worker_support import serve_app

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url
MODEL = "mnist_digitnet_v1"
EVENT = b"event: "


@pytest.fixture
def api_url(model_dir: Path, seven_model: Artifact, redis_url: str) -> Iterator[str]:
    settings = make_settings(model_dir, [seven_model.model_id], {"REDIS_URL": redis_url})
    with serve_app(create_app(settings)) as url:
        yield url


def _decode(text: str) -> list[SseMessage]:
    decoder = SseDecoder()
    return [m for line in text.split("\n") if (m := decoder.feed(line)) is not None]


# --------------------------------------------------------------------------- parsing


def test_sse_fields_comments_and_dispatch() -> None:
    text = (
        ": connected\n\n"
        "event: a\ndata: one\nid: 1-0\n\n"
        ": keep-alive\n\n"
        "data:two\ndata:  lines\n\n"  # no space after the colon; a second space is kept
        "id: 2-0\n\n"  # an id alone moves the cursor, dispatches nothing
        "event: ignored\n\n"  # no data: nothing, and the type does not leak to the next
        "data\nretry: 3000\nunknown: x\n\n"  # a field with no colon: an empty value
        "event: b\ndata: cut off"  # never completed by a blank line: never dispatched
    )
    decoder = SseDecoder()
    messages = [m for line in text.split("\n") if (m := decoder.feed(line)) is not None]
    assert messages == [
        SseMessage("a", "one", "1-0"),
        SseMessage("message", "two\n lines", "1-0"),
        SseMessage("message", "", "2-0"),
    ]
    assert decoder.retry_ms == 3000
    decoder.reset()  # the connection dropped: the half message is forgotten, the id kept
    assert decoder.feed("") is None
    assert decoder.last_event_id == "2-0"


def test_sse_message_to_a_typed_event() -> None:
    event = started("r1")
    fields = encode_event(event)
    assert train_event(SseMessage(fields["type"], fields["event"], "1-0")) == event
    assert train_event(SseMessage("message", fields["event"], "1-0")) == event
    # A type from a newer service is skipped, not an error (events are read tolerantly).
    assert train_event(SseMessage("digits.train.new.v1", "{}", "1-0")) is None
    newer = json.dumps({**json.loads(fields["event"]), "type": "digits.train.new.v1"})
    assert train_event(SseMessage("message", newer, "1-0")) is None
    # A known type that does not decode is the service's fault: said, not skipped.
    broken = json.loads(fields["event"])
    del broken["total_epochs"]
    with pytest.raises(ContractError, match=r"total_epochs"):
        train_event(SseMessage(fields["type"], json.dumps(broken), "1-0"))


# --------------------------------------------------------------------------- resume, live


def _job(redis_url: str, rid: str) -> list[TrainEvent]:
    events: list[TrainEvent] = [
        started(rid),
        batch(rid, 1, 1),
        batch(rid, 1, 2),
        epoch(rid, 1),
        batch(rid, 2, 1),
        completed(rid),
    ]
    return events


def _failure(client: Client, rid: str, into: list[TrainEvent] | None = None) -> ServiceError:
    """Follow `rid` until the client gives up (then closed); the events it yielded go `into`."""
    with client:
        try:
            for event in client.events(rid):
                (into if into is not None else []).append(event)
        except ServiceError as exc:
            return exc
    raise AssertionError("the events ended without an error")


def _ids(redis_url: str, rid: str) -> list[str]:
    return [entry_id for entry_id, _ in xrange(redis_url, job_events_key(rid))]


def _last_event_ids(requests: list[str]) -> list[str | None]:
    found: list[str | None] = []
    for request in requests:
        headers = dict(
            line.split(": ", 1) for line in request.split("\r\n\r\n")[0].split("\r\n")[1:]
        )
        lower = {k.lower(): v for k, v in headers.items()}
        found.append(lower.get("last-event-id"))
    return found


def test_a_connection_cut_mid_event_resumes_without_loss_or_repeat(
    api_url: str, redis_url: str
) -> None:
    rid = "resume-1"
    with Client(api_url) as client:
        client.train({"request_id": rid, "model_id": MODEL})
    published = _job(redis_url, rid)
    publish(redis_url, *published)
    ids = _ids(redis_url, rid)
    # The first connection dies 20 bytes into the third event; the second is relayed whole.
    with cutting_proxy(api_url, [cut_after_nth(EVENT, 3, 20)]) as proxy:
        with Client(proxy.url, retry_delay_s=0.1) as client:
            received = list(client.events(rid))
        requests = proxy.requests()
    assert received == published
    assert proxy.connections[0].cut
    assert _last_event_ids(requests) == [None, ids[1]]


async def test_a_live_stream_cut_resumes_and_ends_at_the_final_event(
    api_url: str, redis_url: str
) -> None:
    rid = "resume-live"
    published = _job(redis_url, rid)
    async with AsyncClient(api_url) as direct:
        await direct.train({"request_id": rid, "model_id": MODEL})
    await asyncio.to_thread(publish, redis_url, *published[:2])
    received: list[TrainEvent] = []
    with cutting_proxy(api_url, [cut_after_nth(EVENT, 3, 5)]) as proxy:
        async with AsyncClient(proxy.url, retry_delay_s=0.1) as client:
            async for event in client.events(rid):
                received.append(event)
                if len(received) == 2:  # the job goes on after the client has caught up
                    await asyncio.to_thread(publish, redis_url, *published[2:])
        requests = proxy.requests()
    assert received == published
    assert proxy.connections[0].cut
    assert _last_event_ids(requests) == [None, _ids(redis_url, rid)[1]]


def test_reconnects_in_a_row_are_bounded(api_url: str, redis_url: str) -> None:
    rid = "resume-bounded"
    with Client(api_url) as client:
        client.train({"request_id": rid, "model_id": MODEL})
    publish(redis_url, *_job(redis_url, rid)[:3])
    received: list[TrainEvent] = []
    with cutting_proxy(api_url, [cut_after_nth(EVENT, 2, 5), *[REFUSE] * 10]) as proxy:
        with Client(proxy.url, retry_delay_s=0.05, max_reconnects=2) as client:
            gone = _failure(client, rid, received)
        connections = len(proxy.connections)
    assert [e.type for e in received] == ["digits.train.started.v1"]
    assert (gone.status, gone.code) == (0, "unreachable")
    assert connections == 3  # the first, then two reconnects that brought nothing


def test_an_unknown_job_is_not_found_at_once(api_url: str, redis_url: str) -> None:
    with cutting_proxy(api_url, []) as proxy:
        with Client(proxy.url) as client:
            missing = _failure(client, "nobody")
        connections = len(proxy.connections)
    assert (missing.status, missing.code) == (404, "not_found")
    assert connections == 1


# --------------------------------------------------------------------------- scripted streams


def _sse(*events: TrainEvent, first_id: int = 1) -> bytes:
    frames = [": connected\n\n"]
    for n, event in enumerate(events, start=first_id):
        fields = encode_event(event)
        frames.append(f"event: {fields['type']}\ndata: {fields['event']}\nid: {n}-0\n\n")
    return "".join(frames).encode()


SSE_HEADERS = (("Content-Type", "text/event-stream"),)


def test_a_silent_stream_times_out_and_reconnects_from_its_last_event() -> None:
    """No byte for longer than the read timeout (the keep-alive interval plus a margin): the
    connection is dead; the client reconnects from the last event it yielded."""
    silent = Answer(200, _sse(started("quiet")), SSE_HEADERS, then_hang_s=5.0)
    with scripted_server(silent) as server:
        received: list[TrainEvent] = []
        with Client(server.url, retry_delay_s=0.05, events_read_timeout_s=0.5) as client:
            timed_out = _failure(client, "quiet", received)
    assert [e.type for e in received] == ["digits.train.started.v1"]  # once, not per connection
    assert timed_out.code == "timeout"
    assert len(server.received) == 6  # the first and MAX_RECONNECTS (5) that brought nothing
    assert "last-event-id" not in server.received[0].headers
    assert {r.headers["last-event-id"] for r in server.received[1:]} == {"1-0"}


def test_a_stream_that_keeps_ending_before_the_final_event_gives_up() -> None:
    ends = Answer(200, _sse(started("ends")), SSE_HEADERS)
    with scripted_server(ends) as server:
        ended = _failure(Client(server.url, retry_delay_s=0.05, max_reconnects=1), "ends")
    assert (ended.status, ended.code) == (200, "stream_ended")
    assert len(server.received) == 2


def test_a_5xx_on_connect_is_retried_and_a_4xx_is_not() -> None:
    answers = [
        error_answer(503, "queue_unavailable"),
        Answer(200, _sse(started("j"), completed("j")), SSE_HEADERS),
    ]
    with scripted_server(*answers) as server, Client(server.url, retry_delay_s=0.05) as client:
        assert [e.type for e in client.events("j")] == [
            "digits.train.started.v1",
            "digits.train.completed.v1",
        ]
    assert len(server.received) == 2
    with scripted_server(error_answer(401, "unauthorized")) as server:
        refused = _failure(Client(server.url, retry_delay_s=0.05), "j")
    assert refused.code == "unauthorized"
    assert len(server.received) == 1
