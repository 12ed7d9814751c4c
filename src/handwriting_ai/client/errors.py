"""`ServiceError`: every failure the client reports, typed from the service's error body.

The service answers every error as `{code, message, request_id}` (README "error table"); the
client adds three codes of its own for failures that have no such body: `unreachable` (no
connection, or it dropped before an answer), `timeout` (no answer within the client's timeout)
and `bad_response` (an answer that is not what the API sends). `stream_ended` is an event stream
that kept ending without the job's final event.
"""

from __future__ import annotations

UNREACHABLE = "unreachable"
TIMEOUT = "timeout"
BAD_RESPONSE = "bad_response"
STREAM_ENDED = "stream_ended"


class ServiceError(Exception):
    """`status` is the HTTP status, 0 when no answer came; `retry_after_s` is the 503's
    `Retry-After`, when it sent one."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str,
        *,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{code} ({status}): {message} [request_id {request_id}]")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    @property
    def reached(self) -> bool:
        """The service answered (with an error): False for `unreachable` and client timeouts."""
        return self.status != 0

    def __repr__(self) -> str:
        return (
            f"ServiceError(status={self.status}, code={self.code!r}, message={self.message!r},"
            f" request_id={self.request_id!r}, retry_after_s={self.retry_after_s!r})"
        )
