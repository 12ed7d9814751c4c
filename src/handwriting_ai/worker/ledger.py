"""A job's bookkeeping in Redis: its status while it runs, and the final writes that end with XACK.

Each ending (completed, retry scheduled, dead letter, cancelled, skipped) stores its status and
acknowledges the entry in one MULTI or Lua step, so a crash never leaves an acknowledged job
without its outcome. The events are published before this step by the caller.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from handwriting_ai.contracts.events import now_iso
from handwriting_ai.contracts.jobs import dead_letter, dead_letter_to_fields
from handwriting_ai.streams.keys import (
    DEAD_STREAM,
    JOBS_GROUP,
    JOBS_STREAM,
    RETRY_ZSET,
    job_events_key,
    job_lock_key,
    status_key,
)

# ZADD the retry and XACK the failed entry in one step: the job is always in exactly one place.
_SCHEDULE_RETRY = """
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[3], 'status', 'queued', 'retry_at', ARGV[5], 'updated_at', ARGV[6],
  'error_kind', 'system', 'message', ARGV[7])
redis.call('PERSIST', KEYS[3])
redis.call('DEL', KEYS[4])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"""

# Move due retries back onto the jobs stream; ZREM first, so two workers never both move one.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local flat = cjson.decode(member)
    local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(flat))
    for i = 1, #flat, 2 do
      if flat[i] == 'request_id' then
        redis.call('HSET', ARGV[4] .. flat[i + 1], 'entry_id', id, 'retry_at', '')
      end
    end
  end
end
return #due
"""

_LOCK = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] and string.sub(held, -#ARGV[2] - 1) ~= ' ' .. ARGV[2] then
  return held
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return false
"""


def _iso_at(epoch_s: float) -> str:
    stamp = datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


async def ensure_status(
    redis: Redis, request_id: str, *, model_id: str, user_id: int, entry_id: str
) -> None:
    """A job added with plain `redis-cli XADD` has no status hash yet: create the fields the API
    would have written, without overwriting any it did write."""
    key = status_key(request_id)
    now = now_iso()
    async with redis.pipeline(transaction=True) as pipe:
        for name, value in (
            ("request_id", request_id),
            ("model_id", model_id),
            ("user_id", str(user_id)),
            ("created_at", now),
            ("attempts", "0"),
            ("status", "queued"),
            ("entry_id", entry_id),
        ):
            pipe.hsetnx(key, name, value)
        await pipe.execute()


async def take_lock(
    redis: Redis, request_id: str, *, consumer: str, entry_id: str, ttl_s: int
) -> str | None:
    """Mark `entry_id` as the running copy of the job. Returns the holder when another entry of
    the same request_id is running (a duplicate XADD); the same entry may take it over."""
    held: object = await redis.eval(
        _LOCK, 1, job_lock_key(request_id), f"{consumer} {entry_id}", entry_id, ttl_s
    )
    return held if isinstance(held, str) and held else None


async def refresh_locks(redis: Redis, request_ids: list[str], *, ttl_s: int) -> None:
    if not request_ids:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for request_id in request_ids:
            pipe.expire(job_lock_key(request_id), ttl_s)
        await pipe.execute()


async def mark_running(redis: Redis, request_id: str, *, consumer: str, entry_id: str) -> int:
    """Status `running` with one more attempt; returns the attempt number (from 1)."""
    key = status_key(request_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(key, "attempts", 1)
        pipe.hset(
            key,
            mapping={
                "status": "running",
                "worker": consumer,
                "entry_id": entry_id,
                "retry_at": "",
                "updated_at": now_iso(),
            },
        )
        pipe.persist(key)
        replies = await pipe.execute()
    attempts: object = replies[0]
    return int(attempts) if isinstance(attempts, int | str) else 1


async def set_progress(redis: Redis, request_id: str, progress: Mapping[str, int]) -> None:
    await redis.hset(
        status_key(request_id),
        mapping={"progress": json.dumps(dict(progress)), "updated_at": now_iso()},
    )


async def finish(
    redis: Redis,
    request_id: str,
    entry_id: str,
    fields: Mapping[str, str],
    *,
    ttl_s: int,
) -> None:
    """Store a final status (completed, failed, dead, cancelled), expire it, XACK: one MULTI."""
    key = status_key(request_id)
    async with redis.pipeline(transaction=True) as pipe:
        mapping: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}
        mapping.update({"retry_at": "", "updated_at": now_iso()})
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, ttl_s)
        pipe.expire(job_events_key(request_id), ttl_s)
        pipe.delete(job_lock_key(request_id))
        pipe.xack(JOBS_STREAM, JOBS_GROUP, entry_id)
        await pipe.execute()


async def finish_dead(
    redis: Redis,
    request_id: str,
    entry_id: str,
    entry_fields: Mapping[str, str],
    *,
    status: str,
    error_kind: str,
    reason: str,
    deliveries: int,
    ttl_s: int,
) -> None:
    """Dead letter (original fields + reason), final status and XACK in one MULTI."""
    letter = dead_letter(
        entry_fields, entry_id=entry_id, reason=reason, deliveries=max(1, deliveries), ts=now_iso()
    )
    key = status_key(request_id)
    async with redis.pipeline(transaction=True) as pipe:
        letter_fields: dict[FieldT, EncodableT] = {
            k: v for k, v in dead_letter_to_fields(letter).items()
        }
        pipe.xadd(DEAD_STREAM, letter_fields)
        pipe.hset(
            key,
            mapping={
                "request_id": request_id,
                "status": status,
                "error_kind": error_kind,
                "message": reason,
                "retry_at": "",
                "updated_at": now_iso(),
            },
        )
        pipe.expire(key, ttl_s)
        pipe.expire(job_events_key(request_id), ttl_s)
        pipe.delete(job_lock_key(request_id))
        pipe.xack(JOBS_STREAM, JOBS_GROUP, entry_id)
        await pipe.execute()


async def ack_only(redis: Redis, entry_id: str) -> None:
    await redis.xack(JOBS_STREAM, JOBS_GROUP, entry_id)


async def schedule_retry(
    redis: Redis,
    request_id: str,
    entry_id: str,
    job_fields: Mapping[str, str],
    *,
    delay_s: float,
    message: str,
) -> str:
    """Park the job in the retry set (score = due time, ms) and XACK the failed entry, atomically.
    Returns `retry_at` (ISO)."""
    due_s = time.time() + delay_s
    member = json.dumps([part for pair in sorted(job_fields.items()) for part in pair])
    retry_at = _iso_at(due_s)
    await redis.eval(
        _SCHEDULE_RETRY,
        4,
        JOBS_STREAM,
        RETRY_ZSET,
        status_key(request_id),
        job_lock_key(request_id),
        JOBS_GROUP,
        entry_id,
        int(due_s * 1000),
        member,
        retry_at,
        now_iso(),
        message[:500],
    )
    return retry_at


async def move_due_retries(redis: Redis, *, maxlen: int, limit: int = 100) -> int:
    moved: object = await redis.eval(
        _MOVE_DUE,
        2,
        RETRY_ZSET,
        JOBS_STREAM,
        int(time.time() * 1000),
        limit,
        maxlen,
        status_key(""),
    )
    return int(moved) if isinstance(moved, int) else 0


async def pending_retries(redis: Redis) -> int:
    count: object = await redis.zcard(RETRY_ZSET)
    return int(count) if isinstance(count, int) else 0
