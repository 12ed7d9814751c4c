"""How fast the read threads drain their queue, as admission control estimates it, on a clock
the test moves: reads finish when the test says, so each estimate is exact.

The drain rate is the interval between completions while a read waited for a thread. Two ways it
went wrong and refused every read that had to wait, for good (no read waited after that, so the
estimate never moved again): an idle spell before a burst measured as one interval, and a stall
(a long GC pause, a starved machine) under a real queue.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from handwriting_ai.api.admission import Admitted, ReadAdmission
from handwriting_ai.errors import OverloadedError

READ_S = 0.4
TIMEOUT_S = 2.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)  # admission's clock (a test reads no other)
    return fake


@pytest.fixture
def admission() -> Iterator[ReadAdmission]:
    two = ReadAdmission(threads=2, queue=10)
    two._record(READ_S)  # one read measured: 0.4 s on a thread
    yield two
    two.shutdown()


def admit(admission: ReadAdmission, n: int) -> list[Admitted]:
    return [admission.admit(TIMEOUT_S) for _ in range(n)]


def finish(admission: ReadAdmission, clock: Clock, after_s: float) -> None:
    """A read's thread is done with it `after_s` from now."""
    clock.now += after_s
    admission._finished()


def waits_admitted(admission: ReadAdmission, behind: int) -> bool:
    """Would a read with `behind` reads waiting ahead of it (both threads busy) be admitted?"""
    held: list[Admitted] = []
    try:
        for _ in range(2 + behind - admission.admitted):
            held.append(admission.admit(TIMEOUT_S))
        return admission.refusal(TIMEOUT_S) is None
    except OverloadedError:
        return False
    finally:
        for place in held:
            place.release()


def test_an_idle_spell_before_a_burst_is_not_one_slow_read(
    admission: ReadAdmission, clock: Clock
) -> None:
    admit(admission, 1)
    finish(admission, clock, READ_S)
    clock.now += 60.0  # nothing to do for a minute
    admit(admission, 6)  # a burst: two run, four wait
    for _ in range(4):
        finish(admission, clock, READ_S / 2)  # two threads: one finishes every 0.2 s
    # Two running and five waiting: one more starts within 6 x 0.2 s and ends by 1.6 s. (With
    # the idle minute in the estimate, one finishing every 0.4 s at best: 2.8 s, refused.)
    assert waits_admitted(admission, behind=5)


def test_a_stall_under_a_queue_does_not_refuse_every_wait_for_good(
    admission: ReadAdmission, clock: Clock
) -> None:
    admit(admission, 4)  # two run, two wait
    finish(admission, clock, READ_S / 2)
    finish(admission, clock, 30.0)  # a 30 s stall while a read waited
    finish(admission, clock, READ_S / 2)
    finish(admission, clock, READ_S / 2)  # the queue is gone; nothing waits from here on
    # A read that waits for the first free thread starts within a read's time at worst,
    # whatever the stall measured: refusing it would leave nothing to measure a better rate by.
    assert waits_admitted(admission, behind=0)
    assert waits_admitted(admission, behind=2)
