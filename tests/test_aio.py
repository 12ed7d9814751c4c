"""`cancel_and_wait`: a task that swallows a cancellation (as redis-py can inside a blocking read)
is cancelled again until it ends; one that never ends is given up after the timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time

from handwriting_ai.aio import cancel_and_wait


async def _swallows_once(ended: list[str]) -> None:
    with contextlib.suppress(asyncio.CancelledError):  # swallowed, as redis-py may
        await asyncio.sleep(60)
    try:
        await asyncio.Event().wait()  # goes on as if nothing happened
    finally:
        ended.append("ended")


async def _ignores_cancellation(release: asyncio.Event) -> None:
    while not release.is_set():
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            continue


async def test_a_swallowed_cancellation_is_repeated_until_the_task_ends() -> None:
    ended: list[str] = []
    task = asyncio.create_task(_swallows_once(ended))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    assert await cancel_and_wait([task], timeout_s=5.0) == set()
    assert ended == ["ended"]
    assert time.monotonic() - started < 1.0
    # What a plain cancel-and-await does to the same task: it never returns.
    again = asyncio.create_task(_swallows_once([]))
    await asyncio.sleep(0.01)
    again.cancel()
    done, _ = await asyncio.wait({again}, timeout=0.8)
    assert not done
    await cancel_and_wait([again], timeout_s=5.0)


async def test_a_task_that_never_ends_is_given_up_after_the_timeout() -> None:
    release = asyncio.Event()
    task = asyncio.create_task(_ignores_cancellation(release), name="stubborn")
    await asyncio.sleep(0.01)
    started = time.monotonic()
    assert await cancel_and_wait([task], timeout_s=0.5) == {task}
    assert 0.5 <= time.monotonic() - started < 1.5
    release.set()
    await task
