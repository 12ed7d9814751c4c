"""Job bookkeeping outside a job's own transitions: the per-request lock, and the retry set.

The lock (`digits:train:lock:<request_id>`) says which entry of a job is running, so a second
entry with the same request_id (a repeated XADD) does not train it twice; the heartbeat keeps it
alive and the job's final transition lets it go. Retries wait in a sorted set and are moved back
onto the stream when due, never with MAXLEN: no path may drop a pending job.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from handwriting_ai.streams.keys import JOBS_STREAM, RETRY_ZSET, job_lock_key, status_key

# Move due retries back onto the jobs stream; ZREM first, so two workers never both move one.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local flat = cjson.decode(member)
    local id = redis.call('XADD', KEYS[2], '*', unpack(flat))
    for i = 1, #flat, 2 do
      if flat[i] == 'request_id' then
        redis.call('HSET', ARGV[3] .. flat[i + 1], 'entry_id', id, 'retry_at', '')
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


async def take_lock(
    redis: Redis, request_id: str, *, consumer: str, entry_id: str, ttl_s: int
) -> str | None:
    """Mark `entry_id` as the running copy of the job. Returns the holder when another entry of
    the same request_id is running (a duplicate XADD); the same entry may take it over."""
    held: object = await redis.eval(
        _LOCK, 1, job_lock_key(request_id), f"{consumer} {entry_id}", entry_id, ttl_s
    )
    return held if isinstance(held, str) and held else None


async def refresh_locks(redis: Redis, holders: dict[str, str], *, ttl_s: int) -> None:
    """`holders`: request_id -> `<consumer> <entry id>` of runs whose entry is still ours. SET,
    not EXPIRE, so a lock that expired during a Redis outage is taken back by its live run."""
    if not holders:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for request_id, holder in holders.items():
            pipe.set(job_lock_key(request_id), holder, ex=ttl_s)
        await pipe.execute()


async def move_due_retries(redis: Redis, *, limit: int = 100) -> int:
    moved: object = await redis.eval(
        _MOVE_DUE,
        2,
        RETRY_ZSET,
        JOBS_STREAM,
        int(time.time() * 1000),
        limit,
        status_key(""),
    )
    return int(moved) if isinstance(moved, int) else 0


async def pending_retries(redis: Redis) -> int:
    count: object = await redis.zcard(RETRY_ZSET)
    return int(count) if isinstance(count, int) else 0
