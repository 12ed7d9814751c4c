"""What the handlers share, on `app.state`: settings, engine, read and admin threads, Redis."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from attrs import define
from litestar.datastructures import State
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from handwriting_ai.api.admission import Admitted, ReadAdmission
from handwriting_ai.errors import PredictTimeoutError, QueueUnavailableError
from handwriting_ai.inference.engine import EngineHolder
from handwriting_ai.settings import Settings

T = TypeVar("T")
_KEY = "handwriting_ai"
# Short, so that a dead Redis answers 503 quickly; blocking reads block for less than this.
REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 2.0


def connect_redis(url: str) -> Redis:
    """The API's client: str replies, short timeouts, no backoff (a dead Redis fails fast)."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1),  # one immediate retry: a pooled socket may be stale
        health_check_interval=30,
    )


@define
class AppState:
    settings: Settings
    engine: EngineHolder
    reads: ReadAdmission | None = None
    # Uploads, reloads and model listings: never on the read threads, so a disk scan or a
    # model load never makes a read wait.
    admin: ThreadPoolExecutor | None = None
    redis: Redis | None = None

    def queue(self) -> Redis:
        """The Redis client, or 503 `queue_unavailable` when none is configured."""
        if self.redis is None:
            raise QueueUnavailableError("The training queue is not configured (set REDIS_URL).")
        return self.redis

    @staticmethod
    def of(state: State) -> AppState:
        value = state.get(_KEY)
        if not isinstance(value, AppState):
            raise RuntimeError("app state is not initialised")
        return value

    def install(self, state: State) -> None:
        state[_KEY] = self

    def admit_read(self, *, timeout_s: float) -> Admitted:
        """A place on the read threads, or 503 `overloaded` at once (admission control)."""
        if self.reads is None:
            raise RuntimeError("read threads not started")
        return self.reads.admit(timeout_s)

    async def run(self, fn: Callable[[], T], *, timeout_s: float) -> T:
        """Run admin work (disk, model loads) off the event loop, carrying the log context."""
        if self.admin is None:
            raise RuntimeError("admin thread not started")
        ctx = contextvars.copy_context()
        future = asyncio.get_running_loop().run_in_executor(self.admin, ctx.run, fn)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise PredictTimeoutError(
                f"Prediction did not finish within {timeout_s:g} s."
            ) from None
