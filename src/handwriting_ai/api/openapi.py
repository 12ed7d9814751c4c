"""What the OpenAPI document says that Litestar cannot see from the handlers.

Clients are generated from `/schema/openapi.json`, so it must say what the service does. The
handlers read their bodies raw (for their limits and error codes), so the bodies are declared
here; every error a route answers comes from the `AppError` classes it names in `documented(...)`,
grouped by status with their codes, all in the one `{code, message, request_id}` body. A route
that answers 401 is behind the `X-Api-Key` guard, so it is documented with the key's scheme.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import TypedDict

from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Components,
    Encoding,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)

from handwriting_ai.api.schemas import ErrorBody
from handwriting_ai.contracts.events import EVENT_CLASSES
from handwriting_ai.contracts.fields import JSON
from handwriting_ai.contracts.jobs import JOB_TYPE, SAFE_ID_PATTERN
from handwriting_ai.contracts.schema_gen import BOOL_PATTERN, schema_files
from handwriting_ai.errors import (
    AppError,
    InvalidArtifactError,
    OverloadedError,
    RateLimitedError,
    UnauthorizedError,
)
from handwriting_ai.models import list_models

API_KEY_SCHEME = "ApiKey"
API_KEY: list[SecurityRequirement] = [{API_KEY_SCHEME: []}]
# The codes `InvalidArtifactError` is raised with (`inference/upload.py`; a test keeps them equal).
ARTIFACT_CODES = (
    "invalid_model_id",
    "invalid_manifest",
    "invalid_metrics",
    "model_id_mismatch",
    "unknown_arch",
    "invalid_weights",
)
# Errors sent with `Retry-After`.
_RETRY_AFTER: tuple[type[AppError], ...] = (OverloadedError, RateLimitedError)

DESCRIPTION = """\
Reads handwritten digits and trains the models behind them.

Every error answers `{code, message, request_id}`; `request_id` is also the `X-Request-ID` \
response header (send your own to correlate). Each operation lists the statuses it answers and \
the codes each carries. Before any route, the server's edge may answer 408 `timeout` (headers \
or body too slow) or 503 `overloaded` with `Retry-After` (too many connections), with an empty \
`request_id`; an unknown path answers 404 `not_found`, an undeclared method 405 \
`method_not_allowed` with `Allow`.
"""


def components() -> Components:
    return Components(
        security_schemes={
            API_KEY_SCHEME: SecurityScheme(
                type="apiKey",
                name="X-Api-Key",
                security_scheme_in="header",
                description="Required once the service sets SECURITY__API_KEY. Uploads and "
                "/v1/admin/ping take SECURITY__ADMIN_KEY when it is set (403 when no key is set).",
            )
        }
    )


def codes_of(error: type[AppError]) -> tuple[str, ...]:
    return ARTIFACT_CODES if error is InvalidArtifactError else (error.code,)


def error_responses(errors: Sequence[type[AppError]]) -> dict[int, ResponseSpec]:
    """One response per status, in the real error body, naming every code it carries."""
    codes: dict[int, list[str]] = {}
    for error in errors:
        found = codes.setdefault(error.status_code, [])
        found.extend(c for c in codes_of(error) if c not in found)
    return {
        status: ResponseSpec(
            data_container=ErrorBody,
            generate_examples=False,
            description=f"{HTTPStatus(status).phrase}; `code`: "
            + ", ".join(f"`{c}`" for c in found)
            + ".",
        )
        for status, found in sorted(codes.items())
    }


class RouteDoc(TypedDict):
    """Keyword arguments for a route decorator: `@get(..., **documented(...))`."""

    responses: dict[int, ResponseSpec]
    operation_class: type[Operation]
    security: list[SecurityRequirement] | None


def documented(
    *errors: type[AppError],
    body: RequestBody | None = None,
    success: OpenAPIResponse | None = None,
    headers: Sequence[Parameter] = (),
    responses: Mapping[int, ResponseSpec] | None = None,
) -> RouteDoc:
    """The route's documentation: its error statuses (from `errors`), its request body, its
    success response when Litestar's own would be wrong (an event stream), request headers it
    reads, and other responses whose body is not an error (`/readyz`'s 503)."""
    declared = {**error_responses(errors), **(responses or {})}
    retry_after = {e.status_code for e in errors if issubclass(e, _RETRY_AFTER)}
    statuses = {str(status) for status in declared}

    @dataclasses.dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            if body is not None:
                self.request_body = body
            if headers:
                self.parameters = [*(self.parameters or []), *headers]
            # Litestar adds its own 400 (a validation body we never send) to routes with path
            # parameters: only the statuses declared here are answered, in our body.
            kept: dict[str, OpenAPIResponse | Reference] = {}
            for status, response in (self.responses or {}).items():
                if status.startswith("2"):
                    kept[status] = success or response
                elif status in statuses:
                    kept[status] = response
            for code in retry_after:
                found = kept.get(str(code))
                if isinstance(found, OpenAPIResponse):
                    found.headers = {**(found.headers or {}), "Retry-After": _RETRY_HEADER}
            self.responses = kept

    return RouteDoc(
        responses=declared,
        operation_class=DocumentedOperation,
        security=API_KEY if UnauthorizedError in errors else None,
    )


_RETRY_HEADER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
    description="Seconds to wait before retrying (sent with `overloaded`).",
)


# What `str.strip()` removes around a flag (`contracts.converter.parse_bool`): `\s` differs.
_BLANK = "[\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"
FLAG_PATTERN = f"^{_BLANK}(?:{BOOL_PATTERN[2:-2]})?{_BLANK}$"


def _flag(description: str, default: str | None) -> Schema:
    # A form part is text: the flag is the word the handler parses, not a JSON boolean.
    return Schema(
        type=OpenAPIType.STRING,
        pattern=FLAG_PATTERN,
        default=default,
        description=f"{description} true/false, 1/0, yes/no or on/off, any case; empty: unset.",
    )


READ_FORM = RequestBody(
    required=True,
    description="The image as the `file` part; the flags as text parts.",
    content={
        "multipart/form-data": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                required=["file"],
                properties={
                    "file": Schema(
                        type=OpenAPIType.STRING,
                        format=OpenAPIFormat.BINARY,
                        description="A PNG or JPEG image (judged by its content), at most "
                        "DIGITS__MAX_IMAGE_MB and DIGITS__MAX_IMAGE_SIDE_PX.",
                    ),
                    "invert": _flag(
                        "Light ink on a dark background (true) or not (false); unset: detected.",
                        None,
                    ),
                    "center": _flag("Center the digit by its mass before reading.", "true"),
                    "visualize": _flag(
                        "Return the preprocessed 28x28 input as `visual_png_b64`.", "false"
                    ),
                },
            ),
            encoding={"file": Encoding(content_type="image/png, image/jpeg")},
        )
    },
)


def _file(description: str) -> Schema:
    return Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, description=description)


UPLOAD_FORM = RequestBody(
    required=True,
    description="A trained model as a worker hands it in: the id, then three file parts.",
    content={
        "multipart/form-data": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                required=["model_id", "model", "manifest", "metrics"],
                properties={
                    "model_id": Schema(
                        type=OpenAPIType.STRING,
                        pattern=SAFE_ID_PATTERN,
                        description="The model's id; must equal the manifest's.",
                    ),
                    "model": _file("model.pt: the state dict (torch, weights only)."),
                    "manifest": _file("manifest.json, at most 1 MiB."),
                    "metrics": _file("metrics.json (a JSON object), at most 1 MiB."),
                },
            ),
            encoding={
                "manifest": Encoding(content_type="application/json"),
                "metrics": Encoding(content_type="application/json"),
            },
        )
    },
)


def _schema_keys() -> dict[str, str]:
    """JSON Schema keyword -> `Schema` field (`exclusiveMinimum` -> `exclusive_minimum`)."""
    keys = {}
    for field in dataclasses.fields(Schema):
        alias = field.metadata.get("alias")
        head, *rest = field.name.split("_")
        keys[alias or head + "".join(p.title() for p in rest)] = field.name
    return keys


_SCHEMA_KEYS = _schema_keys()


def schema_of(document: Mapping[str, JSON]) -> Schema:
    """A JSON Schema document as Litestar's `Schema` (the subset our generators write); an
    unknown keyword fails loudly rather than vanishing from the document."""
    schema = Schema()
    for key, value in document.items():
        if key == "$schema":
            continue
        name = _SCHEMA_KEYS[key]
        converted: object = value
        if key == "type":
            types = value if isinstance(value, list) else [value]
            converted = (
                [OpenAPIType(str(t)) for t in types] if len(types) > 1 else OpenAPIType(str(value))
            )
        elif key == "properties" and isinstance(value, dict):
            converted = {k: schema_of(_object(v)) for k, v in value.items()}
        elif key in ("items", "not", "contentSchema") and isinstance(value, dict):
            converted = schema_of(value)
        elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
            converted = [schema_of(_object(v)) for v in value]
        setattr(schema, name, converted)
    return schema


def _object(value: JSON) -> Mapping[str, JSON]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON Schema object, got {value!r}")
    return value


def arch_id_pattern() -> str:
    """A safe model id holding a registered arch between underscores (`arch_for_model_id`)."""
    archs = "|".join(list_models())
    part = "[A-Za-z0-9_.-]*"
    return f"^(?:[A-Za-z0-9]{part}_)?(?:{archs})(?:_{part})?$"


def train_job_body() -> RequestBody:
    """The `digits.train.v1` job's JSON form, as generated for `streams/`; the API also needs a
    registered arch in `model_id` (`mnist_digitnet_v1`), so the document says so."""
    job = dict(schema_files()[f"{JOB_TYPE}.json"])
    properties = dict(_object(job["properties"]))
    model_id = dict(_object(properties["model_id"]))
    model_id["pattern"] = arch_id_pattern()
    model_id["maxLength"] = 64
    model_id["description"] = (
        f"{model_id.get('description', '')} `<dataset>_<arch>_<tag>`: the id names a "
        f"registered arch ({', '.join(list_models())}) between underscores."
    )
    properties["model_id"] = model_id
    # JSON clients send null for "none": the API makes one (`job_from_json`).
    request_id = dict(_object(properties["request_id"]))
    request_id["type"] = ["string", "null"]
    request_id["description"] = f"{request_id.get('description', '')} Absent or null: one is made."
    properties["request_id"] = request_id
    job["properties"] = properties
    return RequestBody(
        required=True,
        description="A training job; only `model_id` is required.",
        content={"application/json": OpenAPIMediaType(schema=schema_of(job))},
    )


EVENT_STREAM = OpenAPIResponse(
    description="The job's events as Server-Sent Events, from the first (or after "
    "`Last-Event-ID`), then live; the stream ends after the final event (`completed`, or "
    "`failed` without retry). Comment lines keep the connection open.",
    headers={"Cache-Control": OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING))},
    content={
        # One event, as OpenAPI 3.1 documents an event stream (3.2's `itemSchema`).
        "text/event-stream": OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.OBJECT,
                required=["event", "data", "id"],
                properties={
                    "event": Schema(type=OpenAPIType.STRING, enum=list(EVENT_CLASSES)),
                    "data": Schema(
                        type=OpenAPIType.STRING,
                        content_media_type="application/json",
                        description="The event, one JSON document (streams/schemas/<type>.json).",
                    ),
                    "id": Schema(
                        type=OpenAPIType.STRING,
                        pattern=r"^[0-9]{1,20}-[0-9]{1,20}$",
                        description="The entry id; send it back as `Last-Event-ID` to resume.",
                    ),
                },
            )
        )
    },
)

LAST_EVENT_ID = Parameter(
    name="Last-Event-ID",
    param_in="header",
    required=False,
    schema=Schema(type=OpenAPIType.STRING),
    description="Resume after this event id (what a dropped stream's client last saw); "
    "anything not an entry id starts from the first event.",
)
