"""The consumer group's Redis side: create it, read, heartbeat, reclaim, trim, tidy consumers.

Every call here is one round trip (or one Lua script where two steps must not be split), so the
consumer loop reads as policy and this module as plumbing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from handwriting_ai.logging import get_logger
from handwriting_ai.streams.compat import Entry, parse_xautoclaim, xautoclaim_deleted_ids
from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM, worker_health_key
from handwriting_ai.worker.delivery import ReclaimCursor, trim_point

log = get_logger(__name__)
GONE_IDLE_MS = 120_000  # a consumer this quiet, without a health key, has stopped for good

# Refresh our own entries' idle time, but only those still ours: an entry another worker took
# (we were frozen past min-idle) is not pulled back, and the caller learns it lost it.
_HEARTBEAT = """
local mine = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    table.insert(mine, ARGV[i])
  end
end
return mine
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


async def heartbeat(redis: Redis, consumer: str, entry_ids: Iterable[str]) -> set[str]:
    """XCLAIM ... 0 JUSTID on our in-flight entries; returns the ids that are still ours."""
    ids = list(entry_ids)
    if not ids:
        return set()
    reply: object = await redis.eval(_HEARTBEAT, 1, JOBS_STREAM, JOBS_GROUP, consumer, *ids)
    return {_s(i) for i in reply} if isinstance(reply, list) else set()


async def reclaim(
    redis: Redis, consumer: str, cursor: ReclaimCursor, *, min_idle_ms: int, count: int
) -> tuple[list[Entry], bool]:
    """One XAUTOCLAIM step from the carried cursor: entries idle past `min_idle_ms` (their worker
    stopped heartbeating) become ours. Also says whether deleted entries were seen."""
    reply: object = await redis.xautoclaim(
        JOBS_STREAM, JOBS_GROUP, consumer, min_idle_ms, start_id=cursor.cursor, count=count
    )
    next_cursor, entries = parse_xautoclaim(reply)
    cursor.advance(next_cursor)
    deleted = xautoclaim_deleted_ids(reply)
    if deleted:
        await redis.xack(JOBS_STREAM, JOBS_GROUP, *deleted)
    # On 6.2 a deleted entry comes back as a bare nil: count them to know a cleanup is due.
    nameless = isinstance(reply, list | tuple) and len(reply) >= 2 and _has_nil(reply[1])
    return entries, nameless


def _has_nil(claimed: object) -> bool:
    if not isinstance(claimed, list | tuple):
        return False
    return any(
        item is None
        or (isinstance(item, list | tuple) and (not item or item[0] is None or item[1] is None))
        for item in claimed
    )


async def ack_deleted_own(redis: Redis, consumer: str, keep: set[str]) -> int:
    """Acknowledge our pending entries whose stream entry is gone (Redis 6.2 leaves them)."""
    rows: object = await redis.xpending_range(
        JOBS_STREAM, JOBS_GROUP, min="-", max="+", count=100, consumername=consumer
    )
    acked = 0
    for row in rows if isinstance(rows, list) else []:
        entry_id = _s(row.get("message_id")) if isinstance(row, dict) else ""
        if (
            entry_id
            and entry_id not in keep
            and not await redis.xrange(JOBS_STREAM, min=entry_id, max=entry_id)
        ):
            acked += int(await redis.xack(JOBS_STREAM, JOBS_GROUP, entry_id))
    return acked


async def trim(redis: Redis) -> str | None:
    """XTRIM MINID to the older of the oldest pending entry and the last delivered one: no
    pending or not yet delivered entry is ever dropped."""
    groups: object = await redis.xinfo_groups(JOBS_STREAM)
    last_delivered: str | None = None
    for group in groups if isinstance(groups, list) else []:
        if isinstance(group, dict) and _s(group.get("name")) == JOBS_GROUP:
            last_delivered = _s(group.get("last-delivered-id"))
    summary: object = await redis.xpending(JOBS_STREAM, JOBS_GROUP)
    oldest: str | None = None
    if isinstance(summary, Mapping) and summary.get("pending"):
        oldest = _s(summary.get("min"))
    point = trim_point(oldest, last_delivered)
    if point is not None:
        await redis.xtrim(JOBS_STREAM, minid=point, approximate=False)
    return point


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
