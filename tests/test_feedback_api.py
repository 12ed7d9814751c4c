"""`POST /v1/feedback` through HTTP with a real Redis: a read's sample is kept, a correction of it
lands once on `digits:feedback` (schema-valid, with the sample the models saw), and every way it
can go wrong gets its own clear answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import numpy as np
from redis import Redis

import stream_helpers
from conftest import Serve
from handwriting_ai.api.app import create_app
from handwriting_ai.contracts.feedback import correction_from_fields
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
from worker_support import serve_app

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url


def _client(
    serve: Serve, model_dir: Path, seven_model: Artifact, extra: Mapping[str, str]
) -> Client:
    return serve(make_settings(model_dir, [seven_model.model_id], dict(extra)))


def _read(client: Client) -> str:
    body = json_of(post_read(client, png_bytes(seven())))
    assert isinstance(body, dict)
    request_id = body["request_id"]
    assert isinstance(request_id, str)
    assert request_id
    return request_id


def _kept(url: str, request_id: str) -> None:
    with Redis.from_url(url) as r:
        stream_helpers.wait_for(
            lambda: bool(r.exists(f"digits:read:{request_id}")), what="the sample to be kept"
        )


def _feedback(client: Client, body: object) -> httpx.Response:
    return client.post("/v1/feedback", json=body)


def _corrections(url: str) -> list[dict[str, str]]:
    with Redis.from_url(url, decode_responses=True) as r:
        return [fields for _, fields in r.xrange("digits:feedback")]


def test_a_read_is_corrected_once_with_the_sample_the_models_saw(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _client(serve, model_dir, seven_model, {"REDIS_URL": redis_url})
    request_id = _read(client)
    _kept(redis_url, request_id)
    answer = _feedback(client, {"request_id": request_id, "label": 4, "user_id": 12})
    assert answer.status_code == 201, answer.text
    body = json_of(answer)
    assert isinstance(body, dict)
    assert (body["request_id"], body["label"], body["predicted"]) == (request_id, 4, 7)
    [entry] = _corrections(redis_url)
    correction = correction_from_fields(entry)
    assert (correction.label, correction.predicted, correction.user_id) == (4, 7, 12)
    assert correction.model_id == seven_model.model_id
    pixels = correction.pixels()
    assert pixels.shape == (28, 28)
    assert pixels.max() > 200  # ink, bright on black, as the models saw it
    assert np.count_nonzero(pixels) > 20
    # A second correction of the same read, even with another label, is refused.
    again = _feedback(client, {"request_id": request_id, "label": 1})
    assert_error(again, 409, "conflict")
    assert "already corrected as 4" in again.text
    assert len(_corrections(redis_url)) == 1


def test_bad_corrections_get_clear_answers(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = _client(serve, model_dir, seven_model, {"REDIS_URL": redis_url})
    request_id = _read(client)
    _kept(redis_url, request_id)
    assert_error(_feedback(client, {"request_id": "never-read", "label": 3}), 404, "not_found")
    for bad in (
        {"request_id": request_id, "label": 10},
        {"request_id": request_id, "label": -1},
        {"request_id": request_id, "label": "4"},
        {"request_id": request_id, "label": True},
        {"request_id": request_id},
        {"request_id": "", "label": 4},
        {"request_id": request_id, "label": 4, "lable": 4},
        [request_id, 4],
    ):
        assert_error(_feedback(client, bad), 400, "invalid_request")
    not_json = client.post(
        "/v1/feedback", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert_error(not_json, 400, "invalid_request")
    huge = client.post("/v1/feedback", content=b" " * 5000)
    assert_error(huge, 413, "too_large")
    assert _corrections(redis_url) == []
    # Nothing bad counted as a correction: the read can still be corrected.
    assert _feedback(client, {"request_id": request_id, "label": 4.0}).status_code == 201


def test_corrections_are_rate_limited_per_client(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    extra = {"REDIS_URL": redis_url, "FEEDBACK__RATE_PER_MINUTE": "3"}
    client = _client(serve, model_dir, seven_model, extra)
    ids = [_read(client) for _ in range(4)]
    _kept(redis_url, ids[-1])
    answers = [_feedback(client, {"request_id": i, "label": 1}) for i in ids]
    assert [a.status_code for a in answers[:3]] == [201, 201, 201]
    assert_error(answers[3], 429, "rate_limited")
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60


def test_an_expired_sample_cannot_be_corrected(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    extra = {"REDIS_URL": redis_url, "FEEDBACK__SAMPLE_TTL_S": "1"}
    client = _client(serve, model_dir, seven_model, extra)
    request_id = _read(client)
    _kept(redis_url, request_id)
    time.sleep(2.2)
    answer = _feedback(client, {"request_id": request_id, "label": 2})
    assert_error(answer, 404, "not_found")
    assert "FEEDBACK__SAMPLE_TTL_S" in answer.text


def test_two_racing_corrections_of_one_read_land_once(
    model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    settings = make_settings(model_dir, [seven_model.model_id], {"REDIS_URL": redis_url})
    with serve_app(create_app(settings)) as url, httpx.Client(base_url=url) as http:
        read = http.post("/v1/read", files={"file": ("d.png", png_bytes(seven()), "image/png")})
        request_id = read.json()["request_id"]
        _kept(redis_url, request_id)
        statuses: list[int] = []
        start = threading.Barrier(8)

        def correct(label: int) -> None:
            with httpx.Client(base_url=url) as own:
                start.wait()
                body = {"request_id": request_id, "label": label}
                statuses.append(own.post("/v1/feedback", json=body).status_code)

        threads = [threading.Thread(target=correct, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(statuses) == [201] + [409] * 7
    assert len(_corrections(redis_url)) == 1


def test_without_redis_reads_work_and_corrections_say_why_not(
    serve: Serve, model_dir: Path, seven_model: Artifact
) -> None:
    client = _client(serve, model_dir, seven_model, {})
    request_id = _read(client)
    answer = _feedback(client, {"request_id": request_id, "label": 4})
    assert_error(answer, 503, "queue_unavailable")


def test_reads_do_not_wait_on_a_dead_redis(
    serve: Serve,
    model_dir: Path,
    seven_model: Artifact,
    redis_url: str,
    redis_server: RedisServer,
) -> None:
    client = _client(serve, model_dir, seven_model, {"REDIS_URL": redis_url})
    _read(client)
    redis_server.stop()
    try:
        started = time.perf_counter()
        for _ in range(5):
            assert _read(client)
        assert time.perf_counter() - started < 3.0  # keeping samples never blocks a read
        assert_error(_feedback(client, {"request_id": "x1", "label": 4}), 503, "queue_unavailable")
    finally:
        redis_server.start()
