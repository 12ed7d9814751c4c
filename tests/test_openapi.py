"""The served OpenAPI document says what the service does (clients are generated from it).

Schemathesis runs every one of its checks against the real app over HTTP (live uvicorn, a real
Redis, the API key set and sent), stateless and stateful, with bounded, derandomized examples; it
must find nothing. Then each route is driven into each error it can answer, on apps set up for
it (no model, no Redis, no keys), and every answer must be a status its operation documents, in
the documented `{code, message, request_id}` body, with a code the status names.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeAlias

import httpx
import hypothesis
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.checks import CHECKS, CheckFunction, load_all_checks
from schemathesis.core.adapter import OperationParameter, ResponsesContainer
from schemathesis.schemas import APIOperation, BaseSchema

from handwriting_ai.api import openapi
from handwriting_ai.api.app import create_app
from handwriting_ai.inference import upload as upload_module
from handwriting_ai.settings import Settings
from helpers import encoded, make_settings, seven, write_artifact
from redis_server import running_redis
from worker_support import serve_app

Responses: TypeAlias = ResponsesContainer[object]
Operation: TypeAlias = APIOperation[OperationParameter, Responses, object, BaseSchema]
Case: TypeAlias = schemathesis.Case[Operation]
Doc = dict[str, object]

KEY = "openapi-test-key"
HEADERS = {"X-Api-Key": KEY}
TIMEOUT_S = 10.0
load_all_checks()
# Every check Schemathesis has, named so that one it adds later runs too.
ALL_CHECKS: list[CheckFunction] = [c for c in CHECKS.get_all() if not isinstance(c, type)]
assert len(ALL_CHECKS) == len(CHECKS.get_all_names())

# The schema can say that a part is binary, not that it holds a digit or a loadable model: a
# schema-valid form whose content is refused is a content refusal, not a document that lies.
# Schemathesis sends real little images: a 1x1 PNG has no digit (400 `preprocessing_failed`), a
# GIF sent as image/png is judged by its bytes (415); random bytes are no manifest (400
# `invalid_manifest`). A form the document does not describe (422) still fails this check, as
# does any other status.
ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
CONTENT_REFUSED = {"/v1/read": ["400", "415"], "/v1/admin/models/upload": ["400"]}
CONFIG = {
    "headers": HEADERS,
    "request-timeout": TIMEOUT_S,
    "operations": [
        {
            "include-path": path,
            "checks": {"positive_data_acceptance": {"expected-statuses": [*ACCEPTED, *refused]}},
        }
        for path, refused in CONTENT_REFUSED.items()
    ],
}
SETTINGS = hypothesis.settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def _settings(model_dir: Path, extra: dict[str, str]) -> Settings:
    return make_settings(model_dir, ["tiny_seven"], {"DIGITS__MAX_IMAGE_MB": "1", **extra})


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app with a model, a real Redis and the API key, served by uvicorn."""
    tmp = tmp_path_factory.mktemp("openapi")
    model_dir = tmp / "models"
    write_artifact(model_dir, "tiny_seven", seed=1, prefer=7)
    with running_redis(tmp) as server:
        settings = _settings(model_dir, {"SECURITY__API_KEY": KEY, "REDIS_URL": server.url})
        with serve_app(create_app(settings)) as url:
            yield url


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """No model, no Redis, no key: the 503s and the uploads' 403."""
    model_dir = tmp_path_factory.mktemp("bare") / "models"
    model_dir.mkdir()
    with serve_app(create_app(_settings(model_dir, {}))) as url:
        yield url


def at(value: object, *keys: str) -> object:
    for key in keys:
        assert isinstance(value, dict), (key, value)
        value = value[key]
    return value


def obj(value: object) -> Doc:
    assert isinstance(value, dict), value
    return {str(k): v for k, v in value.items()}


@pytest.fixture(scope="module")
def document(live: str) -> Doc:
    return obj(httpx.get(f"{live}/schema/openapi.json").json())


def cancel_queued(base_url: str, case: Case, response: schemathesis.Response) -> None:
    """No worker runs here: a job the fuzzer queued would stay queued, and its event stream
    (which ends with the job) would never end. Cancelled, its stream replays and closes."""
    if case.operation.label == "POST /v1/train" and response.status_code == 202:
        request_id = at(response.json(), "request_id")
        cancelled = httpx.post(f"{base_url}/v1/train/{request_id}/cancel", headers=HEADERS)
        assert cancelled.status_code in (202, 409), cancelled.text


@pytest.fixture(scope="module")
def api_schema(live: str) -> BaseSchema:
    config = schemathesis.Config.from_dict(CONFIG)
    return schemathesis.openapi.from_url(f"{live}/schema/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id(request: pytest.FixtureRequest) -> None:
    """Schemathesis 4.32's lazy schema names each operation's subtest through `node._nodeid`,
    which pytest 9 nodes no longer have: give it the id pytest reports."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@schema.parametrize()
@SETTINGS
def test_schemathesis_finds_nothing(case: Case, live: str) -> None:
    response = case.call_and_validate(checks=ALL_CHECKS, headers=HEADERS, timeout=TIMEOUT_S)
    cancel_queued(live, case, response)


def test_schemathesis_stateful_finds_nothing(api_schema: BaseSchema, live: str) -> None:
    """Sequences of calls along the links Schemathesis infers (a queued job, then its status)."""
    calls: list[str] = []

    # The registry's admin routes link to each other by model_id and would take every step
    # (they are covered by the stateless run above and by tests/faults/test_replicas_apart.py).
    schema = api_schema.exclude(path_regex=r"^/v1/admin/models/\{model_id\}")

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Case) -> dict[str, object]:
            return {"headers": HEADERS, "timeout": TIMEOUT_S}

        def after_call(self, response: schemathesis.Response, case: Case) -> None:
            super().after_call(response, case)
            calls.append(case.operation.label)
            cancel_queued(live, case, response)

        def validate_response(
            self,
            response: schemathesis.Response,
            case: Case,
            additional_checks: list[CheckFunction] | None = None,
            **kwargs: object,
        ) -> None:
            case.validate_response(
                response,
                checks=ALL_CHECKS,
                headers=HEADERS,
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    Machine.run(
        settings=hypothesis.settings(
            SETTINGS, max_examples=15, stateful_step_count=4, phases=[hypothesis.Phase.generate]
        )
    )
    assert "GET /v1/train/{request_id}" in calls, calls  # a link from a queued job was followed


# ------------------------------------------------------------------ each route, each error


def documented(doc: Doc, method: str, path: str, status: int) -> Doc:
    responses = obj(at(doc, "paths", path, method.lower(), "responses"))
    assert str(status) in responses, f"{method} {path} answered {status}, documents {responses}"
    return obj(responses[str(status)])


def assert_documented_error(
    doc: Doc, route: tuple[str, str], response: httpx.Response, status: int, code: str
) -> None:
    assert response.status_code == status, response.text
    spec = documented(doc, *route, status)
    body_schema = obj(at(spec, "content", "application/json", "schema"))
    assert body_schema == {"$ref": "#/components/schemas/ErrorBody"}
    body = obj(response.json())
    jsonschema.validate(body, {**body_schema, "components": at(doc, "components")})
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert f"`{code}`" in str(spec["description"]), f"{code} not named in {spec['description']!r}"


def read_with(
    url: str,
    *,
    key: bool = True,
    file: tuple[str, bytes, str] | None = None,
    flags: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/read",
        headers=HEADERS if key else None,
        files=None if file is None else {"file": file},
        data=flags,
        content=content,
        timeout=TIMEOUT_S,
    )


def upload_with(
    url: str, parts: dict[str, tuple[str, bytes]], *, key: bool = True, model_id: str = "m"
) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/admin/models/upload",
        headers=HEADERS if key else None,
        files=parts,
        data={"model_id": model_id},
        timeout=TIMEOUT_S,
    )


def announced_upload(url: str, length: int) -> httpx.Response:
    """An upload announcing `length` bytes and sending none: refused on the header alone."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/admin/models/upload HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {KEY}\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
        sock.sendall(head.encode())
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(65536)
        top, _, body = raw.partition(b"\r\n\r\n")
        status_line, *lines = top.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines)
        while len(body) < int(headers.get("content-length", "0")):
            body += sock.recv(65536)
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


def get(url: str, *, key: bool = True) -> httpx.Response:
    return httpx.get(url, headers=HEADERS if key else None, timeout=TIMEOUT_S)


def post_json(url: str, body: object, *, key: bool = True) -> httpx.Response:
    return httpx.post(url, headers=HEADERS if key else None, json=body, timeout=TIMEOUT_S)


PNG = ("seven.png", encoded(seven(), "png"), "image/png")
FILES = {name: (name, b"{}") for name in ("model", "manifest", "metrics")}
JOB = {"model_id": "mnist_digitnet_v1"}
READ = ("POST", "/v1/read")
ACTIVE = ("GET", "/v1/models/active")
PING = ("GET", "/v1/admin/ping")
UPLOAD = ("POST", "/v1/admin/models/upload")
TRAIN = ("POST", "/v1/train")
STATUS = ("GET", "/v1/train/{request_id}")
EVENTS = ("GET", "/v1/train/{request_id}/events")
CANCEL = ("POST", "/v1/train/{request_id}/cancel")
Call = Callable[[str], httpx.Response]
ErrorCase = tuple[tuple[str, str], Call, int, str]

LIVE_ERRORS: list[ErrorCase] = [
    (READ, lambda u: read_with(u, key=False, file=PNG), 401, "unauthorized"),
    (READ, lambda u: read_with(u, content=b"{}"), 422, "malformed_form"),
    (
        READ,
        lambda u: httpx.post(f"{u}/v1/read", headers=HEADERS, files={"picture": PNG}),
        422,
        "malformed_form",
    ),
    (READ, lambda u: read_with(u, file=("a.png", b"no", "image/png")), 400, "invalid_image"),
    (
        READ,
        lambda u: read_with(u, file=("a.gif", b"GIF89a" + bytes(64), "image/gif")),
        415,
        "unsupported_media_type",
    ),
    (READ, lambda u: read_with(u, file=PNG, flags={"invert": "maybe"}), 400, "invalid_request"),
    (READ, lambda u: read_with(u, file=("a.png", bytes(2 << 20), "image/png")), 413, "too_large"),
    (ACTIVE, lambda u: get(f"{u}/v1/models/active", key=False), 401, "unauthorized"),
    (PING, lambda u: get(f"{u}/v1/admin/ping", key=False), 401, "unauthorized"),
    (UPLOAD, lambda u: upload_with(u, FILES, key=False), 401, "unauthorized"),
    (UPLOAD, lambda u: upload_with(u, {"model": ("m", b"1")}), 422, "malformed_form"),
    (UPLOAD, lambda u: upload_with(u, FILES, model_id="a b"), 400, "invalid_model_id"),
    (
        UPLOAD,
        lambda u: upload_with(u, {f"p{i}": (f"p{i}", b"1") for i in range(40)}),
        413,
        "too_large",
    ),
    (UPLOAD, lambda u: announced_upload(u, 300 << 20), 413, "too_large"),
    (TRAIN, lambda u: post_json(f"{u}/v1/train", JOB, key=False), 401, "unauthorized"),
    (TRAIN, lambda u: post_json(f"{u}/v1/train", {"model_id": "x"}), 400, "invalid_job"),
    (TRAIN, lambda u: post_json(f"{u}/v1/train", "x" * (65 << 10)), 413, "too_large"),
    (STATUS, lambda u: get(f"{u}/v1/train/nope", key=False), 401, "unauthorized"),
    (STATUS, lambda u: get(f"{u}/v1/train/nope"), 404, "not_found"),
    (EVENTS, lambda u: get(f"{u}/v1/train/nope/events", key=False), 401, "unauthorized"),
    (EVENTS, lambda u: get(f"{u}/v1/train/nope/events"), 404, "not_found"),
    (
        CANCEL,
        lambda u: post_json(f"{u}/v1/train/nope/cancel", None, key=False),
        401,
        "unauthorized",
    ),
    (CANCEL, lambda u: post_json(f"{u}/v1/train/nope/cancel", None), 404, "not_found"),
]

BARE_ERRORS: list[ErrorCase] = [
    (READ, lambda u: read_with(u, file=PNG), 503, "not_ready"),
    (TRAIN, lambda u: post_json(f"{u}/v1/train", JOB), 503, "queue_unavailable"),
    (STATUS, lambda u: get(f"{u}/v1/train/x"), 503, "queue_unavailable"),
    (EVENTS, lambda u: get(f"{u}/v1/train/x/events"), 503, "queue_unavailable"),
    (CANCEL, lambda u: post_json(f"{u}/v1/train/x/cancel", None), 503, "queue_unavailable"),
    (PING, lambda u: get(f"{u}/v1/admin/ping"), 403, "forbidden"),
    (UPLOAD, lambda u: upload_with(u, FILES), 403, "forbidden"),
]


@pytest.mark.parametrize(("route", "call", "status", "code"), LIVE_ERRORS)
def test_each_error_of_a_served_route_is_documented(
    live: str, document: Doc, route: tuple[str, str], call: Call, status: int, code: str
) -> None:
    assert_documented_error(document, route, call(live), status, code)


@pytest.mark.parametrize(("route", "call", "status", "code"), BARE_ERRORS)
def test_each_error_without_model_redis_or_keys_is_documented(
    bare: str, document: Doc, route: tuple[str, str], call: Call, status: int, code: str
) -> None:
    assert_documented_error(document, route, call(bare), status, code)


def test_a_conflict_and_a_model_less_readyz_are_documented(
    live: str, bare: str, document: Doc
) -> None:
    job = post_json(f"{live}/v1/train", JOB)
    assert job.status_code == 202, job.text
    cancel = f"{live}/v1/train/{at(job.json(), 'request_id')}/cancel"
    assert post_json(cancel, None).status_code == 202
    assert_documented_error(document, CANCEL, post_json(cancel, None), 409, "conflict")
    ready = get(f"{bare}/readyz")
    assert ready.status_code == 503
    spec = documented(document, "GET", "/readyz", 503)
    ready_schema = obj(at(spec, "content", "application/json", "schema"))
    assert ready_schema == {"$ref": "#/components/schemas/Readiness"}
    jsonschema.validate(ready.json(), {**ready_schema, "components": at(document, "components")})


def test_an_undeclared_method_is_405_naming_the_allowed_ones(live: str) -> None:
    response = httpx.request("TRACE", f"{live}/v1/read", headers=HEADERS)
    assert response.status_code == 405
    assert "POST" in response.headers["allow"].split(", ")
    assert at(response.json(), "code") == "method_not_allowed"


def test_bodies_events_and_the_key_are_declared(document: Doc) -> None:
    def body(path: str, media_type: str) -> Doc:
        return obj(at(document, "paths", path, "post", "requestBody", "content", media_type))

    read_form = obj(body("/v1/read", "multipart/form-data")["schema"])
    assert read_form["required"] == ["file"]
    assert set(obj(read_form["properties"])) == {"file", "invert", "center", "visualize"}
    job = obj(body("/v1/train", "application/json")["schema"])
    assert job["required"] == ["model_id"]
    assert job["additionalProperties"] is False
    upload_form = obj(body("/v1/admin/models/upload", "multipart/form-data")["schema"])
    assert upload_form["required"] == ["model_id", "model", "manifest", "metrics"]
    events = at(document, "paths", EVENTS[1], "get", "responses", "200", "content")
    assert list(obj(events)) == ["text/event-stream"]
    scheme = obj(at(document, "components", "securitySchemes", openapi.API_KEY_SCHEME))
    assert (scheme["type"], scheme["name"], scheme["in"]) == ("apiKey", "X-Api-Key", "header")
    for path, item in obj(document["paths"]).items():
        for method, operation in obj(item).items():
            guarded = "401" in obj(at(operation, "responses"))
            security = obj(operation).get("security")
            assert (security == [{openapi.API_KEY_SCHEME: []}]) is guarded, (method, path)


def test_artifact_codes_are_the_ones_uploads_raise() -> None:
    """`ARTIFACT_CODES` documents what `check_artifact` raises; read from its source."""
    source = Path(upload_module.__file__).read_text()
    raised = set(re.findall(r'InvalidArtifactError\(\s*"([a-z_]+)"', source))
    assert raised == set(openapi.ARTIFACT_CODES)


def test_read_flags_are_documented_as_the_handler_parses_them() -> None:
    flag = re.compile(openapi.FLAG_PATTERN)
    for word in ("true", "FALSE", " yes ", "0", "on", "Off", "", "  "):
        assert flag.search(word), word
    for word in ("2", "truth", "y", "nope", "\ufefftrue"):
        assert not flag.search(word), word
