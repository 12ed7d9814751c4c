"""Pure delivery policies: retry backoff, the poison cap, the trim point and the reclaim cursor.

No Redis here: the consumer asks these functions and does the I/O, so each rule is tested with
plain values.
"""

from __future__ import annotations

import os
import socket

from attrs import define, frozen

START_ID = "0-0"


def consumer_name() -> str:
    """`<host>-<pid>`: unique per process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


def parse_id(entry_id: str) -> tuple[int, int]:
    """`1700000000000-3` -> (1700000000000, 3), so ids compare as numbers, not strings."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def min_id(*ids: str | None) -> str | None:
    present = [i for i in ids if i]
    return min(present, key=parse_id) if present else None


def trim_point(oldest_pending: str | None, last_delivered: str | None) -> str | None:
    """The MINID for XTRIM: nothing pending and nothing undelivered is older than it.

    `None` (trim nothing) until the group has delivered something: an empty `last_delivered`
    (`0-0`) would otherwise keep nothing back from a fresh group.
    """
    if not last_delivered or last_delivered == START_ID:
        return None
    return min_id(oldest_pending, last_delivered)


@frozen
class RetryDecision:
    will_retry: bool
    delay_s: float


def retry_decision(
    attempt: int, *, retry_max: int, intervals_s: tuple[float, ...]
) -> RetryDecision:
    """After a system failure of attempt `attempt` (from 1): retry while fewer than `retry_max`
    retries were used; the n-th retry waits `intervals_s[n-1]` (the last one repeats)."""
    retries_used = max(0, attempt - 1)
    if retries_used >= retry_max:
        return RetryDecision(will_retry=False, delay_s=0.0)
    if not intervals_s:
        return RetryDecision(will_retry=True, delay_s=0.0)
    return RetryDecision(
        will_retry=True, delay_s=intervals_s[min(retries_used, len(intervals_s) - 1)]
    )


def over_delivery_cap(deliveries: int, max_deliveries: int) -> bool:
    """A poison entry (it keeps killing its worker) is given up after `max_deliveries`."""
    return max_deliveries > 0 and deliveries > max_deliveries


@define
class ReclaimCursor:
    """The XAUTOCLAIM cursor carried from reply to reply, so each call scans on from where the
    last stopped; it goes back to `0-0` only when a reply says the pass is complete."""

    cursor: str = START_ID
    passes: int = 0

    def advance(self, next_cursor: str) -> None:
        if next_cursor == START_ID:
            self.passes += 1
        self.cursor = next_cursor


def torch_threads(cores: int, concurrency: int) -> int:
    """Share the cores between the training slots instead of every slot taking all of them."""
    return max(1, cores // max(1, concurrency))
