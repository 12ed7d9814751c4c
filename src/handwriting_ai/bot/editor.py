"""Edits progress messages in place, throttled: at most one edit per message per `interval_s`.

Each message has its own slot and task, so a slow or failing message never holds up another.
A new text replaces one still waiting (only the latest is sent); edits of a message go out one at
a time, in order; the final text is always sent (a final submit is never dropped by coalescing,
and nothing after it is). A failed edit is tried again with backoff, or after the `retry_after_s`
a rate limit names; `EditGoneError` (the message was deleted, the bot lost access) stops editing it.
The chat layer implements `MessageEdits`; tests pass a recorder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

from attrs import frozen

from handwriting_ai.logging import get_logger

log = get_logger(__name__)

MAX_ATTEMPTS = 10  # failed edits in a row (rate limits not counted) before a text is given up
RETRY_BASE_S = 1.0
RETRY_CAP_S = 60.0


@frozen
class MessageRef:
    channel_id: int
    message_id: int


class MessageEdits(Protocol):
    async def edit(self, ref: MessageRef, text: str) -> None: ...


class EditGoneError(Exception):
    """The message can no longer be edited (deleted, or the channel is out of reach)."""


class EditRateLimitedError(Exception):
    """The chat service asked us to wait `retry_after_s` before the next edit."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"rate limited for {retry_after_s:g} s")
        self.retry_after_s = retry_after_s


Done = Literal["sent", "gone", "gave_up"]
OnDone = Callable[[MessageRef, Done], Awaitable[None]]


async def _nothing(ref: MessageRef, done: Done) -> None:
    pass


class _Slot:
    def __init__(self) -> None:
        self.pending: str | None = None
        self.pending_final = False
        self.final_submitted = False
        self.last_sent: str | None = None
        self.next_at = float("-inf")  # loop time before which no edit may start
        self.task: asyncio.Task[None] | None = None


class ThrottledEditor:
    def __init__(
        self,
        target: MessageEdits,
        *,
        interval_s: float = 1.5,
        on_done: OnDone = _nothing,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.target = target
        self.interval_s = interval_s
        self.on_done = on_done
        self.max_attempts = max_attempts
        self._slots: dict[MessageRef, _Slot] = {}
        self._gone: set[MessageRef] = set()  # deleted messages: never edited again
        self.edits = 0
        self.failures = 0

    def __repr__(self) -> str:
        return (
            f"ThrottledEditor(messages={len(self._slots)}, edits={self.edits},"
            f" failures={self.failures})"
        )

    def submit(self, ref: MessageRef, text: str, *, final: bool = False) -> None:
        """Show `text` in the message as soon as the throttle allows; never blocks."""
        if ref in self._gone:
            return
        slot = self._slots.setdefault(ref, _Slot())
        if slot.final_submitted:
            return
        slot.pending, slot.pending_final = text, final
        slot.final_submitted = final
        if slot.task is None or slot.task.done():
            slot.task = asyncio.create_task(self._run(ref, slot), name=f"edit-{ref.message_id}")

    def busy(self) -> bool:
        return any(s.task is not None and not s.task.done() for s in self._slots.values())

    async def drain(self) -> None:
        """Wait until every submitted text has been sent or given up."""
        while True:
            tasks = [s.task for s in self._slots.values() if s.task is not None]
            running = [t for t in tasks if not t.done()]
            if not running:
                return
            await asyncio.gather(*running, return_exceptions=True)

    async def aclose(self) -> None:
        tasks = [s.task for s in self._slots.values() if s.task is not None and not s.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _finish(self, ref: MessageRef, done: Done) -> None:
        self._slots.pop(ref, None)
        try:
            await self.on_done(ref, done)
        except Exception:  # the callback's trouble must not end the editor's task silently
            log.exception("edit_on_done_failed", message_id=ref.message_id)

    async def _run(self, ref: MessageRef, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        attempts = 0
        while slot.pending is not None:
            wait_s = slot.next_at - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)  # newer texts replace `pending` meanwhile
            text, final = slot.pending, slot.pending_final
            slot.pending = None
            if text == slot.last_sent:
                if final:
                    await self._finish(ref, "sent")
                    return
                continue
            slot.next_at = loop.time() + self.interval_s
            try:
                await self.target.edit(ref, text)
            except EditGoneError:
                log.warning("edit_gone", channel_id=ref.channel_id, message_id=ref.message_id)
                self._gone.add(ref)
                await self._finish(ref, "gone")
                return
            except EditRateLimitedError as exc:
                self.failures += 1
                slot.next_at = loop.time() + max(self.interval_s, exc.retry_after_s)
                self._retry(slot, text, final)
                continue
            except Exception as exc:  # noqa: BLE001 - network, 5xx: the next attempt may work
                self.failures += 1
                attempts += 1
                log.warning("edit_failed", message_id=ref.message_id, attempt=attempts, error=exc)
                if attempts >= self.max_attempts:
                    if final:
                        await self._finish(ref, "gave_up")
                        return
                    attempts = 0
                    continue  # this text is given up; a newer one may come
                backoff_s = min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempts - 1))
                slot.next_at = loop.time() + max(self.interval_s, backoff_s)
                self._retry(slot, text, final)
                continue
            attempts = 0
            self.edits += 1
            slot.last_sent = text
            if final:
                await self._finish(ref, "sent")
                return

    @staticmethod
    def _retry(slot: _Slot, text: str, final: bool) -> None:
        """Send `text` again unless a newer text came while it failed (then that one goes)."""
        if slot.pending is None:
            slot.pending, slot.pending_final = text, final
