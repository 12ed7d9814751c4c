"""Pure delivery policies: retry backoff, the crash cap, the trim point, reclaim suspicion.

No Redis here: the consumer asks these functions and does the I/O, so each rule is tested with
plain values.
"""

from __future__ import annotations

import os
import socket

from attrs import define, field, frozen

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
    failures: int, *, retry_max: int, intervals_s: tuple[float, ...]
) -> RetryDecision:
    """After the job's `failures`-th system failure (from 1): retry while fewer than `retry_max`
    retries were used; the n-th retry waits `intervals_s[n-1]` (the last one repeats). Only real
    failures count: a run left pending by a stop or kept through a Redis outage is not one."""
    retries_used = max(0, failures - 1)
    if retries_used >= retry_max:
        return RetryDecision(will_retry=False, delay_s=0.0)
    if not intervals_s:
        return RetryDecision(will_retry=True, delay_s=0.0)
    return RetryDecision(
        will_retry=True, delay_s=intervals_s[min(retries_used, len(intervals_s) - 1)]
    )


def over_crash_cap(crashes: int, max_crashes: int) -> bool:
    """A poison job (its runs keep ending their worker) is given up after `max_crashes` runs
    that never reached an outcome."""
    return max_crashes > 0 and crashes >= max_crashes


@define
class SuspectTracker:
    """Which pending entries have looked ownerless (no lease) for how long, by our own clock.

    An entry is handed to `claim` only after it stayed suspect for a whole window of our own
    successful observations: after a Redis outage (or a CLIENT PAUSE) every lease is gone at
    once, and the window gives a live owner time to heartbeat and renew its lease. Any failed or
    stalled observation forgets everything: we were cut off too, so we saw nothing.
    """

    first_seen: dict[str, tuple[str, float]] = field(factory=dict)

    def observe(self, suspects: list[tuple[str, str]], now: float) -> None:
        seen = dict(suspects)
        self.first_seen = {
            entry_id: (owner, self._since(entry_id, owner, now)) for entry_id, owner in seen.items()
        }

    def _since(self, entry_id: str, owner: str, now: float) -> float:
        known = self.first_seen.get(entry_id)
        return known[1] if known is not None and known[0] == owner else now

    def confirmed(self, now: float, window_s: float) -> list[tuple[str, str]]:
        return [
            (entry_id, owner)
            for entry_id, (owner, since) in sorted(self.first_seen.items())
            if now - since >= window_s
        ]

    def forget(self, entry_id: str) -> None:
        self.first_seen.pop(entry_id, None)

    def reset(self) -> None:
        self.first_seen = {}


def torch_threads(cores: int, concurrency: int) -> int:
    """Share the cores between the training slots instead of every slot taking all of them."""
    return max(1, cores // max(1, concurrency))
