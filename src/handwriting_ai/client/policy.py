"""The retry policy (the seeds' "DiscordBot Integration"), as plain values and one pure function.

- Each attempt has `timeout_s` (5 s) for connecting, sending and each wait for the answer.
- ONE retry, `retry_delay_s` (1 s) after a 5xx, a timeout or a connection error; never after a
  4xx (the same request would be refused the same way).
- A 503 with `Retry-After` (the API's `overloaded`): the retry waits what the service asked when
  that is longer than `retry_delay_s`, up to `max_retry_after_s` (5 s); a longer wait is not
  retried at all (the error, with `retry_after_s`, goes to the caller, who can tell the user when
  to come back) so that one call never blocks for longer than about two timeouts plus 5 s.
- Every request is safe to repeat: reads are pure, a training job is idempotent by its
  request_id (the client always sends one), a status is a read, and a repeated cancel of a job
  the first attempt already cancelled answers 409 `conflict` ("already cancelled").
"""

from __future__ import annotations

import math

from attrs import frozen

from handwriting_ai.client.errors import ServiceError

TIMEOUT_S = 5.0
RETRY_DELAY_S = 1.0
MAX_RETRY_AFTER_S = 5.0
ATTEMPTS = 2  # the first and one retry
# The API sends an SSE comment every 15 s while a job is quiet; a read that waits longer than
# that plus a margin is a dead connection, and the events iterator reconnects.
KEEPALIVE_S = 15.0
EVENTS_READ_TIMEOUT_S = KEEPALIVE_S + 10.0
# Reconnects in a row that brought no event before `events` gives up (each waits retry_delay_s).
MAX_RECONNECTS = 5


@frozen
class RetryPolicy:
    timeout_s: float = TIMEOUT_S
    retry_delay_s: float = RETRY_DELAY_S
    max_retry_after_s: float = MAX_RETRY_AFTER_S
    attempts: int = ATTEMPTS

    def delay_before_retry(self, failure: ServiceError, attempt: int) -> float | None:
        """Seconds to wait before trying again after `attempt` (1-based) failed with `failure`;
        None: do not retry, report `failure`."""
        if attempt >= self.attempts or not retryable(failure):
            return None
        asked = failure.retry_after_s
        if asked is None or asked <= self.retry_delay_s:
            return self.retry_delay_s
        return asked if asked <= self.max_retry_after_s else None


def retryable(failure: ServiceError) -> bool:
    """5xx, or no answer at all (timeout, connection refused or dropped)."""
    return failure.status >= 500 or failure.status == 0


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (the API sends an integer); an HTTP date or junk: None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
