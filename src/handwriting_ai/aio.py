"""Stopping background tasks without hanging: cancel, wait, and cancel again.

redis-py can swallow a cancellation that lands inside a blocking read (XREAD BLOCK): the task
goes on as if nothing happened (redis/redis-py#2028, #2579). A plain `task.cancel(); await task`
then waits forever: seen here as an API shutdown and a bot restart that hung one run in a few.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from handwriting_ai.logging import get_logger

log = get_logger(__name__)
CANCEL_EVERY_S = 0.1


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[None]], *, timeout_s: float
) -> set[asyncio.Task[None]]:
    """Cancel `tasks` and wait up to `timeout_s` for them to end, cancelling again every
    `CANCEL_EVERY_S` (a swallowed cancellation meets the next one at its next await). Returns
    the tasks still running then, logged: the caller goes on without them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(CANCEL_EVERY_S, left))
    if pending:
        log.warning("tasks_not_stopped", tasks=sorted(t.get_name() for t in pending))
    return pending
