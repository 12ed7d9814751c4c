"""Hostile flat-field entries added with XADD, as `redis-cli` would: unicode digits (`²` passes
`str.isdigit()` and fails `int()`), empty and huge values, bytes that are not UTF-8, unknown
fields, duplicate and hostile request ids and model ids. Each entry ends as a `failed` event plus
a dead letter, or as a run; no entry stops a worker, and the workers serve the next valid job
(issue 9, finding 3).

Hypothesis draws batches of entries; each batch is added at once, with a valid job and its exact
duplicate, and checked once the workers have read and settled all of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import pytest
import redis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from faults.harness import TINY_MODEL_ID, Job, Rig, WorkerProcess
from faults.invariants import (
    FINAL,
    assert_invariants,
    dead_letters,
    describe,
    events,
    job_problems,
    kind,
    shared_events,
    status,
    tail,
    text,
    worker_problems,
)
from handwriting_ai.contracts.events import (
    TrainCompleted,
    TrainFailed,
    TrainStarted,
    is_final,
)
from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.timeout(600)]

Raw = str | bytes
Entry = dict[Raw, Raw]
SETTLE_S = 90.0

NOT_UTF8 = st.binary(min_size=1, max_size=6).filter(lambda b: not _utf8(b))
UNICODE_DIGITS = ["²", "³", "¹", "١", "߁", "𝟙", "٣", "Ⅻ", "½", "①"]
HUGE_INT = "9" * 5000  # past Python's int-string limit: int() raises ValueError
ODD_NUMBERS = ["", " ", "-1", "1e3", "NaN", "inf", "0x10", "1_0", "true", " 1", HUGE_INT]


def _numbers(*valid: str) -> st.SearchStrategy[Raw]:
    """A number field's values: a few valid ones (never a long job), odd ones, unicode digits
    and bytes that are not UTF-8."""
    return st.one_of(st.sampled_from([*valid, *ODD_NUMBERS, *UNICODE_DIGITS]), NOT_UTF8)


TEXTISH = st.one_of(
    st.sampled_from(["", " ", "\n", "\x00", "null", "{}", "x" * 100_000]),
    st.text(max_size=12),
    NOT_UTF8,
)
HOSTILE_IDS = [
    "",
    "../../etc/passwd",
    "digits:job:x",
    "id with spaces",
    "\n",
    "*",
    "²",
    "-leading",
    "a" * 129,
    "ü",
]
# Valid ids too, some shared between entries (duplicates), one as long as allowed.
REQUEST_IDS = st.one_of(
    st.sampled_from([*HOSTILE_IDS, "hyp-dup-1", "hyp-dup-1", "hyp-dup-2", "h" * 128]),
    st.text(max_size=10),
    NOT_UTF8,
)
MODEL_IDS = st.one_of(
    st.just(TINY_MODEL_ID),
    st.sampled_from([*HOSTILE_IDS, "mnist_nope_v1", "mnist_digitnet_tiny_" + "x" * 60]),
    NOT_UTF8,
)
FIELD_VALUES: dict[str, st.SearchStrategy[Raw]] = {
    "request_id": REQUEST_IDS,
    "model_id": MODEL_IDS,
    "user_id": _numbers("0", "7", str(2**63 - 1), str(2**63)),
    "epochs": _numbers("1", "2", "0", "501"),
    "batch_size": _numbers("0", "64", "8193"),
    "seed": _numbers("0", "42", str(2**32)),
    "lr": _numbers("0.003", "0", "1e-3", "1e309", "-0.1"),
    "augment": st.one_of(st.sampled_from(["false", "true", "", "yes", "2", "²"]), NOT_UTF8),
    "notes": TEXTISH,
    "type": st.sampled_from(["digits.train.v1", "digits.train.v2", ""]),
}
UNKNOWN_KEYS = st.one_of(st.sampled_from(["epoch", "", "ü", "request-id", "x" * 300]), NOT_UTF8)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def hostile_entry(draw: st.DrawFn) -> Entry:
    """A valid one-epoch job, then up to three mutations: a field set to a hostile (or odd but
    valid) value, an unknown field added, or a field dropped."""
    entry: Entry = {"model_id": TINY_MODEL_ID, "epochs": "1", "batch_size": "64"}
    entry["augment"] = "false"
    for _ in range(draw(st.integers(0, 3))):
        mutation = draw(st.sampled_from(["set", "set", "unknown", "drop"]))
        if mutation == "set":
            name = draw(st.sampled_from(sorted(FIELD_VALUES)))
            entry[name] = draw(FIELD_VALUES[name])
        elif mutation == "unknown":
            entry[draw(UNKNOWN_KEYS)] = draw(TEXTISH)
        elif len(entry) > 1:
            del entry[draw(st.sampled_from(sorted(entry, key=repr)))]
    return entry


BATCHES = st.lists(hostile_entry(), min_size=8, max_size=8)

# The issue's own hand-made entries, always tried first.
KNOWN: list[Entry] = [
    {"model_id": TINY_MODEL_ID, "user_id": "²", "epochs": "1", "request_id": "known-superscript"},
    {"model_id": TINY_MODEL_ID, "epochs": "²", "request_id": "known-epochs"},
    {"model_id": TINY_MODEL_ID, "user_id": "9" * 5000, "request_id": "known-huge-user"},
    {"model_id": TINY_MODEL_ID, "request_id": b"\xff\xfe-not-utf8"},
    {b"\xff\xfe": b"\xc3\x28", "model_id": TINY_MODEL_ID, "request_id": "known-binary-key"},
    {"model_id": TINY_MODEL_ID, "epoch": "1", "request_id": "known-unknown-field"},
    {"model_id": "", "request_id": "known-empty-model"},
    {"model_id": TINY_MODEL_ID, "request_id": "../../" + "x" * 200},
    {"model_id": "../../etc", "request_id": "known-hostile-model"},
    {"model_id": TINY_MODEL_ID, "notes": "x" * 100_000, "request_id": "known-huge-notes"},
    # A valid job, then a malformed entry naming the same request_id.
    {"model_id": TINY_MODEL_ID, "epochs": "1", "request_id": "known-dup"},
    {"model_id": TINY_MODEL_ID, "epochs": "²", "request_id": "known-dup"},
]


def _entry(job: Job) -> Entry:
    return {k: v for k, v in job.fields().items()}


def _xadd(client: redis.Redis, entry: Entry) -> str:
    entry_id: object = client.xadd(JOBS_STREAM, dict(entry.items()))
    return text(entry_id)


def _drained(client: redis.Redis, last_id: str) -> bool:
    groups = client.xinfo_groups(JOBS_STREAM)
    delivered = [text(g["last-delivered-id"]) for g in groups if text(g["name"]) == JOBS_GROUP]
    if not delivered or _order(delivered[0]) < _order(last_id):
        return False
    pending: object = client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"]
    return pending == 0


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _request_id(entry: Entry, entry_id: str) -> str | None:
    """The id a run of this entry would use; None when it cannot be a run (not UTF-8)."""
    raw = entry.get("request_id", entry.get(b"request_id", ""))
    if isinstance(raw, bytes):
        return raw.decode() if _utf8(raw) else None
    return raw or f"job-{entry_id}"


def _outcome_problems(
    client: redis.Redis,
    added: Sequence[tuple[str, Entry]],
    workers: Sequence[WorkerProcess],
    tally: list[str],
) -> list[str]:
    """What is wrong with how the entries ended; `tally` gets `dead` or `run` per entry."""
    letters = {d.entry_id: d for d in dead_letters(client)}
    evs = shared_events(client)
    failed = {e.request_id for e in evs if isinstance(e, TrainFailed) and not e.will_retry}
    completed = {e.request_id for e in evs if isinstance(e, TrainCompleted)}
    problems = []
    for entry_id, entry in added:
        shown = {text(k)[:40]: text(v)[:40] for k, v in entry.items()}
        letter = letters.get(entry_id)
        tally.append("dead" if letter is not None else "run")
        if letter is not None:
            if letter.request_id not in failed:
                problems.append(
                    f"{entry_id} {shown}: dead-lettered as {letter.request_id!r} with no final"
                    " `failed` event of that id"
                )
            continue
        rid = _request_id(entry, entry_id)
        state = status(client, rid).get("status") if rid is not None else None
        if rid is None or state not in FINAL:
            problems.append(
                f"{entry_id} {shown}: neither dead-lettered nor run (request_id {rid!r}, status"
                f" {state!r})"
            )
    for rid in sorted(completed):  # a completed job stays completed, whatever names it later
        state = status(client, rid).get("status")
        finals = [kind(e) for e in events(client, rid) if is_final(e)]
        if state != "completed" or len(finals) != 1:
            problems.append(
                f"{rid!r} completed, but its status now says {state!r} and its terminal events"
                f" are {finals}"
            )
    return problems + worker_problems(client, workers)


def test_hostile_entries_end_as_dead_letters_or_runs_and_workers_keep_serving(
    rig: Rig,
) -> None:
    workers = [rig.worker("a", wait=False), rig.worker("b", wait=False)]
    rig.wait_ready(*workers)
    client = rig.client
    valid_jobs: list[Job] = []
    tally: list[str] = []
    started = time.monotonic()

    @settings(
        max_examples=6,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: each example costs seconds
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(batch=BATCHES)
    @example(batch=KNOWN)
    def add_a_batch(batch: list[Entry]) -> None:
        n = len(valid_jobs)
        valid = rig.job(f"hyp-valid-{n}", seed=300 + n, epochs=1)
        valid_jobs.append(valid)
        entries: list[Entry] = [*batch, _entry(valid), _entry(valid)]
        added = [(_xadd(client, e), e) for e in entries]
        last_id = added[-1][0]
        deadline = time.monotonic() + SETTLE_S
        while not _drained(client, last_id):
            if time.monotonic() > deadline or not all(w.alive for w in workers):
                break
            time.sleep(0.2)
        problems = _outcome_problems(client, added, workers, tally)
        problems += job_problems(client, rig.model_dir, [valid])
        if problems:
            logs = "\n".join(f"worker {w.consumer}:\n{tail(w.log(), 8)}" for w in workers)
            raise AssertionError(
                "\n".join(problems)
                + f"\n{describe(client, [valid])}\n{logs}\n"
                + json.dumps(client.xpending(JOBS_STREAM, JOBS_GROUP), default=text)
            )

    add_a_batch()
    hostile_s = time.monotonic() - started
    assert_invariants(client, rig.model_dir, valid_jobs, workers, tag="hostile")
    trained = sum(isinstance(e, TrainStarted) for e in shared_events(client))
    print(
        f"{len(valid_jobs)} batches, {len(tally)} entries ({tally.count('dead')} dead-lettered,"
        f" {tally.count('run')} runs or duplicates of one; {trained} trainings) checked in"
        f" {hostile_s:.0f} s"
    )
