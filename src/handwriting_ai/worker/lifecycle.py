"""A job's transitions as data: each one returns every Redis write it implies.

started, completed, failed (user), dead, cancelled, retried, skipped, released. Pure: no I/O. The
writes are Redis commands (tuples of strings) that `commit.py` runs in one Lua script, fenced by
the entry's ownership, so a status, its events, a dead letter or retry and the XACK are never split
and a worker that lost its entry writes nothing. One function per transition, so what each ending
writes is read in one place and tested with plain values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Literal

from attrs import frozen

from handwriting_ai.contracts.events import (
    TrainCompleted,
    TrainEvent,
    TrainFailed,
    TrainPrune,
    TrainStarted,
    TrainUpload,
    encode_event,
)
from handwriting_ai.contracts.jobs import (
    SAFE_ID_PATTERN,
    dead_letter,
    dead_letter_to_fields,
)
from handwriting_ai.streams.keys import (
    DEAD_STREAM,
    EVENTS_STREAM,
    JOBS_GROUP,
    JOBS_STREAM,
    RETRY_ZSET,
    job_events_key,
    job_lock_key,
    status_key,
)

Command = tuple[str, ...]
ErrorKind = Literal["user", "system"]
JOB_EVENTS_MAXLEN = 5_000
CANCELLED_MESSAGE = "cancelled by request"
# Conditional delete, run by the commit script: DEL the key only while it holds the value.
DEL_IF_EQUAL = "DELIFEQ"
_MAX_USER_ID = 2**63 - 1


@frozen
class JobRef:
    """Who the writes are about: what every event carries, and the entry being ended."""

    request_id: str
    user_id: int
    model_id: str
    entry_id: str
    consumer: str

    @property
    def lock_value(self) -> str:
        return f"{self.consumer} {self.entry_id}"


@frozen
class Limits:
    """The TTLs and caps the transitions write (from the settings)."""

    result_ttl_s: int
    failure_ttl_s: int
    events_maxlen: int


@frozen
class Transition:
    name: str
    commands: tuple[Command, ...]
    events: tuple[TrainEvent, ...] = ()


# ---------------------------------------------------------------------- ids of any entry


def _plain_int(text: str) -> int | None:
    """ASCII digits only: `²` passes `str.isdigit()` and then fails `int()`."""
    if text.isascii() and text.isdecimal() and len(text) <= 19:
        value = int(text)
        return value if value <= _MAX_USER_ID else None
    return None


def entry_ids(fields: Mapping[str, str], entry_id: str) -> tuple[str, int, str]:
    """(request_id, user_id, model_id) for the events of an entry that may be malformed: the
    request_id is always `job-<entry id>` (a malformed entry must never write into the status of
    a job that owns its request_id: that job may be starting on another worker this very moment;
    the dead letter keeps the fields as sent), and a user_id or model_id that breaks its
    contract is replaced (0, empty)."""
    user_id = _plain_int(fields.get("user_id", "0")) or 0
    raw_model = fields.get("model_id", "")
    model_id = raw_model if re.fullmatch(SAFE_ID_PATTERN, raw_model) else ""
    return f"job-{entry_id}", user_id, model_id


# ---------------------------------------------------------------------- building blocks


def _event_commands(event: TrainEvent, limits: Limits) -> list[Command]:
    flat = [part for pair in encode_event(event).items() for part in pair]
    own = job_events_key(event.request_id)
    return [
        ("XADD", EVENTS_STREAM, "MAXLEN", "~", str(limits.events_maxlen), "*", *flat),
        ("XADD", own, "MAXLEN", "~", str(JOB_EVENTS_MAXLEN), "*", *flat),
        ("EXPIRE", own, str(limits.failure_ttl_s)),
    ]


def _events(events: tuple[TrainEvent, ...], limits: Limits) -> list[Command]:
    return [command for event in events for command in _event_commands(event, limits)]


def _hset(key: str, fields: Mapping[str, str]) -> Command:
    return ("HSET", key, *[part for pair in fields.items() for part in pair])


def _end(ref: JobRef, status: Mapping[str, str], ttl_s: int, now: str) -> list[Command]:
    """A final status that expires with the job's events, the lock let go, the entry acked."""
    key = status_key(ref.request_id)
    return [
        _hset(key, {"request_id": ref.request_id, **status, "retry_at": "", "updated_at": now}),
        ("EXPIRE", key, str(ttl_s)),
        ("EXPIRE", job_events_key(ref.request_id), str(ttl_s)),
        (DEL_IF_EQUAL, job_lock_key(ref.request_id), ref.lock_value),
        ("XACK", JOBS_STREAM, JOBS_GROUP, ref.entry_id),
    ]


def _failed(
    ref: JobRef,
    kind: ErrorKind,
    message: str,
    attempt: int,
    now: str,
    *,
    will_retry: bool,
    cancelled: bool = False,
) -> TrainFailed:
    return TrainFailed(
        request_id=ref.request_id,
        user_id=ref.user_id,
        model_id=ref.model_id,
        ts=now,
        error_kind=kind,
        message=message,
        attempt=max(1, attempt),
        will_retry=will_retry,
        cancelled=cancelled,
    )


# ---------------------------------------------------------------------- transitions


def started(
    ref: JobRef, *, total_epochs: int, attempt: int, crashes: int, limits: Limits, now: str
) -> Transition:
    """Running with this attempt number; the status is created for a `redis-cli` job (fields the
    API wrote are kept). `crashes` counts earlier runs that never reached an outcome."""
    key = status_key(ref.request_id)
    created = [
        ("HSETNX", key, name, value)
        for name, value in (
            ("model_id", ref.model_id),
            ("user_id", str(ref.user_id)),
            ("created_at", now),
        )
    ]
    event = TrainStarted(
        request_id=ref.request_id,
        user_id=ref.user_id,
        model_id=ref.model_id,
        ts=now,
        total_epochs=total_epochs,
        attempt=max(1, attempt),
    )
    running = {
        "request_id": ref.request_id,
        "status": "running",
        "worker": ref.consumer,
        "entry_id": ref.entry_id,
        "attempts": str(attempt),
        "crashes": str(crashes),
        "retry_at": "",
        "updated_at": now,
    }
    commands = [*created, _hset(key, running), ("PERSIST", key), *_events((event,), limits)]
    return Transition("started", tuple(commands), (event,))


@frozen
class Result:
    """What a finished, uploaded run reports."""

    run_id: str
    version: str
    val_acc: float
    test_acc: float | None
    upload_status: int
    model_bytes: int
    manifest_bytes: int
    pruned_count: int
    # A `use_feedback` job (even one that found no corrections) reports these in its status.
    use_feedback: bool = False
    feedback_acc: float | None = None
    feedback_holdout: int = 0
    feedback_count: int = 0


def _unit(value: float | None) -> float | None:
    return None if value is None else min(1.0, max(0.0, value))


def completed(ref: JobRef, result: Result, *, limits: Limits, now: str) -> Transition:
    rid, uid, mid, run_id = ref.request_id, ref.user_id, ref.model_id, result.run_id
    events: tuple[TrainEvent, ...] = (
        TrainUpload(
            request_id=rid,
            user_id=uid,
            model_id=mid,
            run_id=run_id,
            ts=now,
            status=result.upload_status,
            model_bytes=result.model_bytes,
            manifest_bytes=result.manifest_bytes,
        ),
        TrainPrune(
            request_id=rid,
            user_id=uid,
            model_id=mid,
            run_id=run_id,
            ts=now,
            deleted_count=result.pruned_count,
        ),
        TrainCompleted(
            request_id=rid,
            user_id=uid,
            model_id=mid,
            run_id=run_id,
            ts=now,
            val_acc=min(1.0, max(0.0, result.val_acc)),
            test_acc=result.test_acc,
            version=result.version,
            feedback_acc=_unit(result.feedback_acc),
            feedback_holdout=result.feedback_holdout,
        ),
    )
    summary_fields: dict[str, str | float | int | None] = {
        "request_id": ref.request_id,
        "entry_id": ref.entry_id,
        "run_id": result.run_id,
        "version": result.version,
        "val_acc": result.val_acc,
        "test_acc": result.test_acc,
    }
    if result.use_feedback:
        summary_fields |= {
            "feedback_acc": result.feedback_acc,
            "feedback_holdout": result.feedback_holdout,
            "feedback_count": result.feedback_count,
        }
    summary = json.dumps(summary_fields, sort_keys=True)
    status = {"status": "completed", "result": summary, "error_kind": "", "message": ""}
    commands = [*_events(events, limits), *_end(ref, status, limits.result_ttl_s, now)]
    return Transition("completed", tuple(commands), events)


def dead(
    ref: JobRef,
    entry_fields: Mapping[str, str],
    *,
    kind: ErrorKind,
    reason: str,
    status: Literal["failed", "dead"],
    attempt: int,
    deliveries: int,
    limits: Limits,
    now: str,
) -> Transition:
    """The job will not run (again): `failed` event, dead letter with the original fields,
    final status `failed` (the user's fault) or `dead` (ours, retries used up)."""
    event = _failed(ref, kind, reason, attempt, now, will_retry=False)
    letter = dead_letter(
        entry_fields,
        entry_id=ref.entry_id,
        reason=reason,
        deliveries=max(1, deliveries),
        ts=now,
        request_id=ref.request_id,
    )
    flat = [part for pair in dead_letter_to_fields(letter).items() for part in pair]
    final = {"status": status, "error_kind": kind, "message": reason}
    commands = [
        *_events((event,), limits),
        ("XADD", DEAD_STREAM, "*", *flat),
        *_end(ref, final, limits.failure_ttl_s, now),
    ]
    return Transition(status, tuple(commands), (event,))


def cancelled(ref: JobRef, *, attempt: int, limits: Limits, now: str) -> Transition:
    event = _failed(ref, "user", CANCELLED_MESSAGE, attempt, now, will_retry=False, cancelled=True)
    final = {"status": "cancelled", "error_kind": "user", "message": CANCELLED_MESSAGE}
    commands = [*_events((event,), limits), *_end(ref, final, limits.failure_ttl_s, now)]
    return Transition("cancelled", tuple(commands), (event,))


def retried(
    ref: JobRef,
    job_fields: Mapping[str, str],
    *,
    message: str,
    attempt: int,
    failures: int,
    due_ms: int,
    retry_at: str,
    limits: Limits,
    now: str,
) -> Transition:
    """A system failure with retries left: the job parks in the retry set (its request_id kept)
    and the failed entry is acked, in the same step, so the job is always in exactly one place."""
    event = _failed(ref, "system", message, attempt, now, will_retry=True)
    member = json.dumps([part for pair in sorted(job_fields.items()) for part in pair])
    key = status_key(ref.request_id)
    waiting = {
        "status": "queued",
        "retry_at": retry_at,
        "failures": str(failures),
        "worker": "",
        "error_kind": "system",
        "message": message[:500],
        "updated_at": now,
    }
    commands = [
        *_events((event,), limits),
        ("ZADD", RETRY_ZSET, str(due_ms), member),
        _hset(key, waiting),
        ("PERSIST", key),
        (DEL_IF_EQUAL, job_lock_key(ref.request_id), ref.lock_value),
        ("XACK", JOBS_STREAM, JOBS_GROUP, ref.entry_id),
    ]
    return Transition("retried", tuple(commands), (event,))


def skipped(ref: JobRef) -> Transition:
    """Nothing to run (already final, a duplicate entry, a deleted entry): just the ack."""
    return Transition("skipped", (("XACK", JOBS_STREAM, JOBS_GROUP, ref.entry_id),))


def released(ref: JobRef, *, now: str) -> Transition:
    """A graceful stop left the job unfinished: back to `queued` (not a crash), entry pending for
    the next worker, the lock let go."""
    key = status_key(ref.request_id)
    commands = [
        _hset(key, {"status": "queued", "worker": "", "updated_at": now}),
        (DEL_IF_EQUAL, job_lock_key(ref.request_id), ref.lock_value),
    ]
    return Transition("released", tuple(commands))
