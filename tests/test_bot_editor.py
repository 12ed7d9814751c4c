"""The throttled editor with a real recorder as the chat: spacing, coalescing, order, the final
state, retries after failures and rate limits, and one slow message not holding up another."""

from __future__ import annotations

import asyncio
import itertools

from attrs import define, field

from handwriting_ai.bot.editor import (
    Done,
    EditGoneError,
    EditRateLimitedError,
    MessageRef,
    ThrottledEditor,
)

INTERVAL_S = 0.2
A, B = MessageRef(1, 10), MessageRef(1, 20)


@define
class Recorder:
    """The chat: records each edit as it starts; `fail` holds the errors the next edits raise."""

    edits: list[tuple[MessageRef, float, str]] = field(factory=list)
    fail: dict[MessageRef, list[Exception]] = field(factory=dict)
    slow_s: dict[MessageRef, float] = field(factory=dict)

    async def edit(self, ref: MessageRef, text: str) -> None:
        self.edits.append((ref, asyncio.get_running_loop().time(), text))
        await asyncio.sleep(self.slow_s.get(ref, 0.0))
        pending = self.fail.get(ref)
        if pending:
            raise pending.pop(0)

    def texts(self, ref: MessageRef) -> list[str]:
        return [t for r, _, t in self.edits if r == ref]

    def gaps(self, ref: MessageRef) -> list[float]:
        times = [at for r, at, _ in self.edits if r == ref]
        return [b - a for a, b in itertools.pairwise(times)]


async def test_edits_are_spaced_coalesced_in_order_and_the_final_is_sent() -> None:
    chat = Recorder()
    done: list[tuple[MessageRef, Done]] = []

    async def on_done(ref: MessageRef, how: Done) -> None:
        done.append((ref, how))

    editor = ThrottledEditor(chat, interval_s=INTERVAL_S, on_done=on_done)
    for n in range(1, 31):  # 30 states in ~0.6 s: far more than one per interval
        editor.submit(A, f"state {n}")
        await asyncio.sleep(0.02)
    editor.submit(A, "final", final=True)
    editor.submit(A, "after the final")  # ignored: nothing follows the final state
    await asyncio.wait_for(editor.drain(), 5)
    texts = chat.texts(A)
    assert texts[0] == "state 1"  # the first state goes out at once
    assert texts[-1] == "final"
    assert len(texts) < 10  # coalesced: only the latest state of each interval was sent
    numbers = [int(t.split()[1]) for t in texts[:-1]]
    assert numbers == sorted(numbers)  # in order
    assert min(chat.gaps(A)) >= INTERVAL_S - 0.01
    assert done == [(A, "sent")]
    assert editor.edits == len(texts)


async def test_a_failed_edit_is_retried_and_a_rate_limit_waits_as_asked() -> None:
    chat = Recorder(fail={A: [OSError("connection reset"), EditRateLimitedError(0.5)]})
    editor = ThrottledEditor(chat, interval_s=INTERVAL_S)
    editor.submit(A, "one", final=True)
    await asyncio.wait_for(editor.drain(), 10)
    assert chat.texts(A) == ["one", "one", "one"]
    first_gap, second_gap = chat.gaps(A)
    assert first_gap >= 1.0 - 0.01  # backoff after a failure: at least 1 s
    assert second_gap >= 0.5 - 0.01  # the rate limit's retry_after
    assert editor.failures == 2


async def test_a_newer_state_replaces_one_that_failed() -> None:
    chat = Recorder(fail={A: [OSError("down")]})
    editor = ThrottledEditor(chat, interval_s=INTERVAL_S)
    editor.submit(A, "old")
    await asyncio.sleep(0.05)
    editor.submit(A, "new", final=True)
    await asyncio.wait_for(editor.drain(), 10)
    assert chat.texts(A) == ["old", "new"]


async def test_a_deleted_message_is_given_up_and_a_slow_one_holds_no_other() -> None:
    chat = Recorder(fail={A: [EditGoneError("unknown message")]}, slow_s={B: 1.0})
    done: list[tuple[MessageRef, Done]] = []

    async def on_done(ref: MessageRef, how: Done) -> None:
        done.append((ref, how))

    editor = ThrottledEditor(chat, interval_s=INTERVAL_S, on_done=on_done)
    editor.submit(B, "slow 1")
    editor.submit(A, "a 1")
    await asyncio.sleep(0.05)
    editor.submit(A, "a 2")  # A is gone after its first edit: never sent
    editor.submit(B, "slow 2", final=True)
    await asyncio.sleep(0.3)
    assert chat.texts(A) == ["a 1"]
    assert (A, "gone") in done
    await asyncio.wait_for(editor.drain(), 5)
    assert chat.texts(B) == ["slow 1", "slow 2"]
    assert done[-1] == (B, "sent")


async def test_a_final_that_keeps_failing_is_given_up_after_max_attempts() -> None:
    chat = Recorder(fail={A: [OSError("down")] * 3})
    done: list[tuple[MessageRef, Done]] = []

    async def on_done(ref: MessageRef, how: Done) -> None:
        done.append((ref, how))

    editor = ThrottledEditor(chat, interval_s=0.01, on_done=on_done, max_attempts=2)
    editor.submit(A, "final", final=True)
    await asyncio.wait_for(editor.drain(), 5)
    assert chat.texts(A) == ["final", "final"]
    assert done == [(A, "gave_up")]
