"""`Client`: the service's HTTP API for synchronous programs (`digits read`).

The same calls, retry policy, errors and event resume as `AsyncClient`, because it IS the async
client: each call runs its coroutine on a private event loop in a daemon thread and waits for the
result. One implementation of the policy and the SSE reconnects instead of a second, blocking copy
that would drift from the first (the thread costs nothing next to a network call).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator, Mapping
from types import TracebackType
from typing import TypeVar

from handwriting_ai.client.async_client import AsyncClient
from handwriting_ai.client.models import (
    FeedbackAccepted,
    Reading,
    RegistryChange,
    RegistryListing,
    TrainAccepted,
    TrainStatus,
)
from handwriting_ai.client.policy import (
    EVENTS_READ_TIMEOUT_S,
    MAX_RECONNECTS,
    MAX_RETRY_AFTER_S,
    RETRY_DELAY_S,
    TIMEOUT_S,
)
from handwriting_ai.client.wire import ModelAction
from handwriting_ai.contracts.events import TrainEvent
from handwriting_ai.contracts.jobs import TrainJob
from handwriting_ai.settings import Settings

T = TypeVar("T")


class Client:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str = "",
        timeout_s: float = TIMEOUT_S,
        retry_delay_s: float = RETRY_DELAY_S,
        max_retry_after_s: float = MAX_RETRY_AFTER_S,
        events_read_timeout_s: float = EVENTS_READ_TIMEOUT_S,
        max_reconnects: int = MAX_RECONNECTS,
    ) -> None:
        self.base_url = base_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="digits-client", daemon=True
        )
        self._thread.start()
        self._async = AsyncClient(
            base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            retry_delay_s=retry_delay_s,
            max_retry_after_s=max_retry_after_s,
            events_read_timeout_s=events_read_timeout_s,
            max_reconnects=max_reconnects,
        )
        self.policy = self._async.policy

    @classmethod
    def from_settings(cls, settings: Settings) -> Client:
        """`HANDWRITING_API_URL` and `HANDWRITING_API_KEY`, as the workers find the API."""
        return cls(settings.handwriting_api_url, api_key=settings.handwriting_api_key)

    def _run(self, call: Coroutine[object, object, T]) -> T:
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def read(
        self,
        image: bytes | str | os.PathLike[str],
        *,
        filename: str | None = None,
        content_type: str | None = None,
        invert: bool | None = None,
        center: bool | None = None,
        visualize: bool = False,
        request_id: str | None = None,
    ) -> Reading:
        """Read the digit in a PNG or JPEG (bytes, or a file's path)."""
        return self._run(
            self._async.read(
                image,
                filename=filename,
                content_type=content_type,
                invert=invert,
                center=center,
                visualize=visualize,
                request_id=request_id,
            )
        )

    def train(self, job: TrainJob | Mapping[str, object]) -> TrainAccepted:
        """Queue a training job; its request_id (generated when it has none) makes a repeat of
        this call, the retry included, answer the same job (`duplicate: true`)."""
        return self._run(self._async.train(job))

    def status(self, request_id: str) -> TrainStatus:
        return self._run(self._async.status(request_id))

    def feedback(self, request_id: str, label: int, *, user_id: int = 0) -> FeedbackAccepted:
        """Correct an earlier read; see `AsyncClient.feedback`."""
        return self._run(self._async.feedback(request_id, label, user_id=user_id))

    def models(self, *, request_id: str | None = None) -> RegistryListing:
        """Every stored model, its versions and the gate's decisions (`GET /v1/models`)."""
        return self._run(self._async.models(request_id=request_id))

    def change_model(
        self,
        action: ModelAction,
        model_id: str,
        version: str | None = None,
        *,
        request_id: str | None = None,
    ) -> RegistryChange:
        """A registry action (needs the upload key); see `AsyncClient.change_model`."""
        return self._run(self._async.change_model(action, model_id, version, request_id=request_id))

    def cancel(self, request_id: str) -> TrainStatus:
        """Cancel a queued job at once, or ask a running one to stop; 409 `conflict` when it
        has already ended."""
        return self._run(self._async.cancel(request_id))

    def events(self, request_id: str, *, last_event_id: str | None = None) -> Iterator[TrainEvent]:
        """The job's events from its first (or after `last_event_id`) until its final one,
        reconnecting with `Last-Event-ID` when the connection drops (see `stream.py`)."""
        events = self._async.events(request_id, last_event_id=last_event_id)
        try:
            while True:
                try:
                    yield self._run(events.__anext__())
                except StopAsyncIteration:
                    return
        finally:  # also when the caller stops early: the stream's connection is closed
            self._run(events.aclose())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"
