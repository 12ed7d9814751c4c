"""What each ending writes, as plain values: the status it leaves, how long that is kept, the events
in order, and that the entry is acked and the lock let go last (the commit runs them in order)."""

from __future__ import annotations

import json

import pytest

from handwriting_ai.streams.keys import (
    JOBS_GROUP,
    JOBS_STREAM,
    job_events_key,
    job_lock_key,
    status_key,
)
from handwriting_ai.worker import lifecycle
from handwriting_ai.worker.lifecycle import Command, JobRef, Limits, Result, Transition

LIMITS = Limits(result_ttl_s=100, failure_ttl_s=200, events_maxlen=1000)
NOW = "2026-01-01T00:00:00.000Z"
REF = JobRef("r1", 7, "mnist_digitnet_v1", "5-0", "w1")
RESULT = Result(
    run_id="run-1",
    version="v2",
    val_acc=0.97,
    test_acc=0.96,
    upload_status=201,
    model_bytes=10,
    manifest_bytes=2,
    pruned_count=1,
)


def status_fields(transition: Transition) -> dict[str, str]:
    key = status_key(REF.request_id)
    fields: dict[str, str] = {}
    for command in transition.commands:
        if command[:2] == ("HSET", key):
            pairs = command[2:]
            fields.update(zip(pairs[::2], pairs[1::2], strict=True))
    return fields


def expiries(transition: Transition) -> dict[str, int]:
    return {c[1]: int(c[2]) for c in transition.commands if c[0] == "EXPIRE"}


def tail(transition: Transition) -> list[Command]:
    return list(transition.commands[-2:])


def test_completed_keeps_the_result_for_the_result_ttl_then_acks() -> None:
    done = lifecycle.completed(REF, RESULT, limits=LIMITS, now=NOW)
    assert [e.type for e in done.events] == [
        "digits.train.upload.v1",
        "digits.train.prune.v1",
        "digits.train.completed.v1",
    ]
    fields = status_fields(done)
    assert fields["status"] == "completed"
    assert json.loads(fields["result"]) == {
        "request_id": "r1",
        "entry_id": "5-0",
        "run_id": "run-1",
        "version": "v2",
        "val_acc": 0.97,
        "test_acc": 0.96,
    }
    assert expiries(done)[status_key("r1")] == 100
    assert expiries(done)[job_events_key("r1")] == 100
    assert tail(done) == [
        (lifecycle.DEL_IF_EQUAL, job_lock_key("r1"), "w1 5-0"),
        ("XACK", JOBS_STREAM, JOBS_GROUP, "5-0"),
    ]


@pytest.mark.parametrize("status", ["failed", "dead"])
def test_failures_are_kept_for_the_failure_ttl(status: str) -> None:
    ended = lifecycle.dead(
        REF,
        {"model_id": "x"},
        kind="user" if status == "failed" else "system",
        reason="bad",
        status="failed" if status == "failed" else "dead",
        attempt=2,
        deliveries=3,
        limits=LIMITS,
        now=NOW,
    )
    assert status_fields(ended)["status"] == status
    assert expiries(ended)[status_key("r1")] == 200
    assert tail(ended)[-1] == ("XACK", JOBS_STREAM, JOBS_GROUP, "5-0")


def test_events_are_capped_by_the_setting() -> None:
    started = lifecycle.started(REF, total_epochs=2, attempt=1, crashes=0, limits=LIMITS, now=NOW)
    xadds = [c for c in started.commands if c[0] == "XADD"]
    assert [c[1] for c in xadds] == ["digits:events", job_events_key("r1")]
    assert xadds[0][2:5] == ("MAXLEN", "~", "1000")
    assert status_fields(started)["status"] == "running"
    assert ("PERSIST", status_key("r1")) in started.commands
    assert "XACK" not in [c[0] for c in started.commands]


def test_a_retry_parks_the_job_when_due_and_acks_the_failed_entry() -> None:
    retried = lifecycle.retried(
        REF,
        {"request_id": "r1", "model_id": "mnist_digitnet_v1"},
        message="boom",
        attempt=1,
        failures=1,
        due_ms=123_456,
        retry_at=NOW,
        limits=LIMITS,
        now=NOW,
    )
    (zadd,) = [c for c in retried.commands if c[0] == "ZADD"]
    assert zadd[2] == "123456"
    assert json.loads(zadd[3]) == ["model_id", "mnist_digitnet_v1", "request_id", "r1"]
    assert status_fields(retried)["status"] == "queued"
    assert tail(retried)[-1] == ("XACK", JOBS_STREAM, JOBS_GROUP, "5-0")
