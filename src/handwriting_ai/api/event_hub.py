"""One Redis reader per API process for every open event stream (SSE), fanned out to subscribers.

A blocking XREAD holds its connection for the whole block: one per SSE client would use up the
API's pool (100 connections) and take `POST /v1/train`, status and cancel down with it. So the hub
runs ONE blocking XREAD, on a connection of its own, over the job streams
(`digits:events:job:<id>`) that have subscribers, each key read from its own cursor. The block is
short, so a key that gains its first subscriber joins the next read quickly.

How a subscriber gets every entry once and in order: it first replays its job's stream after
`Last-Event-ID` with XRANGE (never blocks: a pooled connection, briefly; at most `POOL_CALLS`
such calls at once), then joins the hub at the last id it sent. The hub hands each read out as
(the cursor it read after, the entries). A subscriber whose last id is older than that cursor
(the hub had already read past it for other subscribers) fills the gap with one XRANGE; entries
at or before its last id are skipped. Entry ids are the job stream's own, so SSE `id:` and
`Last-Event-ID` keep meaning the same thing.

A slow client never stalls the others: each subscriber buffers at most `buffer_entries`; beyond
that it is dropped, its stream ends with a comment asking it to reconnect with `Last-Event-ID`,
and it resumes where it was. At most `max_streams` streams are open per process (503 `overloaded`
beyond them); nothing else shares that count.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

from attrs import define, field
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError
from redis.typing import KeyT, StreamIdT

from handwriting_ai.aio import cancel_and_wait
from handwriting_ai.errors import OverloadedError
from handwriting_ai.logging import get_logger
from handwriting_ai.streams.follow import (
    Entry,
    JobEntry,
    entries_after,
    id_key,
    job_entry,
    job_known,
    job_over,
    queued_entry,
    xread_streams,
)
from handwriting_ai.streams.keys import job_events_key

log = get_logger("handwriting_ai.train")
STOP_S = 5.0  # the reader's blocking XREAD, cancelled at shutdown
HUB_BLOCK_MS = 250  # how long a new subscription may wait to join the read
READ_COUNT = 100  # entries per key per read
REPLAY_PAGE = 500  # entries per XRANGE while replaying
BUFFER_ENTRIES = 1000  # a subscriber this far behind is dropped (it resumes with Last-Event-ID)
RETRY_AFTER_S = 5
# Subscribers' own Redis calls (replay, gap fill, status check) at once, per process: hundreds of
# clients reconnecting together must not take the pool (100) from `POST /v1/train` and the rest.
POOL_CALLS = 16
ERROR_BACKOFF_S = 0.5
READER_NAME = "digits-api-events"  # CLIENT LIST shows the hub's connection by this name


class StreamDroppedError(Exception):
    """The hub let go of a subscriber (it fell behind, Redis failed, the API stops); `str()`
    says why. Its client reconnects with `Last-Event-ID` and loses nothing."""


@define(eq=False)
class _Batch:
    after_id: str  # the cursor the hub read after: entries up to it may be missing here
    entries: list[Entry]


@define(eq=False)
class _Subscriber:
    limit: int
    batches: deque[_Batch] = field(factory=deque)
    held: int = 0
    wake: asyncio.Event = field(factory=asyncio.Event)
    dropped: str | None = None

    def offer(self, batch: _Batch) -> bool:
        """Buffer a read; False (and dropped) when that would put it over its limit."""
        if self.held + len(batch.entries) > self.limit:
            self.drop("too far behind")
            return False
        self.batches.append(batch)
        self.held += len(batch.entries)
        self.wake.set()
        return True

    def drop(self, why: str) -> None:
        self.dropped = self.dropped or why
        self.batches.clear()
        self.wake.set()

    async def take(self, timeout_s: float) -> list[_Batch]:
        """What arrived, waiting up to `timeout_s` for something; `StreamDroppedError` if let go."""
        if not self.batches and self.dropped is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self.wake.wait()
        self.wake.clear()
        if self.dropped is not None:
            raise StreamDroppedError(self.dropped)
        taken = list(self.batches)
        self.batches.clear()
        self.held = 0
        return taken


@define(eq=False)
class _Key:
    cursor: str
    subscribers: set[_Subscriber] = field(factory=set)
    # The last "has this job ended?" check, shared by the key's subscribers: 200 idle streams
    # on one job ask Redis about once per idle period, not 200 times.
    over_check: asyncio.Future[bool] | None = None
    over_at: float = 0.0


@define(eq=False)
class StreamSlot:
    """One open event stream counted against `max_streams`; released once, however it ends."""

    hub: EventHub
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.hub.open_streams -= 1


def _reader_client(redis: Redis) -> Redis:
    """A client with one connection of its own, configured like `redis` (URL, timeouts): the
    blocking read never takes a connection from the pool the routes use."""
    pool = redis.connection_pool
    kwargs = {**pool.connection_kwargs, "client_name": READER_NAME}
    own = ConnectionPool(connection_class=pool.connection_class, max_connections=1, **kwargs)
    return Redis(connection_pool=own)


class EventHub:
    def __init__(
        self,
        redis: Redis,
        *,
        max_streams: int,
        block_ms: int = HUB_BLOCK_MS,
        buffer_entries: int = BUFFER_ENTRIES,
    ) -> None:
        self.redis = redis  # pooled: replays, gap fills and status checks (none of them block)
        self.max_streams = max_streams
        self.block_ms = block_ms
        self.buffer_entries = buffer_entries
        self.open_streams = 0
        self.reads = 0
        self._keys: dict[str, _Key] = {}
        self._calls = asyncio.Semaphore(POOL_CALLS)
        self._joined = asyncio.Event()
        self._reader: Redis | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return (
            f"EventHub(open_streams={self.open_streams}, keys={len(self._keys)},"
            f" reads={self.reads})"
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the reader; it touches Redis only once a stream has subscribers."""
        self._reader = _reader_client(self.redis)
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], timeout_s=STOP_S)
            self._task = None
        self._drop_all("the API is stopping")
        if self._reader is not None:
            await self._reader.aclose()
            await self._reader.connection_pool.disconnect()
            self._reader = None

    def reserve(self) -> StreamSlot:
        """A place for one more open stream, or 503 `overloaded` (with `Retry-After`)."""
        if self.open_streams >= self.max_streams:
            raise OverloadedError(
                f"{self.open_streams} event streams are open, this API's limit"
                f" (EVENTS__MAX_STREAMS={self.max_streams}); retry in {RETRY_AFTER_S} s.",
                retry_after_s=RETRY_AFTER_S,
            )
        self.open_streams += 1
        return StreamSlot(self)

    async def job_known(self, request_id: str) -> bool:
        """The job has a status or events, or waits in `digits:train` (a `redis-cli XADD` job):
        a stream may be opened for it. Counted with the subscribers' calls: hundreds of clients
        connecting at once must not take the pool either."""
        async with self._calls:
            return await job_known(self.redis, request_id) or (
                await queued_entry(self.redis, request_id) is not None
            )

    # ------------------------------------------------------------------ subscribers

    def _join(self, key: str, last_id: str) -> _Subscriber:
        subscriber = _Subscriber(self.buffer_entries)
        self._keys.setdefault(key, _Key(last_id)).subscribers.add(subscriber)
        self._joined.set()
        return subscriber

    def _leave(self, key: str, subscriber: _Subscriber) -> None:
        state = self._keys.get(key)
        if state is None:
            return
        state.subscribers.discard(subscriber)
        if not state.subscribers:
            del self._keys[key]

    def _drop_all(self, why: str) -> None:
        for state in self._keys.values():
            for subscriber in state.subscribers:
                subscriber.drop(why)
        self._keys.clear()

    # ------------------------------------------------------------------ the one reader

    async def _run(self) -> None:
        while True:
            if not self._keys:
                self._joined.clear()
                await self._joined.wait()
                continue
            try:
                await self._read_once()
            except (RedisError, OSError) as exc:
                log.warning("event_hub_redis_error", error=str(exc), keys=len(self._keys))
                self._drop_all("redis unavailable")
                await asyncio.sleep(ERROR_BACKOFF_S)

    async def _read_once(self) -> None:
        assert self._reader is not None
        asked = dict(self._keys)  # keys may join or leave while the read blocks
        cursors = {key: state.cursor for key, state in asked.items()}
        streams: dict[KeyT, StreamIdT] = dict(cursors.items())
        reply: object = await self._reader.xread(streams, count=READ_COUNT, block=self.block_ms)
        self.reads += 1
        for key, entries in xread_streams(reply):
            state = asked.get(key)
            if not entries or state is None or self._keys.get(key) is not state:
                continue  # every subscriber of that key left during the read
            batch = _Batch(cursors[key], entries)
            state.cursor = entries[-1][0]
            for subscriber in list(state.subscribers):
                if not subscriber.offer(batch):
                    log.info("sse_subscriber_dropped", key=key, buffered=subscriber.limit)
                    self._leave(key, subscriber)

    # ------------------------------------------------------------------ one job's events

    async def follow_job(
        self, request_id: str, *, after_id: str = "0-0", idle_s: float = 1.0
    ) -> AsyncIterator[JobEntry | None]:
        """The job's events after `after_id` until a final one, exactly once and in order;
        `None` after each `idle_s` without one. Like `streams.follow.follow_job`, it also ends
        when the job's status has been final (or gone) for two idle periods with no final
        event. Raises `StreamDroppedError` or `RedisError`: the client resumes from its last id."""
        key = job_events_key(request_id)
        last = after_id
        while True:  # the replay, in pages
            async with self._calls:
                page = await entries_after(self.redis, key, last, count=REPLAY_PAGE)
            for entry in map(_job_entry, page):
                last = entry.entry_id
                yield entry
                if entry.final:
                    return
            if len(page) < REPLAY_PAGE:
                break
        subscriber = self._join(key, last)
        try:
            idle_final = 0
            while True:
                batches = await subscriber.take(idle_s)
                if not batches:
                    over = await self._job_over(key, request_id, max_age_s=idle_s / 2)
                    idle_final = idle_final + 1 if over else 0
                    if idle_final >= 2:
                        return
                    yield None
                    continue
                idle_final = 0
                for batch in batches:
                    for entry in map(_job_entry, await self._after(key, last, batch)):
                        last = entry.entry_id
                        yield entry
                        if entry.final:
                            return
        finally:
            self._leave(key, subscriber)

    async def _job_over(self, key: str, request_id: str, *, max_age_s: float) -> bool:
        """Whether the job's status is final (or gone), checked at most once per `max_age_s`
        for all subscribers of its key (the age stays under an idle period, so a subscriber's
        two consecutive answers come from two checks)."""
        state = self._keys.get(key)
        if state is None:  # let go meanwhile: `take` says so next
            return False
        now = time.monotonic()
        if state.over_check is None or now - state.over_at > max_age_s:
            state.over_at = now
            state.over_check = asyncio.ensure_future(self._checked_over(request_id))
        # Shielded: one subscriber leaving mid-check must not cancel the others' answer.
        return await asyncio.shield(state.over_check)

    async def _checked_over(self, request_id: str) -> bool:
        async with self._calls:
            return await job_over(self.redis, request_id)

    async def _after(self, key: str, last_id: str, batch: _Batch) -> list[Entry]:
        """The entries of `batch` after `last_id`, with what the hub had read past `last_id`
        before this subscriber joined (one XRANGE) in front of them."""
        entries = batch.entries
        if id_key(batch.after_id) > id_key(last_id):
            async with self._calls:
                entries = await entries_after(self.redis, key, last_id, upto_id=batch.after_id)
            entries += batch.entries
        return [e for e in entries if id_key(e[0]) > id_key(last_id)]


def _job_entry(entry: Entry) -> JobEntry:
    return job_entry(*entry)
