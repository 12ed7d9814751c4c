"""`AsyncClient`: the service's HTTP API for asyncio programs (the Discord bot), on httpx.

Every call follows `policy.RetryPolicy` (5 s timeout, one retry 1 s after a 5xx or no answer,
none after a 4xx, `Retry-After` honoured up to 5 s) and sends `X-Request-ID` (the caller's, the
job's, or a new one) and `X-Api-Key` when one is configured. Failures are `ServiceError`s.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Mapping
from types import TracebackType

import httpx

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
    RetryPolicy,
)
from handwriting_ai.client.stream import EventCursor
from handwriting_ai.client.wire import (
    FEEDBACK_PATH,
    MODELS_PATH,
    READ_PATH,
    TRAIN_PATH,
    ModelAction,
    error_from,
    failure_of,
    headers,
    job_body,
    load_image,
    model_path,
    new_request_id,
    parse,
    read_form,
    train_path,
)
from handwriting_ai.contracts.events import TrainEvent
from handwriting_ai.contracts.jobs import TrainJob
from handwriting_ai.logging import get_logger
from handwriting_ai.settings import Settings

log = get_logger("handwriting_ai.client")


class AsyncClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str = "",
        timeout_s: float = TIMEOUT_S,
        retry_delay_s: float = RETRY_DELAY_S,
        transport: httpx.AsyncBaseTransport | None = None,
        max_retry_after_s: float = MAX_RETRY_AFTER_S,
        events_read_timeout_s: float = EVENTS_READ_TIMEOUT_S,
        max_reconnects: int = MAX_RECONNECTS,
    ) -> None:
        self.base_url = base_url
        self.policy = RetryPolicy(timeout_s, retry_delay_s, max_retry_after_s)
        self._api_key = api_key
        self._events_timeout = httpx.Timeout(timeout_s, read=events_read_timeout_s)
        self._max_reconnects = max_reconnects
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(timeout_s), transport=transport
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> AsyncClient:
        """`HANDWRITING_API_URL` and `HANDWRITING_API_KEY`, as the workers find the API."""
        return cls(settings.handwriting_api_url, api_key=settings.handwriting_api_key)

    async def read(
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
        if isinstance(image, bytes):
            upload = load_image(image, filename=filename, content_type=content_type)
        else:
            upload = await asyncio.to_thread(
                load_image, image, filename=filename, content_type=content_type
            )
        rid = request_id or new_request_id()
        response = await self._send(
            "POST",
            READ_PATH,
            rid,
            files={"file": upload.part()},
            data=read_form(invert=invert, center=center, visualize=visualize),
        )
        return parse(response, Reading, rid)

    async def train(self, job: TrainJob | Mapping[str, object]) -> TrainAccepted:
        """Queue a training job; its request_id (generated when it has none) makes a repeat of
        this call, the retry included, answer the same job (`duplicate: true`)."""
        body = job_body(job)
        rid = str(body["request_id"])
        response = await self._send("POST", TRAIN_PATH, rid, json=body)
        return parse(response, TrainAccepted, rid)

    async def status(self, request_id: str) -> TrainStatus:
        response = await self._send("GET", train_path(request_id), request_id)
        return parse(response, TrainStatus, request_id)

    async def feedback(self, request_id: str, label: int, *, user_id: int = 0) -> FeedbackAccepted:
        """Correct an earlier read (`Reading.request_id`): it was `label`. 409 `conflict` when
        that read was corrected already (so the retry policy's one retry is harmless)."""
        body = {"request_id": request_id, "label": label, "user_id": user_id}
        rid = new_request_id()
        response = await self._send("POST", FEEDBACK_PATH, rid, json=body)
        return parse(response, FeedbackAccepted, rid)

    async def models(self, *, request_id: str | None = None) -> RegistryListing:
        """Every stored model, its versions and the gate's decisions (`GET /v1/models`)."""
        rid = request_id or new_request_id()
        return parse(await self._send("GET", MODELS_PATH, rid), RegistryListing, rid)

    async def change_model(
        self,
        action: ModelAction,
        model_id: str,
        version: str | None = None,
        *,
        request_id: str | None = None,
    ) -> RegistryChange:
        """A registry action (needs the upload key). Repeating one that is in effect changes
        nothing (`changed: false`), so the retry policy's one retry is safe."""
        rid = request_id or new_request_id()
        response = await self._send("POST", model_path(action, model_id, version), rid)
        return parse(response, RegistryChange, rid)

    async def cancel(self, request_id: str) -> TrainStatus:
        """Cancel a queued job at once, or ask a running one to stop; 409 `conflict` when it
        has already ended."""
        response = await self._send("POST", train_path(request_id, "/cancel"), request_id)
        return parse(response, TrainStatus, request_id)

    async def events(
        self, request_id: str, *, last_event_id: str | None = None
    ) -> AsyncGenerator[TrainEvent, None]:
        """The job's events from its first (or after `last_event_id`) until its final one,
        reconnecting with `Last-Event-ID` when the connection drops (see `stream.py`)."""
        cursor = EventCursor(
            request_id, last_event_id, self._max_reconnects, self.policy.retry_delay_s
        )
        path = train_path(request_id, "/events")
        while True:  # ends at the final event, or with the ServiceError that stopped it
            sent = headers(self._api_key, request_id, **cursor.connect_headers())
            try:
                async with self._http.stream(
                    "GET", path, headers=sent, timeout=self._events_timeout
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        failure = error_from(response, request_id)
                    else:
                        async for line in response.aiter_lines():
                            event = cursor.line(line)
                            if event is not None:
                                yield event
                            if cursor.done:
                                return
                        failure = cursor.ended()
            except httpx.RequestError as exc:
                failure = failure_of(exc, request_id)
            delay_s = cursor.dropped(failure)
            log.info(
                "client_events_reconnect",
                request_id=request_id,
                code=failure.code,
                status=failure.status,
                last_event_id=cursor.last_event_id,
                delay_s=delay_s,
            )
            await asyncio.sleep(delay_s)

    async def _send(
        self,
        method: str,
        path: str,
        request_id: str,
        *,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        data: Mapping[str, str] | None = None,
        json: Mapping[str, object] | None = None,
    ) -> httpx.Response:
        """One call under the retry policy: a 2xx answer, or the `ServiceError` that ended it."""
        attempt = 1
        while True:
            try:
                response = await self._http.request(
                    method,
                    path,
                    headers=headers(self._api_key, request_id),
                    files=files,
                    data=data,
                    json=json,
                )
            except httpx.RequestError as exc:
                failure = failure_of(exc, request_id)
            else:
                if response.status_code < 400:
                    return response
                failure = error_from(response, request_id)
            delay_s = self.policy.delay_before_retry(failure, attempt)
            if delay_s is None:
                raise failure
            log.warning(
                "client_retry",
                method=method,
                path=path,
                request_id=request_id,
                code=failure.code,
                status=failure.status,
                delay_s=delay_s,
            )
            await asyncio.sleep(delay_s)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.base_url!r})"
