"""`POST /v1/feedback`: "the read `request_id` was a `label`" becomes a correction on
`digits:feedback`, with the read's 28×28 sample kept by `samples.py`.

One correction per read: a `corrected` marker is set (SET NX) and the entry added in one Lua
script, so two racing corrections cannot both land. A client (by address) may send
`FEEDBACK__RATE_PER_MINUTE` a minute; more get 429 `rate_limited` with `Retry-After`.
"""

from __future__ import annotations

import json
import re
import time

from attrs import frozen
from litestar import Request, post
from litestar.datastructures import State
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.spec import OpenAPIMediaType, RequestBody

from handwriting_ai.api.json_body import JsonBodyError, clip, parse_json
from handwriting_ai.api.openapi import documented, schema_of
from handwriting_ai.api.security import require_api_key
from handwriting_ai.api.state import AppState
from handwriting_ai.api.train import queue_errors
from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import now_iso
from handwriting_ai.contracts.feedback import Correction, correction_fields
from handwriting_ai.contracts.fields import structure_readable
from handwriting_ai.contracts.jobs import REQUEST_ID_PATTERN
from handwriting_ai.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    QueueUnavailableError,
    RateLimitedError,
    TooLargeError,
    UnauthorizedError,
)
from handwriting_ai.logging import get_logger
from handwriting_ai.streams.keys import (
    FEEDBACK_STREAM,
    feedback_rate_key,
    read_corrected_key,
    read_sample_key,
)

log = get_logger("handwriting_ai.feedback")
MAX_BODY_BYTES = 4096
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
_USER_ID_MAX = 2**63 - 1

# KEYS: the read's sample, its "corrected" marker, the stream. ARGV: the marker's TTL, maxlen,
# then the entry's fields as pairs. 0: no such read (expired, never kept); {label}: corrected
# already as that; else the new entry's id.
_CORRECT = """
local ttl = redis.call('TTL', KEYS[1])
if ttl == -2 then return 0 end
local label
for i = 3, #ARGV, 2 do if ARGV[i] == 'label' then label = ARGV[i + 1] end end
if not redis.call('SET', KEYS[2], label, 'NX', 'EX', math.max(ttl, tonumber(ARGV[1]))) then
  return {redis.call('GET', KEYS[2])}
end
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
"""
MARKER_MIN_TTL_S = 60  # a read whose sample expires in a second still keeps its marker a while


def _record(raw: object) -> dict[str, object] | None:
    """The kept read (`samples.sample_record`'s JSON), or None."""
    if not isinstance(raw, str | bytes):
        return None
    try:
        data: object = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


FEEDBACK_BODY = RequestBody(
    required=True,
    description="A correction of an earlier read.",
    content={
        "application/json": OpenAPIMediaType(
            schema=schema_of(
                {
                    "type": "object",
                    "required": ["request_id", "label"],
                    "additionalProperties": False,
                    "properties": {
                        "request_id": {
                            "type": "string",
                            "pattern": REQUEST_ID_PATTERN,
                            "description": "The read's request_id (its body and X-Request-ID).",
                        },
                        "label": {"type": "integer", "minimum": 0, "maximum": 9},
                        "user_id": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": _USER_ID_MAX,
                            "description": "Who corrected it (a bot's user); 0 when unknown.",
                        },
                    },
                }
            )
        )
    },
)


@frozen
class FeedbackAccepted:
    request_id: str
    label: int
    predicted: int
    entry_id: str  # the correction's entry on digits:feedback


def _int(body: dict[str, object], name: str, low: int, high: int, default: int | None) -> int:
    value = body.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequestError(f"'{name}' must be an integer from {low} to {high}.")
    return value


def _parse(raw: bytes) -> tuple[str, int, int]:
    try:
        body = parse_json(raw.strip() or b"null")
    except JsonBodyError as exc:
        raise InvalidRequestError(f"The body is not JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError('Expected {"request_id": "...", "label": 0-9}.')
    unknown = sorted(set(body) - {"request_id", "label", "user_id"})
    if unknown:
        raise InvalidRequestError(f"Unknown field {clip(unknown[0], 64)!r}.")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise InvalidRequestError("'request_id' must be the request_id of an earlier read.")
    return request_id, _int(body, "label", 0, 9, None), _int(body, "user_id", 0, _USER_ID_MAX, 0)


def _client(request: Request[object, object, State]) -> str:
    return request.client.host if request.client is not None else "unknown"


@post(
    "/v1/feedback",
    status_code=201,
    guards=[require_api_key],
    request_max_body_size=MAX_BODY_BYTES,
    summary="Correct an earlier read: its sample and the right label go to digits:feedback",
    **documented(
        InvalidRequestError,
        UnauthorizedError,
        NotFoundError,
        ConflictError,
        TooLargeError,
        RateLimitedError,
        QueueUnavailableError,
        body=FEEDBACK_BODY,
    ),
)
async def submit_feedback(request: Request[object, object, State]) -> FeedbackAccepted:
    state = AppState.of(request.app.state)
    try:
        raw = await request.body()
    except RequestEntityTooLarge:
        raise TooLargeError(f"The body is over {MAX_BODY_BYTES} bytes.") from None
    request_id, label, user_id = _parse(raw)
    redis = state.queue()
    settings = state.settings.feedback
    with queue_errors():
        if settings.rate_per_minute > 0:
            minute = int(time.time() // 60)
            key = feedback_rate_key(_client(request), minute)
            async with redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, 120)
                count, _ = await pipe.execute()
            if int(count) > settings.rate_per_minute:
                retry_after = 60 - int(time.time() % 60)
                raise RateLimitedError(
                    f"More than {settings.rate_per_minute} corrections a minute from this client.",
                    retry_after_s=max(1, retry_after),
                )
        kept = _record(await redis.get(read_sample_key(request_id)))
        if kept is None:
            raise NotFoundError(
                f"No read {request_id!r} to correct: unknown, or older than"
                f" {settings.sample_ttl_s} s (FEEDBACK__SAMPLE_TTL_S)."
            )
        try:
            correction = structure_readable(
                {
                    "request_id": request_id,
                    "label": label,
                    "predicted": kept.get("digit"),
                    "confidence": kept.get("confidence"),
                    "model_id": kept.get("model_id"),
                    "user_id": user_id,
                    "ts": now_iso(),
                    "sample": kept.get("sample"),
                },
                Correction,
            )
        except ContractError as exc:  # a kept read edited by hand
            raise NotFoundError(f"The read {request_id!r} was not kept whole: {exc}") from None
        flat = [part for pair in correction_fields(correction).items() for part in pair]
        answer: object = await redis.eval(
            _CORRECT,
            3,
            read_sample_key(request_id),
            read_corrected_key(request_id),
            FEEDBACK_STREAM,
            MARKER_MIN_TTL_S,
            settings.maxlen,
            *flat,
        )
    if answer == 0:
        raise NotFoundError(f"No read {request_id!r} to correct: it has just expired.")
    if isinstance(answer, list):
        raise ConflictError(f"The read {request_id!r} was already corrected as {answer[0]}.")
    entry_id = str(answer)
    log.info(
        "read_corrected",
        corrected_request_id=request_id,
        label=label,
        predicted=correction.predicted,
        entry_id=entry_id,
        user_id=user_id,
    )
    return FeedbackAccepted(request_id, label, correction.predicted, entry_id)
