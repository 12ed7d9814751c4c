"""Add a job to `digits:train` once per `request_id`: status hash and stream entry in one step."""

from __future__ import annotations

from attrs import frozen
from redis.asyncio import Redis

from handwriting_ai.contracts.events import now_iso
from handwriting_ai.contracts.jobs import TrainJob, job_to_fields
from handwriting_ai.errors import QueueFullError
from handwriting_ai.streams.keys import JOBS_STREAM, status_key

# Atomic: a crash can never leave a status without its entry, and a repeat never adds a second
# entry. No MAXLEN: trimming at XADD would drop the oldest entries, pending jobs included. The cap
# refuses a new job instead (workers trim acknowledged entries with MINID, which frees room); a
# repeat of a known request_id still answers, full or not. Works on Redis 6.2 and 7.x.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGET', KEYS[1], 'entry_id') or ''}
end
local held = redis.call('XLEN', KEYS[2])
if held >= tonumber(ARGV[1]) then
  return {2, held}
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 5))
redis.call('HSET', KEYS[1], 'request_id', ARGV[2], 'status', 'queued', 'attempts', '0',
  'entry_id', id, 'created_at', ARGV[3], 'updated_at', ARGV[3], 'model_id', ARGV[4])
return {1, id}
"""


@frozen
class Enqueued:
    request_id: str
    entry_id: str
    created: bool  # False: this request_id was already queued; nothing was added


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def enqueue_job(redis: Redis, job: TrainJob, *, maxlen: int) -> Enqueued:
    """Queue `job` unless its request_id is known; `QueueFullError` when `digits:train` already
    holds `maxlen` entries (nothing is added, nothing is trimmed)."""
    fields = job_to_fields(job)
    flat = [part for pair in fields.items() for part in pair]
    reply = await redis.eval(
        _ENQUEUE,
        2,
        status_key(job.request_id),
        JOBS_STREAM,
        str(maxlen),
        job.request_id,
        now_iso(),
        job.model_id,
        *flat,
    )
    if not isinstance(reply, list) or len(reply) != 2:
        raise RuntimeError(f"unexpected enqueue reply {reply!r}")
    if int(reply[0]) == 2:
        raise QueueFullError(
            f"The training queue holds {int(reply[1])} jobs, its limit"
            f" (STREAMS__JOBS_MAXLEN={maxlen}); try again later."
        )
    return Enqueued(request_id=job.request_id, entry_id=_s(reply[1]), created=int(reply[0]) == 1)
