"""Follow one stream from an id: read what is there, then block for new entries (SSE, `watch`).

redis-py's XREAD reply is loosely typed and differs between RESP2 (a list of `[name, entries]`)
and RESP3 (a dict); `xread_entries` narrows either into `(entry id, fields)` pairs.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from attrs import frozen
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import TrainEvent, decode_event, is_final
from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM, job_events_key, status_key
from handwriting_ai.streams.status import read_status

Entry = tuple[str, dict[str, str]]
STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
READ_COUNT = 100


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string in a stream reply, got {value!r}")


def text_fields(raw: object) -> dict[str, str]:
    """A hash or an entry's fields (a dict, or a flat RESP2 list) as text."""
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    if isinstance(raw, list | tuple) and len(raw) % 2 == 0:
        return {_text(k): _text(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}
    if raw is None:
        return {}
    raise ValueError(f"unexpected stream entry fields: {raw!r}")


def entries_of(raw: object) -> list[Entry]:
    """XRANGE-shaped entries: `[(id, fields), ...]`."""
    if not isinstance(raw, list | tuple):
        raise ValueError(f"unexpected stream entries: {raw!r}")
    out: list[Entry] = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise ValueError(f"unexpected stream entry: {item!r}")
        out.append((_text(item[0]), text_fields(item[1])))
    return out


def xread_streams(reply: object) -> list[tuple[str, list[Entry]]]:
    """Each stream of an XREAD reply with its entries, in reply order; nil → none."""
    if reply is None:
        return []
    if isinstance(reply, dict):
        return [(_text(k), entries_of(_resp3_entries(v))) for k, v in reply.items()]
    if not isinstance(reply, list | tuple):
        raise ValueError(f"unexpected XREAD reply: {reply!r}")
    out: list[tuple[str, list[Entry]]] = []
    for stream in reply:
        if not isinstance(stream, list | tuple) or len(stream) != 2:
            raise ValueError(f"unexpected XREAD stream: {stream!r}")
        out.append((_text(stream[0]), entries_of(stream[1])))
    return out


def xread_entries(reply: object) -> list[Entry]:
    """All entries of an XREAD reply (one or more streams), in reply order; nil → none."""
    return [entry for _, entries in xread_streams(reply) for entry in entries]


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair: `"10-2" < "9-5"` as text, not as ids."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def entries_after(
    redis: Redis, key: str, after_id: str, *, upto_id: str = "+", count: int | None = None
) -> list[Entry]:
    """`XRANGE key (after_id upto_id`: what follows `after_id` (exclusive ranges: Redis 6.2+);
    never blocks, so it may run on a pooled connection."""
    return entries_of(await redis.xrange(key, f"({after_id}", upto_id, count=count))


def _resp3_entries(raw: object) -> object:
    # RESP3 may nest the entries one level deeper (`[[entries]]`) depending on the redis-py
    # callback; unwrap that so both shapes read the same.
    if isinstance(raw, list | tuple) and len(raw) == 1 and isinstance(raw[0], list | tuple):
        inner = raw[0]
        if inner and isinstance(inner[0], list | tuple):
            return inner
    return raw


async def follow(
    redis: Redis, key: str, *, after_id: str = "0-0", block_ms: int = 1000
) -> AsyncIterator[Entry | None]:
    """Entries of `key` after `after_id`, oldest first, forever; `None` after each idle block so
    the caller can send a keep-alive, check the job's status or give up."""
    last_id = after_id
    while True:
        reply: object = await redis.xread({key: last_id}, count=READ_COUNT, block=block_ms)
        entries = xread_entries(reply)
        if not entries:
            yield None
            continue
        for entry in entries:
            last_id = entry[0]
            yield entry


@frozen
class JobEntry:
    """One entry of a job's own event stream; `event` is None when the entry does not decode."""

    entry_id: str
    type: str
    document: str
    event: TrainEvent | None

    @property
    def final(self) -> bool:
        """No further event follows for this job."""
        return self.event is not None and is_final(self.event)


def job_entry(entry_id: str, fields: dict[str, str]) -> JobEntry:
    try:
        event: TrainEvent | None = decode_event(fields)
    except ContractError:
        event = None
    return JobEntry(entry_id, fields.get("type", ""), fields.get("event", "{}"), event)


async def job_known(redis: Redis, request_id: str) -> bool:
    """A job exists while its status hash or its own event stream does."""
    found = await redis.exists(status_key(request_id), job_events_key(request_id))
    return isinstance(found, int) and found > 0


QUEUED_SCAN_COUNT = 1000


@frozen
class QueuedJob:
    """A job's entry in `digits:train` that no worker has taken yet, with its raw fields."""

    entry_id: str
    fields: dict[str, str]


async def queued_job(redis: Redis, request_id: str) -> QueuedJob | None:
    """The job's entry in `digits:train` while no worker has taken it yet (a job added with
    `redis-cli XADD` has no status until then). `job-<entry id>` is looked up directly; a
    request_id of the job's own is searched for among the newest `QUEUED_SCAN_COUNT` entries."""
    derived = request_id.removeprefix("job-")
    found: Entry | None = None
    if derived != request_id and STREAM_ID.match(derived):
        direct = entries_of(await redis.xrange(JOBS_STREAM, derived, derived))
        if direct and "request_id" not in direct[0][1]:
            found = direct[0]
    if found is None:
        newest = entries_of(await redis.xrevrange(JOBS_STREAM, count=QUEUED_SCAN_COUNT))
        found = next((e for e in newest if e[1].get("request_id") == request_id), None)
    # Acknowledged entries stay in the stream until trimmed: only an undelivered or a pending
    # one is a job that is still to run.
    if found is None or not await _undelivered_or_pending(redis, found[0]):
        return None
    return QueuedJob(found[0], found[1])


async def queued_entry(redis: Redis, request_id: str) -> str | None:
    """The entry id of `queued_job`, or None."""
    queued = await queued_job(redis, request_id)
    return None if queued is None else queued.entry_id


async def job_over(redis: Redis, request_id: str) -> bool:
    """The job's status is final, or it has none and is not waiting in `digits:train` either."""
    status = await read_status(redis, request_id)
    if status is not None:
        return status.final
    return await queued_entry(redis, request_id) is None


async def _undelivered_or_pending(redis: Redis, entry_id: str) -> bool:
    try:
        groups: object = await redis.xinfo_groups(JOBS_STREAM)
    except ResponseError:
        return True  # no stream group yet: no worker has ever read it
    last = next(
        (
            str(g.get("last-delivered-id"))
            for g in (groups if isinstance(groups, list) else [])
            if isinstance(g, dict) and g.get("name") == JOBS_GROUP
        ),
        None,
    )
    if last is None or id_key(entry_id) > id_key(last):
        return True
    pending: object = await redis.xpending_range(JOBS_STREAM, JOBS_GROUP, entry_id, entry_id, 1)
    return isinstance(pending, list) and len(pending) > 0


async def follow_job(
    redis: Redis, request_id: str, *, after_id: str = "0-0", block_ms: int = 1000
) -> AsyncIterator[JobEntry | None]:
    """The job's events from `after_id` until a final one; `None` on each idle block.

    Also ends when the job's status has been final (or gone) for two idle blocks in a row with
    no final event: a job that died without one must not keep a follower forever. Two, because
    the worker writes the status and publishes the final event in separate steps.
    """
    idle_final = 0
    key = job_events_key(request_id)
    async for item in follow(redis, key, after_id=after_id, block_ms=block_ms):
        if item is None:
            idle_final = idle_final + 1 if await job_over(redis, request_id) else 0
            if idle_final >= 2:
                return
            yield None
            continue
        idle_final = 0
        entry = job_entry(*item)
        yield entry
        if entry.final:
            return
