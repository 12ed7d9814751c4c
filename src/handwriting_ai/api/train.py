"""Training over HTTP: queue a job, read its status, follow its events (SSE), cancel it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from attrs import frozen
from litestar import Request, get, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.params import FromPath
from litestar.response import Stream
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from handwriting_ai.api.events_sse import event_stream
from handwriting_ai.api.json_body import JsonBodyError, clip, parse_json
from handwriting_ai.api.openapi import EVENT_STREAM, LAST_EVENT_ID, documented, train_job_body
from handwriting_ai.api.security import require_api_key
from handwriting_ai.api.state import AppState
from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import TrainFailed, now_iso
from handwriting_ai.contracts.jobs import job_from_json
from handwriting_ai.errors import (
    AppError,
    ConflictError,
    NotFoundError,
    OverloadedError,
    QueueFullError,
    QueueUnavailableError,
    TooLargeError,
    UnauthorizedError,
)
from handwriting_ai.logging import get_logger
from handwriting_ai.models import UnknownArchError, arch_for_model_id
from handwriting_ai.streams.enqueue import enqueue_job
from handwriting_ai.streams.follow import STREAM_ID, QueuedJob, queued_job
from handwriting_ai.streams.keys import job_events_key, status_key
from handwriting_ai.streams.publisher import EventPublisher
from handwriting_ai.streams.status import JobStatus, read_status

log = get_logger("handwriting_ai.train")
CANCEL_PUBLISH_TIMEOUT_S = 5.0
# A job is ten short fields (notes at most 1,000 characters): 64 KiB is generous, and keeps what
# a hostile body can cost (parsing, error messages) small. Over it: 413 `too_large`.
MAX_JOB_BODY_BYTES = 64 * 1024


class InvalidJobError(AppError):
    code, status_code = "invalid_job", 400


@frozen
class TrainAccepted:
    request_id: str
    entry_id: str
    status: str
    duplicate: bool
    status_url: str
    events_url: str


@frozen
class TrainStatus:
    request_id: str
    model_id: str
    user_id: int
    status: str
    entry_id: str  # the job's entry in `digits:train`
    attempts: int
    progress: dict[str, object]
    result: dict[str, object]
    error_kind: str
    message: str
    created_at: str
    updated_at: str
    worker: str
    retry_at: str
    cancel_requested: bool
    crashes: int  # runs that ended their worker (the poison cap counts these)
    failures: int  # system failures (the retry budget counts these)


def status_body(status: JobStatus) -> TrainStatus:
    return TrainStatus(
        request_id=status.request_id,
        model_id=status.model_id,
        user_id=status.user_id,
        status=status.status,
        entry_id=status.entry_id,
        attempts=status.attempts,
        progress=dict(status.progress),
        result=dict(status.result),
        error_kind=status.error_kind,
        message=status.message,
        created_at=status.created_at,
        updated_at=status.updated_at,
        worker=status.worker,
        retry_at=status.retry_at,
        cancel_requested=status.cancel_requested,
        crashes=status.crashes,
        failures=status.failures,
    )


def _user_id(text: str) -> int:
    return int(text) if text.isascii() and text.isdecimal() and len(text) <= 18 else 0


def _entry_time(entry_id: str) -> str:
    """When an entry was added: its id's milliseconds, as `now_iso` writes times."""
    ms = int(entry_id.partition("-")[0])
    when = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return when.replace("+00:00", "Z")


def queued_body(request_id: str, queued: QueuedJob) -> TrainStatus:
    """A job added with `redis-cli XADD` that no worker has taken yet: it has no status hash,
    only its entry, and is `queued` like one sent to `POST /v1/train`."""
    added = _entry_time(queued.entry_id)
    return TrainStatus(
        request_id=request_id,
        model_id=queued.fields.get("model_id", ""),
        user_id=_user_id(queued.fields.get("user_id", "0")),
        status="queued",
        entry_id=queued.entry_id,
        attempts=0,
        progress={},
        result={},
        error_kind="",
        message="",
        created_at=added,
        updated_at=added,
        worker="",
        retry_at="",
        cancel_requested=False,
        crashes=0,
        failures=0,
    )


@contextmanager
def queue_errors() -> Iterator[None]:
    """Redis down or slow is the queue being unavailable (503); inference is unaffected."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        log.warning("queue_unavailable", error=str(exc))
        raise QueueUnavailableError("The training queue (Redis) is unreachable.") from None


async def _read_body(request: Request[object, object, State]) -> object:
    try:
        raw = await request.body()
    except RequestEntityTooLarge:
        raise TooLargeError(
            f"The body is over {MAX_JOB_BODY_BYTES} bytes, the limit for a training job."
        ) from None
    try:
        return parse_json(raw.strip() or b"null")
    except JsonBodyError as exc:
        raise InvalidJobError(f"The body is not JSON: {exc}.") from None


@post(
    "/v1/train",
    status_code=202,
    guards=[require_api_key],
    request_max_body_size=MAX_JOB_BODY_BYTES,
    summary="Queue a training job (digits.train.v1 fields as JSON); idempotent by request_id",
    **documented(
        InvalidJobError,
        UnauthorizedError,
        TooLargeError,
        QueueUnavailableError,
        QueueFullError,
        body=train_job_body(),
    ),
)
async def submit_train(request: Request[object, object, State]) -> TrainAccepted:
    state = AppState.of(request.app.state)
    try:
        job = job_from_json(await _read_body(request), default_request_id=uuid.uuid4().hex)
    except ContractError as exc:
        raise InvalidJobError("; ".join(clip(error) for error in exc.errors)) from None
    try:
        arch_for_model_id(job.model_id)
    except UnknownArchError as exc:
        raise InvalidJobError(f"{exc} @ $.model_id") from None
    redis = state.queue()
    with queue_errors():
        queued = await enqueue_job(redis, job, maxlen=state.settings.streams.jobs_maxlen)
        existing = None if queued.created else await read_status(redis, job.request_id)
    log.info(
        "train_queued",
        request_id=job.request_id,
        model_id=job.model_id,
        entry_id=queued.entry_id,
        duplicate=not queued.created,
    )
    base = f"/v1/train/{job.request_id}"
    return TrainAccepted(
        request_id=job.request_id,
        entry_id=queued.entry_id,
        status="queued" if existing is None else existing.status,
        duplicate=not queued.created,
        status_url=base,
        events_url=f"{base}/events",
    )


async def _status_or_404(redis: Redis, request_id: str) -> JobStatus:
    status = await read_status(redis, request_id)
    if status is None:
        raise NotFoundError(f"No training job {request_id!r}.")
    return status


@get(
    "/v1/train/{request_id:str}",
    guards=[require_api_key],
    summary="A training job's status",
    **documented(UnauthorizedError, NotFoundError, QueueUnavailableError),
)
async def train_status(
    request: Request[object, object, State], request_id: FromPath[str]
) -> TrainStatus:
    redis = AppState.of(request.app.state).queue()
    with queue_errors():
        status = await read_status(redis, request_id)
        if status is not None:
            return status_body(status)
        queued = await queued_job(redis, request_id)
    if queued is None:
        raise NotFoundError(f"No training job {request_id!r}.")
    return queued_body(request_id, queued)


@get(
    "/v1/train/{request_id:str}/events",
    guards=[require_api_key],
    summary="A training job's events (Server-Sent Events)",
    **documented(
        UnauthorizedError,
        NotFoundError,
        QueueUnavailableError,
        OverloadedError,
        success=EVENT_STREAM,
        headers=[LAST_EVENT_ID],
    ),
)
async def train_events(
    request: Request[object, object, State], request_id: FromPath[str]
) -> Stream:
    """Replays the job from its first event (or after `Last-Event-ID`), then follows it live;
    the stream ends after the final event. A job still waiting in `digits:train` is followed
    too: keep-alives until a worker starts it. 503 `overloaded` beyond `EVENTS__MAX_STREAMS`."""
    state = AppState.of(request.app.state)
    state.queue()
    hub = state.event_hub()
    slot = hub.reserve()  # refused before it costs Redis anything
    try:
        with queue_errors():
            if not await hub.job_known(request_id):
                raise NotFoundError(f"No training job {request_id!r}.")
    except BaseException:
        slot.release()
        raise
    last = request.headers.get("last-event-id", "").strip()
    after_id = last if STREAM_ID.match(last) else "0-0"
    body: AsyncIterator[bytes] = event_stream(
        hub,
        request_id,
        after_id=after_id,
        keepalive_s=state.settings.events.keepalive_s,
        slot=slot,
    )
    # The body releases its slot when it ends; the background task when the client left
    # between two frames, where the body is not resumed to see it.
    return Stream(
        body,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(slot.release),
    )


# Atomic so that a worker taking the job at the same moment sees either `queued` or `cancelled`.
# A job added with `redis-cli XADD` has no status until a worker takes it: given its entry
# (ARGV[3..7]), the status is created here, `cancelled`, and the worker that takes the entry
# later skips it as final.
_CANCEL = """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then
  if ARGV[3] == '' then return '' end
  redis.call('HSET', KEYS[1], 'request_id', ARGV[4], 'model_id', ARGV[5], 'user_id', ARGV[6],
    'entry_id', ARGV[3], 'attempts', '0', 'created_at', ARGV[7], 'status', 'queued')
  s = 'queued'
end
if s == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel_requested', '1', 'error_kind', 'user',
    'message', 'cancelled by request', 'updated_at', ARGV[1])
  redis.call('HDEL', KEYS[1], 'retry_at')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
elseif s == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', ARGV[1])
end
return s
"""


@post(
    "/v1/train/{request_id:str}/cancel",
    status_code=202,
    guards=[require_api_key],
    summary="Cancel a queued job now, or ask a running one to stop between batches",
    **documented(UnauthorizedError, NotFoundError, ConflictError, QueueUnavailableError),
)
async def cancel_train(
    request: Request[object, object, State], request_id: FromPath[str]
) -> TrainStatus:
    state = AppState.of(request.app.state)
    redis = state.queue()
    ttl_s = state.settings.streams.failure_ttl_s
    with queue_errors():
        queued = None
        if not await redis.exists(status_key(request_id)):
            queued = await queued_job(redis, request_id)
        before = await redis.eval(
            _CANCEL,
            2,
            status_key(request_id),
            job_events_key(request_id),
            now_iso(),
            str(ttl_s),
            *_queued_args(request_id, queued),
        )
        if not isinstance(before, str) or not before:
            raise NotFoundError(f"No training job {request_id!r}.")
        status = await _status_or_404(redis, request_id)
        if before not in ("queued", "running"):
            raise ConflictError(f"Job {request_id!r} is already {before}.")
        if before == "queued":
            await _publish_cancelled(state, redis, status)
    log.info("train_cancel", request_id=request_id, was=before, status=status.status)
    return status_body(status)


def _queued_args(request_id: str, queued: QueuedJob | None) -> list[str]:
    if queued is None:
        return [""]
    fields = queued.fields
    user_id = str(_user_id(fields.get("user_id", "0")))
    added = _entry_time(queued.entry_id)
    return [queued.entry_id, request_id, fields.get("model_id", ""), user_id, added]


async def _publish_cancelled(state: AppState, redis: Redis, status: JobStatus) -> None:
    """No worker owns a queued job, so the API publishes its final event: followers stop."""
    publisher = EventPublisher(
        redis, maxlen=state.settings.events.maxlen, job_ttl_s=state.settings.streams.failure_ttl_s
    )
    event = TrainFailed(
        request_id=status.request_id,
        user_id=status.user_id,
        model_id=status.model_id,
        ts=now_iso(),
        error_kind="user",
        message="cancelled by request",
        attempt=max(1, status.attempts),
        will_retry=False,
        cancelled=True,
    )
    try:
        await asyncio.wait_for(publisher.publish(event), CANCEL_PUBLISH_TIMEOUT_S)
    except TimeoutError:
        raise QueueUnavailableError("Cancelled; its final event could not be published.") from None
