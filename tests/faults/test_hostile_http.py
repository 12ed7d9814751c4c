"""Hypothesis-generated bodies for `POST /v1/train` (no key needed on loopback), through real HTTP
into the app, against a real redis-server.

Every answer is a 202 that put a well-formed entry on `digits:train` (one the workers' reader
takes back to the same job), or a 4xx in the error schema `{code, message, request_id}`; never a
5xx, and the API keeps serving. Bodies are built as raw JSON text, so they can hold what
`json.dumps` never writes: integers past Python's 4300-digit limit, nesting deeper than the
recursion limit, `NaN`/`Infinity`, lone surrogates, repeated keys, unicode digits like `²`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis as AsyncRedis

import stream_helpers
from conftest import Serve
from handwriting_ai.api.schemas import ErrorBody
from handwriting_ai.contracts.converter import structure
from handwriting_ai.contracts.jobs import JOB_FIELDS, job_from_fields, job_to_fields
from handwriting_ai.streams.follow import entries_of
from handwriting_ai.streams.keys import JOBS_STREAM
from handwriting_ai.streams.status import JobStatus, read_status
from helpers import Artifact, json_of, make_settings
from stream_helpers import sync_redis, xrange

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url

Json = None | bool | int | float | str | list["Json"] | dict[str, "Json"]
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ------------------------------------------------------------------ raw JSON text fragments

_leaves: st.SearchStrategy[Json] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and ±Infinity included: json.dumps writes them as bare literals
    st.text(max_size=20),
)
values: st.SearchStrategy[Json] = st.recursive(
    _leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
UNICODE_DIGITS = "0123456789²³¹١٢٣۴५๖０１２𝟘"
hostile: st.SearchStrategy[str] = st.one_of(
    st.integers(4301, 6000).map(lambda n: "9" * n),  # past the int-string limit: ValueError
    st.integers(4301, 6000).map(lambda n: "-" + "1" * n),
    st.integers(20, 4300).map(lambda n: "1" + "0" * (n - 1)),  # legal, and far out of range
    st.integers(100, 30_000).map(lambda n: "[" * n + "]" * n),  # RecursionError
    st.integers(100, 10_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.integers(1, 20_000).map(lambda n: "[" * n),  # never closed
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e-999", "-0"]),
    st.sampled_from(['"\\ud800"', '"a\\udfffb"', '"\\udbff\\u0041"', '"\\u0000"']),
    st.text(alphabet=UNICODE_DIGITS, min_size=1, max_size=8).map(json.dumps),
    st.integers(1001, 60_000).map(lambda n: json.dumps("x" * n)),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3).map(json.dumps),
)
fragments: st.SearchStrategy[str] = st.one_of(
    values.map(lambda v: json.dumps(v, allow_nan=True)), hostile
)

_ID = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}"
_GOOD: dict[str, st.SearchStrategy[Json]] = {
    "type": st.just("digits.train.v1"),
    "request_id": st.from_regex(_ID, fullmatch=True),
    "user_id": st.integers(0, 2**63 - 1),
    "model_id": st.sampled_from(["mnist_digitnet_v1", "mnist_digitnet_tiny_v1", "x_digitnet_y"]),
    "epochs": st.integers(1, 500),
    "batch_size": st.integers(0, 8192),
    "lr": st.floats(1e-6, 1.0),
    "seed": st.integers(0, 2**32 - 1),
    "augment": st.booleans(),
    "notes": st.text(max_size=50),
    "use_feedback": st.booleans(),
}


def _field(name: str) -> st.SearchStrategy[str]:
    """Mostly a good value (so that many bodies reach Redis), else anything at all."""
    good = _GOOD[name].map(json.dumps)
    return st.one_of(good, good, fragments)


field_names = st.sampled_from(JOB_FIELDS)
pairs: st.SearchStrategy[list[tuple[str, str]]] = st.one_of(
    # The real fields, each at most once, model_id nearly always present.
    st.fixed_dictionaries(
        {"model_id": _field("model_id")},
        optional={n: _field(n) for n in JOB_FIELDS if n != "model_id"},
    ).map(lambda d: list(d.items())),
    # Real and unknown names, repeats allowed (a duplicate key), any values.
    st.lists(st.tuples(st.one_of(field_names, st.text(max_size=6)), fragments), max_size=6),
)


def _object(items: list[tuple[str, str]]) -> bytes:
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in items) + "}").encode(
        "utf-8", "surrogatepass"
    )


bodies: st.SearchStrategy[bytes] = st.one_of(
    pairs.map(_object),
    pairs.map(_object).map(lambda b: b"\xef\xbb\xbf" + b),  # a UTF-8 BOM
    pairs.map(lambda p: _object(p).decode("utf-8", "surrogatepass").encode("utf-16", "ignore")),
    fragments.map(lambda f: f.encode("utf-8", "surrogatepass")),  # not an object at all
    st.binary(max_size=64),
    pairs.map(_object).map(lambda b: b[: len(b) // 2]),  # cut short
)

# ------------------------------------------------------------------ the properties


def _check_answer(url: str, response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code == 202:
        body = json_of(response)
        assert isinstance(body, dict), body
        entry_id, request_id = body["entry_id"], body["request_id"]
        assert isinstance(entry_id, str)
        assert isinstance(request_id, str)
        with sync_redis(url) as redis:
            found = redis.xrange(JOBS_STREAM, entry_id, entry_id)
        ((got_id, fields),) = entries_of(found)
        assert got_id == entry_id
        job = job_from_fields(fields, entry_id=entry_id)  # what a worker reads
        assert job.request_id == request_id
        # Every field written (those added after v1 only when set), and written back the same.
        assert job_to_fields(job) == fields
        return
    assert 400 <= response.status_code < 500, response.text
    error = structure(json_of(response), ErrorBody)
    assert error.code, error
    assert error.message.strip(), error
    assert len(error.message) <= 2000
    assert error.request_id == response.headers["x-request-id"]


def test_generated_train_bodies_are_202_or_a_4xx_never_a_5xx(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = serve(make_settings(model_dir, ["tiny_seven"], {"REDIS_URL": redis_url}))
    seen: dict[int, int] = {}

    @SETTINGS
    @given(body=bodies)
    def post(body: bytes) -> None:
        response = client.post(
            "/v1/train", content=body, headers={"Content-Type": "application/json"}
        )
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        _check_answer(redis_url, response)

    post()
    assert seen.get(202, 0) > 0, seen  # the generator does reach Redis
    assert seen.get(400, 0) > 0, seen
    # Every 202 left its status; the API still serves a plain job afterwards.
    for entry_id, fields in xrange(redis_url, JOBS_STREAM):
        status = _status(redis_url, fields["request_id"])
        assert status is not None, entry_id
        assert status.entry_id == entry_id, (entry_id, status)
    ok = client.post("/v1/train", json={"model_id": "mnist_digitnet_v1", "request_id": "last"})
    assert ok.status_code == 202, ok.text


def test_generated_bodies_over_the_limit_are_413(
    serve: Serve, model_dir: Path, seven_model: Artifact, redis_url: str
) -> None:
    client = serve(make_settings(model_dir, ["tiny_seven"], {"REDIS_URL": redis_url}))

    @settings(max_examples=15, deadline=None, database=None)
    @given(pad=st.integers(64 * 1024 + 1, 300_000), head=pairs.map(_object))
    def post(pad: int, head: bytes) -> None:
        body = head + b" " * pad
        response = client.post("/v1/train", content=body)
        assert response.status_code == 413, response.text
        assert structure(json_of(response), ErrorBody).code == "too_large"

    post()
    assert sync_redis(redis_url).xlen(JOBS_STREAM) == 0


def _status(url: str, request_id: str) -> JobStatus | None:
    async def go() -> JobStatus | None:
        client = AsyncRedis.from_url(url, decode_responses=True)
        try:
            return await read_status(client, request_id)
        finally:
            await client.aclose()

    return asyncio.run(go())
