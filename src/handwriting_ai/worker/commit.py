"""Write one `Transition` atomically, fenced by the entry's ownership.

One Lua script checks that the entry is still pending and owned by this consumer, then runs every
command of the transition. Redis runs a script as one step, so the events, the status, the dead
letter or retry and the XACK land together or not at all, and a worker whose entry was taken over
writes nothing: the new owner's writes are never overwritten, its entry never acked by us.

No `asyncio.shield` is needed around it: a cancellation lands either before the script is sent or
after Redis ran it whole. A Redis error is retried with backoff until the call gets an answer (or
the job task is cancelled by a stop); an attempt whose answer was lost may have run, which the
next attempt sees as "not pending" and reports as `ALREADY_ENDED`.
"""

from __future__ import annotations

import asyncio
from enum import Enum

from redis.asyncio import Redis
from redis.exceptions import RedisError

from handwriting_ai.logging import get_logger
from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM
from handwriting_ai.worker.lifecycle import DEL_IF_EQUAL, Transition

log = get_logger(__name__)
MAX_DELAY_S = 5.0

# Keys are named in ARGV, not KEYS: the service runs on one Redis (not a cluster), and a
# transition's key set is data. Redis 6.2 and 7.x both allow this outside cluster mode.
_COMMIT = f"""
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if not p[1] then return -1 end
if p[1][2] ~= ARGV[3] then return 0 end
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  local n = tonumber(ARGV[i])
  if ARGV[i + 1] == '{DEL_IF_EQUAL}' then
    if redis.call('GET', ARGV[i + 2]) == ARGV[i + 3] then redis.call('DEL', ARGV[i + 2]) end
  else
    redis.call(unpack(ARGV, i + 1, i + n))
  end
  i = i + n + 1
end
return 1
"""


class Committed(Enum):
    WRITTEN = 1
    LOST = 0  # another consumer owns the entry now: nothing was written
    ALREADY_ENDED = -1  # the entry is no longer pending (acked by an earlier attempt, or gone)


def _argv(transition: Transition, entry_id: str, consumer: str) -> list[str]:
    argv = [JOBS_GROUP, entry_id, consumer, str(len(transition.commands))]
    for command in transition.commands:
        argv.append(str(len(command)))
        argv.extend(command)
    return argv


async def commit_once(
    redis: Redis, transition: Transition, *, entry_id: str, consumer: str
) -> Committed:
    reply: object = await redis.eval(
        _COMMIT, 1, JOBS_STREAM, *_argv(transition, entry_id, consumer)
    )
    code = int(reply) if isinstance(reply, int) else 0
    return Committed(code)


async def commit(
    redis: Redis, transition: Transition, *, entry_id: str, consumer: str
) -> Committed:
    """`commit_once`, retried through Redis outages until it gets an answer."""
    delay_s = 0.1
    uncertain = False
    while True:
        try:
            outcome = await commit_once(redis, transition, entry_id=entry_id, consumer=consumer)
        except RedisError as exc:
            uncertain = True
            log.warning(
                "commit_retry",
                transition=transition.name,
                entry_id=entry_id,
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=delay_s,
            )
            await asyncio.sleep(delay_s)
            delay_s = min(MAX_DELAY_S, delay_s * 2)
            continue
        if outcome is Committed.ALREADY_ENDED and uncertain:
            log.info("commit_answer_lost", transition=transition.name, entry_id=entry_id)
        return outcome
