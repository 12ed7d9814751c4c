"""The HTTP shape of each call, shared by the async and the sync client: headers, the read form,
the job body, and turning an answer (or its absence) into a typed value or a `ServiceError`."""

from __future__ import annotations

import json
import mimetypes
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote

import httpx
from attrs import frozen

from handwriting_ai.client.errors import BAD_RESPONSE, TIMEOUT, UNREACHABLE, ServiceError
from handwriting_ai.client.models import (
    FeedbackAccepted,
    Reading,
    RegistryChange,
    RegistryListing,
    TrainAccepted,
    TrainStatus,
)
from handwriting_ai.client.policy import parse_retry_after
from handwriting_ai.contracts.converter import ContractError, converter, structure
from handwriting_ai.contracts.jobs import TrainJob

REQUEST_ID_HEADER = "X-Request-ID"
API_KEY_HEADER = "X-Api-Key"
LAST_EVENT_ID_HEADER = "Last-Event-ID"
READ_PATH = "/v1/read"
TRAIN_PATH = "/v1/train"
_SNIPPET_CHARS = 200
T = TypeVar(
    "T", Reading, TrainAccepted, TrainStatus, RegistryListing, RegistryChange, FeedbackAccepted
)

Image = bytes | str | os.PathLike[str]


def new_request_id() -> str:
    return uuid.uuid4().hex


def headers(api_key: str, request_id: str, **extra: str) -> dict[str, str]:
    sent = {REQUEST_ID_HEADER: request_id, **extra}
    if api_key:
        sent[API_KEY_HEADER] = api_key
    return sent


@frozen
class Upload:
    """The `file` part of a read."""

    filename: str
    data: bytes
    content_type: str

    def part(self) -> tuple[str, bytes, str]:
        return (self.filename, self.data, self.content_type)


def load_image(
    image: Image, *, filename: str | None = None, content_type: str | None = None
) -> Upload:
    """Bytes as they are, or a file's bytes (a `str` is a path). The content type, unless given,
    is sniffed from the bytes (PNG, JPEG) and else guessed from the name: the service judges by
    content, and the declared type only tells a broken image (400) from another kind (415)."""
    if isinstance(image, bytes):
        data, name = image, filename or "image"
    else:
        path = Path(image)
        data, name = path.read_bytes(), filename or path.name
    return Upload(name, data, content_type or _content_type(data, name))


def _content_type(data: bytes, name: str) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def read_form(*, invert: bool | None, center: bool | None, visualize: bool) -> dict[str, str]:
    """Only the flags the caller set: an unset `invert` lets the service detect the background,
    an unset `center` is the service's default (true)."""
    form = {"invert": invert, "center": center, "visualize": visualize or None}
    return {name: "true" if value else "false" for name, value in form.items() if value is not None}


def job_body(job: TrainJob | Mapping[str, object]) -> dict[str, object]:
    """The JSON body of `POST /v1/train`, always with a request_id: the one retry can then never
    queue a second job (the service answers a repeated request_id with `duplicate: true`)."""
    if isinstance(job, TrainJob):
        unstructured: object = converter.unstructure(job)
        if not isinstance(unstructured, dict):
            raise TypeError("a TrainJob unstructures to a dict")
        body = {str(k): v for k, v in unstructured.items()}
    else:
        body = dict(job)
    if body.get("request_id") is None:
        body["request_id"] = new_request_id()
    return body


def train_path(request_id: str, suffix: str = "") -> str:
    return f"{TRAIN_PATH}/{quote(request_id, safe='')}{suffix}"


MODELS_PATH = "/v1/models"
FEEDBACK_PATH = "/v1/feedback"
ModelAction = Literal["serve", "unserve", "promote", "rollback", "pin", "unpin"]
MODEL_ACTIONS: tuple[ModelAction, ...] = ("serve", "unserve", "promote", "rollback", "pin", "unpin")


def model_path(action: ModelAction, model_id: str, version: str | None = None) -> str:
    """The admin route of a registry action; `promote` needs a version, `pin` takes one."""
    base = f"/v1/admin/models/{quote(model_id, safe='')}"
    if version is not None and action in ("promote", "pin"):
        return f"{base}/versions/{quote(version, safe='')}/{action}"
    if action == "promote":
        raise ValueError("promote needs a version")
    return f"{base}/{action}"


def returned_request_id(response: httpx.Response, sent: str) -> str:
    return response.headers.get(REQUEST_ID_HEADER) or sent


def parse(response: httpx.Response, cls: type[T], request_id: str) -> T:
    """A 2xx answer's body as `cls`; `bad_response` if it is not that."""
    try:
        body: object = response.json()
    except (ValueError, UnicodeDecodeError):
        raise _bad(response, request_id, "the body is not JSON") from None
    if cls is Reading and isinstance(body, dict):
        body = {**body, "request_id": returned_request_id(response, request_id)}
    try:
        return structure(body, cls)
    except ContractError as exc:
        raise _bad(response, request_id, "; ".join(exc.errors)) from None


def error_from(response: httpx.Response, request_id: str) -> ServiceError:
    """The service's `{code, message, request_id}` body as a `ServiceError`; an error answer
    without that body (a proxy's 502 page) is `bad_response` with the status kept."""
    retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
    try:
        body: object = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    fields = body if isinstance(body, dict) else {}
    code, message, rid = fields.get("code"), fields.get("message"), fields.get("request_id")
    if not (isinstance(code, str) and code and isinstance(message, str)):
        return _bad(response, request_id, "not the service's error body", retry_after_s)
    return ServiceError(
        response.status_code,
        code,
        message,
        rid if isinstance(rid, str) and rid else returned_request_id(response, request_id),
        retry_after_s=retry_after_s,
    )


def _bad(
    response: httpx.Response, request_id: str, why: str, retry_after_s: float | None = None
) -> ServiceError:
    snippet = json.dumps(response.text[:_SNIPPET_CHARS])
    return ServiceError(
        response.status_code,
        BAD_RESPONSE,
        f"Unexpected answer (HTTP {response.status_code}, {why}): {snippet}",
        returned_request_id(response, request_id),
        retry_after_s=retry_after_s,
    )


def failure_of(exc: httpx.RequestError, request_id: str) -> ServiceError:
    """No usable answer: a timeout, a refused or dropped connection, an undecodable body."""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return ServiceError(0, TIMEOUT, f"The service did not answer in time ({what}).", request_id)
    if isinstance(exc, httpx.TransportError):
        return ServiceError(
            0, UNREACHABLE, f"The service could not be reached ({what}).", request_id
        )
    return ServiceError(0, BAD_RESPONSE, f"The answer could not be read ({what}).", request_id)
