"""The job status hash (`digits:job:<request_id>`): what `GET /v1/train/{id}` shows.

Flat string fields: `request_id`, `model_id`, `user_id`, `status`, `attempts`, `entry_id`,
`created_at`, `updated_at`, `worker`, `progress` (JSON), `result` (JSON), `error_kind`,
`message`, `cancel_requested` ("1" once asked), `retry_at` (ISO, while waiting for a retry),
`crashes` (runs that never reached an outcome: their worker died), `failures` (system failures).
A job in a final state expires after the result or failure TTL; running jobs never expire.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal

from attrs import frozen
from redis.asyncio import Redis

from handwriting_ai.contracts.events import now_iso
from handwriting_ai.streams.keys import job_events_key, status_key

Status = Literal["queued", "running", "completed", "failed", "dead", "cancelled"]
FINAL: frozenset[str] = frozenset({"completed", "failed", "dead", "cancelled"})
JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


@frozen
class JobStatus:
    request_id: str
    model_id: str
    user_id: int
    status: str
    attempts: int
    entry_id: str
    created_at: str
    updated_at: str
    worker: str
    progress: dict[str, JsonValue]
    result: dict[str, JsonValue]
    error_kind: str
    message: str
    cancel_requested: bool
    retry_at: str
    crashes: int = 0
    failures: int = 0

    @property
    def final(self) -> bool:
        return self.status in FINAL


def _json_object(raw: str | None) -> dict[str, JsonValue]:
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # hand-written garbage in Redis: show nothing
        return {}
    return value if isinstance(value, dict) else {}


def parse_status(fields: Mapping[str, str]) -> JobStatus | None:
    """Pure: the hash's fields (decoded) -> JobStatus; None for a missing hash."""
    if not fields or "status" not in fields:
        return None
    attempts = fields.get("attempts", "0")
    user_id = fields.get("user_id", "0")
    crashes, failures = fields.get("crashes", "0"), fields.get("failures", "0")
    return JobStatus(
        request_id=fields.get("request_id", ""),
        model_id=fields.get("model_id", ""),
        user_id=_count(user_id),
        status=fields["status"],
        attempts=_count(attempts),
        entry_id=fields.get("entry_id", ""),
        created_at=fields.get("created_at", ""),
        updated_at=fields.get("updated_at", ""),
        worker=fields.get("worker", ""),
        progress=_json_object(fields.get("progress")),
        result=_json_object(fields.get("result")),
        error_kind=fields.get("error_kind", ""),
        message=fields.get("message", ""),
        cancel_requested=fields.get("cancel_requested") == "1",
        retry_at=fields.get("retry_at", ""),
        crashes=_count(crashes),
        failures=_count(failures),
    )


def _count(text: str) -> int:
    """ASCII digits only (`'²'.isdigit()` is true and `int('²')` raises); else 0."""
    return int(text) if text.isascii() and text.isdecimal() and len(text) <= 19 else 0


async def read_status(redis: Redis, request_id: str) -> JobStatus | None:
    raw = await redis.hgetall(status_key(request_id))
    return parse_status({_s(k): _s(v) for k, v in raw.items()})


async def update_status(
    redis: Redis,
    request_id: str,
    fields: Mapping[str, str | int | float],
    *,
    ttl_s: int | None = None,
) -> None:
    """Write fields (plus `updated_at`); a final state sets the expiry of status and events."""
    key = status_key(request_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={**{k: str(v) for k, v in fields.items()}, "updated_at": now_iso()})
        if ttl_s is not None:
            pipe.expire(key, ttl_s)
            pipe.expire(job_events_key(request_id), ttl_s)
        else:
            pipe.persist(key)
        await pipe.execute()


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
