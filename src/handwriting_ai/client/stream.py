"""Following one job's events across connections: where to resume, when to stop, when to give up.

Shared by the async and the sync client, which only move bytes. Each complete SSE message moves
the cursor (`last_event_id`); a connection that drops or ends before the job's final event is
opened again with `Last-Event-ID`, so the service replays exactly what came after the last
message yielded: nothing lost, nothing twice. Reconnects in a row that bring no message are
bounded (`max_reconnects`); a 4xx (the job is unknown, the key refused) is never retried.
Should a service (or a proxy dropping the header) replay from the start anyway, messages whose
stream id is not after the cursor are skipped: still nothing twice.
"""

from __future__ import annotations

from attrs import define, field

from handwriting_ai.client.errors import BAD_RESPONSE, STREAM_ENDED, ServiceError
from handwriting_ai.client.sse import SseDecoder, train_event
from handwriting_ai.client.wire import LAST_EVENT_ID_HEADER
from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import TrainEvent, is_final
from handwriting_ai.streams.follow import STREAM_ID, id_key


def seen_before(message_id: str, last_event_id: str | None) -> bool:
    """True when both are stream ids (`<ms>-<seq>`) and the message's is not after the last."""
    last = last_event_id or ""
    if not (STREAM_ID.match(message_id) and STREAM_ID.match(last)):
        return False
    return id_key(message_id) <= id_key(last)


@define
class EventCursor:
    request_id: str
    last_event_id: str | None
    max_reconnects: int
    reconnect_delay_s: float
    done: bool = False
    reconnects: int = 0  # every reconnect of this follow (for logs)
    _misses: int = field(default=0, init=False)  # reconnects in a row without a message
    _decoder: SseDecoder = field(factory=SseDecoder, init=False)

    def connect_headers(self) -> dict[str, str]:
        """For the next connection; a message cut off by the last one is forgotten."""
        self._decoder.reset()
        sent = {"Accept": "text/event-stream"}
        if self.last_event_id:
            sent[LAST_EVENT_ID_HEADER] = self.last_event_id
        return sent

    def line(self, line: str) -> TrainEvent | None:
        """The event a line completes, if any; `done` once it is the job's final event."""
        message = self._decoder.feed(line)
        if message is None or seen_before(message.id, self.last_event_id):
            return None
        try:
            event = train_event(message)
        except ContractError as exc:
            raise ServiceError(
                200,
                BAD_RESPONSE,
                f"Event {message.id or '?'} does not decode: {'; '.join(exc.errors)}",
                self.request_id,
            ) from None
        if message.id:
            self.last_event_id = message.id
        self._misses = 0
        self.done = event is not None and is_final(event)
        return event

    def ended(self) -> ServiceError:
        """The service closed the stream before the final event (a restart, a Redis error)."""
        return ServiceError(
            200,
            STREAM_ENDED,
            "The event stream ended before the job's final event.",
            self.request_id,
        )

    def dropped(self, failure: ServiceError) -> float:
        """Seconds to wait before reconnecting after `failure`; raises it when a reconnect would
        not help (a 4xx) or `max_reconnects` in a row brought nothing."""
        if 400 <= failure.status < 500:
            raise failure
        self._misses += 1
        if self._misses > self.max_reconnects:
            raise failure
        self.reconnects += 1
        return self.reconnect_delay_s
