"""One reader of `digits:events` for every job the bot started; each job's message is edited.

The reader XREADs the shared stream from a cursor kept in Redis (`bot/keys.py`), so a restarted
bot goes on from where it was. Each job it started is kept in Redis by request_id (channel and
message id); its progress is not stored but rebuilt by folding the job's own stream
(`digits:events:job:<id>`) when the job is tracked and on a restart. The fold is monotone
(`progress.apply`), so an event seen both there and on the shared stream counts once. Events of
jobs the bot did not start are skipped. A job whose status is final (or gone) for two sweeps
without a final event is finalised from its status. Redis 6.2 and 7 (RESP2 or RESP3 replies).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from attrs import evolve
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from handwriting_ai.bot.editor import Done, MessageRef, ThrottledEditor
from handwriting_ai.bot.keys import MESSAGE_TTL_S, cursor_key, jobs_key, message_key
from handwriting_ai.bot.progress import Final, ProgressView, apply, fold, render
from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import TrainEvent, decode_event
from handwriting_ai.logging import get_logger
from handwriting_ai.streams.follow import READ_COUNT, entries_of, xread_entries
from handwriting_ai.streams.keys import EVENTS_STREAM, job_events_key
from handwriting_ai.streams.status import JobStatus, read_status

log = get_logger(__name__)

SWEEP_INTERVAL_S = 30.0
REDIS_RETRY_S = 2.0


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def final_from_status(status: JobStatus | None) -> Final:
    """How a job that ended without a final event ended, as its status (or its absence) says."""
    if status is None:
        return Final("failed", error_kind="system", message="the job's record is gone")
    if status.status == "completed":
        return Final("completed")
    if status.status == "cancelled":
        return Final("cancelled", error_kind="user", message=status.message)
    return Final("failed", error_kind=status.error_kind or "system", message=status.message)


class Follower:
    def __init__(
        self,
        redis: Redis,
        editor: ThrottledEditor,
        *,
        bot: str,
        block_ms: int = 2000,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.redis = redis
        self.editor = editor
        self.bot = bot
        self.block_ms = block_ms
        self.sweep_interval_s = sweep_interval_s
        self.jobs: dict[str, tuple[MessageRef, ProgressView]] = {}
        self._by_ref: dict[MessageRef, str] = {}
        self._ended_once: set[str] = set()
        self._next_sweep = 0.0
        self.cursor: str | None = None
        self.lock = asyncio.Lock()  # one fold at a time: the reader and `track` both apply events
        self._stopping = asyncio.Event()
        editor.on_done = self._done
        self.handled = 0
        self.skipped = 0

    def __repr__(self) -> str:
        return (
            f"Follower(bot={self.bot!r}, jobs={len(self.jobs)}, cursor={self.cursor!r},"
            f" handled={self.handled}, skipped={self.skipped})"
        )

    # ------------------------------------------------------------------------------- jobs

    async def track(self, request_id: str, ref: MessageRef, model_id: str) -> None:
        """Edit `ref` with the progress of `request_id` from now on (and after a restart)."""
        key = message_key(self.bot, request_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            mapping: dict[FieldT, EncodableT] = {
                "channel_id": str(ref.channel_id),
                "message_id": str(ref.message_id),
                "model_id": model_id,
            }
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, MESSAGE_TTL_S)
            pipe.sadd(jobs_key(self.bot), request_id)
            await pipe.execute()
        await self._load(request_id, ref, model_id)

    async def _load(self, request_id: str, ref: MessageRef, model_id: str) -> None:
        """Track in memory with the view folded from the job's own stream (events the shared
        stream showed before the job was tracked, or while the bot was down)."""
        async with self.lock:
            view = self.jobs.get(request_id, (ref, ProgressView(request_id, model_id)))[1]
            self.jobs[request_id] = (ref, view)
            self._by_ref[ref] = request_id
            rows = entries_of(await self.redis.xrange(job_events_key(request_id)))
            events = [e for e in (self._decode(f) for _, f in rows) if e is not None]
            self._show(request_id, fold(view, events), force=True)

    async def restore(self) -> None:
        """After a (re)start: the tracked jobs and the cursor as the last run left them."""
        ids = sorted(_text(m) for m in await self.redis.smembers(jobs_key(self.bot)))
        for request_id in ids:
            raw = await self.redis.hgetall(message_key(self.bot, request_id))
            fields = {_text(k): _text(v) for k, v in raw.items()}
            try:
                ref = MessageRef(int(fields["channel_id"]), int(fields["message_id"]))
            except (KeyError, ValueError):
                await self.redis.srem(jobs_key(self.bot), request_id)  # expired or malformed
                continue
            await self._load(request_id, ref, fields.get("model_id", ""))
        stored = await self.redis.get(cursor_key(self.bot))
        self.cursor = _text(stored) if stored else await self._stream_end()
        await self.redis.set(cursor_key(self.bot), self.cursor)
        log.info("bot_follower_restored", jobs=len(self.jobs), cursor=self.cursor)

    async def _stream_end(self) -> str:
        """The newest entry's id: a first start follows from now, not from the stream's start."""
        newest = entries_of(await self.redis.xrevrange(EVENTS_STREAM, count=1))
        return newest[0][0] if newest else "0-0"

    async def _done(self, ref: MessageRef, done: Done) -> None:
        request_id = self._by_ref.pop(ref, None)
        if request_id is None:
            return
        self.jobs.pop(request_id, None)
        self._ended_once.discard(request_id)
        if done == "gave_up":
            return  # kept in Redis: a restart tries the final edit again
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(message_key(self.bot, request_id))
            pipe.srem(jobs_key(self.bot), request_id)
            await pipe.execute()

    # ------------------------------------------------------------------------------- events

    def _decode(self, fields: dict[str, str]) -> TrainEvent | None:
        try:
            return decode_event(fields)
        except ContractError as exc:
            log.debug("bot_event_skipped", errors=exc.errors)
            return None

    def _show(self, request_id: str, view: ProgressView, *, force: bool = False) -> None:
        ref, before = self.jobs[request_id]
        if view == before and not force:
            return
        self.jobs[request_id] = (ref, view)
        self.editor.submit(ref, render(view), final=view.final is not None)

    def _handle(self, fields: dict[str, str]) -> None:
        if not self.jobs:
            self.skipped += 1
            return
        event = self._decode(fields)
        tracked = self.jobs.get(event.request_id) if event is not None else None
        if event is None or tracked is None:
            self.skipped += 1
            return
        self.handled += 1
        self._show(event.request_id, apply(tracked[1], event))

    async def step(self) -> int:
        """One XREAD (blocking up to `block_ms`); the entries handled. The cursor is stored after
        the entries are applied: a crash in between re-reads them, which the fold absorbs."""
        if self.cursor is None:
            await self.restore()
        assert self.cursor is not None
        reply: object = await self.redis.xread(
            {EVENTS_STREAM: self.cursor}, count=READ_COUNT, block=self.block_ms
        )
        entries = xread_entries(reply)
        if entries:
            async with self.lock:
                for _, fields in entries:
                    self._handle(fields)
            self.cursor = entries[-1][0]
            await self.redis.set(cursor_key(self.bot), self.cursor)
        await self.sweep()
        return len(entries)

    async def sweep(self) -> None:
        """Finalise jobs that ended without a final event (seen twice: the worker writes the
        status and the event in separate steps)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval_s
        for request_id, (_, view) in list(self.jobs.items()):
            if view.final is not None:
                continue
            status = await read_status(self.redis, request_id)
            if status is not None and not status.final:
                self._ended_once.discard(request_id)
                continue
            if request_id not in self._ended_once:
                self._ended_once.add(request_id)
                continue
            async with self.lock:
                current = self.jobs.get(request_id)
                if current is not None and current[1].final is None:
                    self._show(request_id, evolve(current[1], final=final_from_status(status)))

    async def run(self) -> None:
        """Follow until `stop()` (within one XREAD block) or cancelled; a Redis outage is waited
        out, not fatal."""
        while not self._stopping.is_set():
            try:
                await self.step()
            except (RedisError, OSError) as exc:
                log.warning("bot_follower_redis_error", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), REDIS_RETRY_S)

    def stop(self) -> None:
        """Ask `run` to end after the read in flight. Stopping this way, not by cancelling:
        redis-py can swallow a cancellation that lands inside a blocking XREAD and leave the task
        waiting forever (redis/redis-py#2028, #2579; seen here: a bot test hung 1 run in 7)."""
        self._stopping.set()
