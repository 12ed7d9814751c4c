"""SSE over a real socket: `GET /v1/train/{id}/events` on uvicorn delivers each event as it is
published (a frame arrives while the job is still running, not all of them at its end), then
ends after the final one. The events are published as a worker publishes them (`EventPublisher`
on the job's stream); nothing of the service is mocked."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import stream_helpers
from handwriting_ai.api.app import create_app
from helpers import Artifact, make_settings
from stream_helpers import Frame, batch, completed, publish, sse_frames, started
from worker_support import serve_app

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url
FRAME_TIMEOUT_S = 10.0  # a frame is due within one XREAD block (1 s); this is load slack
END = Frame("<end of stream>", "", "")


@pytest.fixture
def api_url(model_dir: Path, seven_model: Artifact, redis_url: str) -> Iterator[str]:
    settings = make_settings(model_dir, [seven_model.model_id], {"REDIS_URL": redis_url})
    with serve_app(create_app(settings)) as url:
        yield url


def _read_frames(response: httpx.Response, out: queue.Queue[Frame]) -> None:
    """Each SSE frame as soon as its blank line arrives; END when the body ends."""
    block = ""
    try:
        for line in response.iter_lines():
            if line:
                block += line + "\n"
                continue
            for frame in sse_frames(block):
                out.put(frame)
            block = ""
    except httpx.HTTPError as exc:
        out.put(Frame("<error>", repr(exc), ""))
    out.put(END)


def _next(frames: queue.Queue[Frame], what: str) -> Frame:
    try:
        return frames.get(timeout=FRAME_TIMEOUT_S)
    except queue.Empty:
        raise AssertionError(f"no SSE frame within {FRAME_TIMEOUT_S} s: {what}") from None


def test_sse_sends_each_event_while_the_job_runs_and_ends_after_the_final_one(
    api_url: str, redis_url: str
) -> None:
    rid = "live-1"
    with httpx.Client(base_url=api_url, timeout=30) as http:
        queued = http.post("/v1/train", json={"request_id": rid, "model_id": "mnist_digitnet_v1"})
        assert queued.status_code == 202, queued.text
        publish(redis_url, started(rid))
        frames: queue.Queue[Frame] = queue.Queue()
        timeout = httpx.Timeout(30, read=FRAME_TIMEOUT_S * 3)
        with http.stream("GET", f"/v1/train/{rid}/events", timeout=timeout) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            reader = threading.Thread(target=_read_frames, args=(response, frames), daemon=True)
            reader.start()
            try:
                # Replayed at once, while the job is still running (no final event yet).
                first = _next(frames, "the replayed `started` before any final event")
                assert first.event == "digits.train.started.v1"
                # Published after the client connected: delivered live, still before the end.
                publish(redis_url, batch(rid, 1, 1))
                live = _next(frames, "a live `batch` event before the final one")
                assert live.event == "digits.train.batch.v1"
                assert frames.empty()
            finally:
                publish(redis_url, completed(rid))  # lets the stream end whatever happened
            final = _next(frames, "the final `completed` event")
            assert final.event == "digits.train.completed.v1"
            assert _next(frames, "the end of the stream after the final event") == END
            reader.join(FRAME_TIMEOUT_S)
            assert not reader.is_alive()
