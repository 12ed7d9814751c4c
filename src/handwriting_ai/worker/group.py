"""The consumer group's Redis side: create it, read, heartbeat, reclaim, trim, tidy consumers.

Every call here is one round trip (or one Lua script where two steps must not be split), so the
consumer loop reads as policy and this module as plumbing.

Reclaiming is lease-based, not idle-based alone: an entry is taken from its owner only when it is
idle past the claim time AND the owner's lease key is gone (`suspects`, then `claim`, which checks
both again atomically). After a Redis outage every entry looks idle and every lease has expired,
so the caller also waits a confirmation window (`SuspectTracker`) in which a live owner's next
heartbeat brings its lease back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from attrs import frozen
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from handwriting_ai.logging import get_logger
from handwriting_ai.streams.keys import (
    JOBS_GROUP,
    JOBS_STREAM,
    LEASE_PREFIX,
    LEASE_SUFFIX,
    worker_health_key,
    worker_lease_key,
)
from handwriting_ai.worker.delivery import parse_id, trim_point

Entry = tuple[str, dict[str, str]]


@frozen
class PendingSummary:
    """XPENDING's summary of the group, at Redis' own time (`server_ms`)."""

    count: int
    oldest_id: str | None
    server_ms: int


log = get_logger(__name__)
GONE_IDLE_MS = 120_000  # a consumer this quiet, without a health key, has stopped for good

# Renew our lease; refresh our running entries' idle time, but only those still ours (an entry
# another worker took is not pulled back, and the caller learns it lost it); list every entry
# pending to us, so one we hold but no longer run (a job that ended without an outcome) is seen.
_HEARTBEAT = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
local mine = {}
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(mine, ARGV[i])
  end
end
local held = {}
for _, row in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 100, ARGV[2])) do
  table.insert(held, row[1])
end
return {mine, held}
"""

# Pending entries of other consumers whose lease is gone (any idle time).
_SUSPECTS = """
local out = {}
for _, r in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[2])) do
  if r[2] ~= ARGV[3] and redis.call('EXISTS', ARGV[4] .. r[2] .. ARGV[5]) == 0 then
    table.insert(out, {r[1], r[2]})
  end
end
return out
"""

# Take one entry from a dead owner: still pending to that owner, its lease still gone, idle past
# the claim time (XCLAIM's own check). A deleted entry (6.2 answers a nil) is acked instead.
_CLAIM = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[4], ARGV[4], 1)
if not p[1] or p[1][2] ~= ARGV[5] then return false end
if redis.call('EXISTS', ARGV[6] .. ARGV[5] .. ARGV[7]) == 1 then return false end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if #claimed == 0 then return false end
local e = claimed[1]
if not e or not e[2] then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[4])
  return false
end
return e
"""

# Remove a consumer only while it holds nothing and shows no sign of life, in one step.
_DELCONSUMER = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return -1
"""


def is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def ensure_group(redis: Redis) -> None:
    """MKSTREAM so a worker may start first; from id 0 so jobs added before it are not skipped.
    Only BUSYGROUP (it exists) is tolerated."""
    try:
        await redis.xgroup_create(JOBS_STREAM, JOBS_GROUP, id="0", mkstream=True)
        log.info("group_created", stream=JOBS_STREAM, group=JOBS_GROUP)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _entries(reply: object) -> list[Entry]:
    """XREADGROUP's reply (one stream) as entries; a deleted pending entry (nil fields) is kept
    with empty fields so the caller can acknowledge it."""
    out: list[Entry] = []
    if not isinstance(reply, list):
        return out
    for stream in reply:
        if not isinstance(stream, list | tuple) or len(stream) != 2:
            continue
        for item in stream[1]:
            entry_id, fields = item
            pairs = fields.items() if isinstance(fields, dict) else []
            out.append((_s(entry_id), {_s(k): _s(v) for k, v in pairs}))
    return out


async def read_new(redis: Redis, consumer: str, *, count: int, block_ms: int) -> list[Entry]:
    reply: object = await redis.xreadgroup(
        JOBS_GROUP, consumer, {JOBS_STREAM: ">"}, count=count, block=block_ms
    )
    return _entries(reply)


async def read_own_pending(redis: Redis, consumer: str, *, count: int) -> list[Entry]:
    """Entries this consumer name was given and never acknowledged (a restart with the same
    name); id 0 reads history without blocking."""
    reply: object = await redis.xreadgroup(JOBS_GROUP, consumer, {JOBS_STREAM: "0"}, count=count)
    return _entries(reply)


async def deliveries(redis: Redis, entry_id: str) -> int:
    """Times the entry was delivered (XPENDING extended); 0 when it is no longer pending."""
    rows: object = await redis.xpending_range(
        JOBS_STREAM, JOBS_GROUP, min=entry_id, max=entry_id, count=1
    )
    if isinstance(rows, list) and rows and isinstance(rows[0], dict):
        value: object = rows[0].get("times_delivered", 0)
        return int(value) if isinstance(value, int | str) else 0
    return 0


async def heartbeat(
    redis: Redis, consumer: str, entry_ids: Iterable[str], *, lease_ms: int
) -> tuple[set[str], set[str]]:
    """Renew the lease and XCLAIM ... 0 JUSTID our running entries. Returns (the running ids
    that are still ours, every id pending to us)."""
    ids = list(entry_ids)
    reply: object = await redis.eval(
        _HEARTBEAT,
        2,
        JOBS_STREAM,
        worker_lease_key(consumer),
        JOBS_GROUP,
        consumer,
        lease_ms,
        *ids,
    )
    if not isinstance(reply, list) or len(reply) != 2:
        return set(), set()
    mine, held = reply
    return (
        {_s(i) for i in mine} if isinstance(mine, list) else set(),
        {_s(i) for i in held} if isinstance(held, list) else set(),
    )


async def drop_lease(redis: Redis, consumer: str) -> None:
    """On a stop: our entries left pending become claimable without waiting for the expiry."""
    await redis.delete(worker_lease_key(consumer))


async def suspects(redis: Redis, consumer: str, *, count: int = 100) -> list[tuple[str, str]]:
    """(entry id, owner) of pending entries whose owner's lease is gone."""
    reply: object = await redis.eval(
        _SUSPECTS, 1, JOBS_STREAM, JOBS_GROUP, count, consumer, LEASE_PREFIX, LEASE_SUFFIX
    )
    out: list[tuple[str, str]] = []
    for row in reply if isinstance(reply, list) else []:
        if isinstance(row, list) and len(row) == 2:
            out.append((_s(row[0]), _s(row[1])))
    return out


async def claim(
    redis: Redis, consumer: str, entry_id: str, *, owner: str, min_idle_ms: int
) -> Entry | None:
    """The entry, now ours, if its owner is still without a lease and it is idle enough."""
    reply: object = await redis.eval(
        _CLAIM,
        1,
        JOBS_STREAM,
        JOBS_GROUP,
        consumer,
        min_idle_ms,
        entry_id,
        owner,
        LEASE_PREFIX,
        LEASE_SUFFIX,
    )
    if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], list):
        return None
    flat = [_s(v) for v in reply[1]]
    return _s(reply[0]), dict(zip(flat[::2], flat[1::2], strict=True))


async def _last_delivered(redis: Redis) -> str | None:
    groups: object = await redis.xinfo_groups(JOBS_STREAM)
    for group in groups if isinstance(groups, list) else []:
        if isinstance(group, dict) and _s(group.get("name")) == JOBS_GROUP:
            return _s(group.get("last-delivered-id"))
    return None


async def has_undelivered(redis: Redis) -> bool:
    """Whether the stream holds an entry the group was never handed (newer than the group's
    last-delivered id): a burst worker must not stop while one is there."""
    newest: object = await redis.xrevrange(JOBS_STREAM, count=1)
    if not isinstance(newest, list) or not newest:
        return False
    last = await _last_delivered(redis)
    return last is None or parse_id(_s(newest[0][0])) > parse_id(last)


async def trim(redis: Redis) -> str | None:
    """XTRIM MINID to the older of the oldest pending entry and the last delivered one: no
    pending or not yet delivered entry is ever dropped."""
    last_delivered = await _last_delivered(redis)
    summary: object = await redis.xpending(JOBS_STREAM, JOBS_GROUP)
    oldest: str | None = None
    if isinstance(summary, Mapping) and summary.get("pending"):
        oldest = _s(summary.get("min"))
    point = trim_point(oldest, last_delivered)
    if point is not None:
        await redis.xtrim(JOBS_STREAM, minid=point, approximate=False)
    return point


async def pending_summary(redis: Redis) -> PendingSummary:
    """The group's pending count and oldest pending id with Redis' clock, in one round trip: an
    entry id is Redis' clock in ms, so its age needs no trust in ours."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xpending(JOBS_STREAM, JOBS_GROUP)
        pipe.time()
        summary, clock = await pipe.execute()
    count = summary.get("pending") if isinstance(summary, Mapping) else 0
    oldest = _s(summary.get("min")) if isinstance(summary, Mapping) and count else None
    seconds, micros = clock if isinstance(clock, tuple | list) else (0, 0)
    return PendingSummary(
        count=int(count) if isinstance(count, int) else 0,
        oldest_id=oldest,
        server_ms=int(seconds) * 1000 + int(micros) // 1000,
    )


async def remove_gone_consumers(redis: Redis, me: str) -> list[str]:
    """XGROUP DELCONSUMER for consumers that are idle, have no health key and hold nothing."""
    rows: object = await redis.xinfo_consumers(JOBS_STREAM, JOBS_GROUP)
    removed: list[str] = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        name, pending, idle = _s(row.get("name")), row.get("pending"), row.get("idle")
        if name == me or pending != 0 or not isinstance(idle, int) or idle < GONE_IDLE_MS:
            continue
        answer: object = await redis.eval(
            _DELCONSUMER, 2, JOBS_STREAM, worker_health_key(name), JOBS_GROUP, name
        )
        if answer != -1:
            removed.append(name)
    return removed
