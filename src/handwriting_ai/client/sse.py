"""Server-Sent Events, parsed line by line as the HTML standard says, and decoded into events.

`SseDecoder.feed(line)` takes one line (without its line ending) and returns a message when a
blank line completes one. Comments (`: keep-alive`) are skipped; `data:` lines are joined with
`\\n`; a message without data is not dispatched; an `id:` sets the last event id even then. A
message cut off by a dropped connection never completes, so it is never yielded: after a
reconnect with `Last-Event-ID` it comes again, whole, exactly once.
"""

from __future__ import annotations

from attrs import define, field, frozen

from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import EVENT_CLASSES, TrainEvent, decode_event

DEFAULT_EVENT = "message"


@frozen
class SseMessage:
    event: str
    data: str
    id: str  # the last event id when this message was dispatched ("" if none yet)


@define
class SseDecoder:
    last_event_id: str = ""
    retry_ms: int | None = None  # the server's `retry:` field, if it sent one
    _event: str = field(default="", init=False)
    _data: list[str] = field(factory=list, init=False)

    def feed(self, line: str) -> SseMessage | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def reset(self) -> None:
        """Forget a message still being received (its connection dropped); keep the id."""
        self._event, self._data = "", []

    def _dispatch(self) -> SseMessage | None:
        event, data = self._event or DEFAULT_EVENT, self._data
        self._event, self._data = "", []
        if not data:
            return None
        return SseMessage(event, "\n".join(data), self.last_event_id)


def train_event(message: SseMessage) -> TrainEvent | None:
    """The training event a message carries; None for a type this client does not know (a newer
    service's event: skipped, as events are read tolerantly). `ContractError` if malformed."""
    fields = {"event": message.data}
    if message.event != DEFAULT_EVENT:
        if message.event not in EVENT_CLASSES:
            return None
        fields["type"] = message.event
    try:
        return decode_event(fields)
    except ContractError as exc:
        if message.event == DEFAULT_EVENT and any("@ $.type" in e for e in exc.errors):
            return None
        raise
