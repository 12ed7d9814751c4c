"""What the handlers share, on `app.state`: settings, engine, read and admin threads, Redis."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from attrs import define, field
from litestar.datastructures import State
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from handwriting_ai.api.admission import Admitted, ReadAdmission
from handwriting_ai.api.event_hub import EventHub
from handwriting_ai.api.metrics import ApiMetrics
from handwriting_ai.api.samples import SampleKeeper
from handwriting_ai.errors import PredictTimeoutError, QueueUnavailableError
from handwriting_ai.inference.engine import EngineHolder
from handwriting_ai.registry.state import RegistryState
from handwriting_ai.settings import Settings

T = TypeVar("T")
_KEY = "handwriting_ai"
# Short, so that a dead Redis answers 503 quickly; blocking reads block for less than this.
REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_MAX_CONNECTIONS = 100  # per API process; all SSE streams together use at most 16 (+ 1 reader)


def connect_redis(url: str) -> Redis:
    """The API's client: str replies, short timeouts, no backoff (a dead Redis fails fast).

    A blocking pool: when every connection is busy (Redis slow for a moment, a burst of
    requests), a call waits up to `REDIS_SOCKET_TIMEOUT_S` for one to come back, where redis-py's
    default pool fails at once ("Too many connections") and the route answers 503.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_SOCKET_TIMEOUT_S,
        decode_responses=True,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1),  # one immediate retry: a pooled socket may be stale
        health_check_interval=30,
    )
    return Redis.from_pool(pool)  # the client owns the pool: `aclose()` closes it


@define
class AppState:
    settings: Settings
    engine: EngineHolder
    reads: ReadAdmission | None = None
    # Uploads, reloads and model listings: never on the read threads, so a disk scan or a
    # model load never makes a read wait.
    admin: ThreadPoolExecutor | None = None
    redis: Redis | None = None
    events: EventHub | None = None  # the one Redis reader behind every SSE stream
    metrics: ApiMetrics = field(factory=ApiMetrics)
    # The model registry (Redis when configured, else the model directory; blocking: admin
    # threads only), and the reconciler's wake-up for a change made through this replica.
    registry: RegistryState | None = None
    wake: asyncio.Event | None = None
    samples: SampleKeeper | None = None  # each read's 28x28 sample, for a correction (Redis)

    def queue(self) -> Redis:
        """The Redis client, or 503 `queue_unavailable` when none is configured."""
        if self.redis is None:
            raise QueueUnavailableError("The training queue is not configured (set REDIS_URL).")
        return self.redis

    def event_hub(self) -> EventHub:
        """The SSE hub, or 503 `queue_unavailable` when there is no Redis to read."""
        if self.events is None:
            raise QueueUnavailableError("The training queue is not configured (set REDIS_URL).")
        return self.events

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


def read_refused(state: State, status: int, code: str) -> None:
    """Count a refused read in the app's metrics (an app without our state has none)."""
    value = state.get(_KEY)
    if isinstance(value, AppState):
        value.metrics.read_refused(status, code)
