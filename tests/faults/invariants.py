"""What must hold after every fault, once the jobs have settled (issue 9, "What it must show"):

- every job has exactly one terminal status (completed/failed/dead/cancelled) and exactly one
  terminal event (`completed`, or `failed` with `will_retry` false), and they agree;
- a completed job's stored manifest is its own: its `request_id`, seed and epochs are the job's;
- no ended job shows `running` or `queued`;
- no worker is dead or wedged: its process is alive, its health key fresh, and it takes and
  completes one more valid job;
- every entry of `digits:train` is acknowledged, pending with a live owner, or dead-lettered
  (and none is left unread);
- no job is trained more often than it really failed: `started` events per job equal one plus
  the failures the test injected into its runs.

Every check collects its problems instead of stopping at the first, and a failure message shows
each job's status and events, so a report says what was observed.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import redis

from faults.harness import Job, WorkerProcess, enqueue
from handwriting_ai.contracts.converter import ContractError
from handwriting_ai.contracts.events import TrainEvent, TrainFailed, decode_event, is_final
from handwriting_ai.contracts.jobs import DeadLetter, dead_letter_from_fields
from handwriting_ai.streams.keys import (
    DEAD_STREAM,
    EVENTS_STREAM,
    HEALTH_TTL_S,
    JOBS_GROUP,
    JOBS_STREAM,
    job_events_key,
    status_key,
    worker_health_key,
)

FINAL = frozenset({"completed", "failed", "dead", "cancelled"})
HEALTH_FRESH_S = 10.0  # the health key was written within this long (heartbeat: 1 s)


def text(value: object) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _fields(raw: Mapping[bytes | str, bytes | str] | None) -> dict[str, str]:
    return {text(k): text(v) for k, v in (raw or {}).items()}


def status(client: redis.Redis, request_id: str) -> dict[str, str]:
    return _fields(client.hgetall(status_key(request_id)))


def events(client: redis.Redis, request_id: str) -> list[TrainEvent]:
    return [decode_event(_fields(f)) for _, f in client.xrange(job_events_key(request_id)) or []]


def shared_events(client: redis.Redis) -> list[TrainEvent]:
    """`digits:events`, the stream every job's events also go to."""
    out = []
    for _, raw in client.xrange(EVENTS_STREAM) or []:
        try:
            out.append(decode_event(_fields(raw)))
        except ContractError:
            continue
    return out


def kind(event: TrainEvent) -> str:
    name = event.type.removeprefix("digits.train.").removesuffix(".v1")
    if isinstance(event, TrainFailed):
        return f"failed({event.error_kind}{', will retry' if event.will_retry else ''})"
    return name


def kinds(client: redis.Redis, request_id: str) -> list[str]:
    return [kind(e) for e in events(client, request_id)]


def count(client: redis.Redis, request_id: str, name: str) -> int:
    return kinds(client, request_id).count(name)


def dead_letters(client: redis.Redis) -> list[DeadLetter]:
    return [dead_letter_from_fields(_fields(f)) for _, f in client.xrange(DEAD_STREAM) or []]


def summary(names: Iterable[str]) -> str:
    """`started, epoch x3, completed` (batch events left out)."""
    parts = []
    for name, group in itertools.groupby(n for n in names if n != "batch"):
        n = len(list(group))
        parts.append(name if n == 1 else f"{name} x{n}")
    return ", ".join(parts)


def describe(client: redis.Redis, jobs: Sequence[Job]) -> str:
    lines = []
    for job in jobs:
        st = status(client, job.request_id)
        shown = {k: st.get(k, "") for k in ("status", "attempts", "crashes", "worker", "entry_id")}
        message = st.get("message", "")[:200]
        lines.append(
            f"  {job.request_id}: {shown} message={message!r}\n"
            f"    events: {summary(kinds(client, job.request_id))}"
        )
    return "\n".join(lines)


def is_final_status(client: redis.Redis, request_id: str) -> bool:
    return status(client, request_id).get("status") in FINAL


# --------------------------------------------------------------------------- jobs


def _manifest_problems(job: Job, st: Mapping[str, str], model_dir: Path) -> list[str]:
    rid = job.request_id
    try:
        result: object = json.loads(st.get("result") or "{}")
    except json.JSONDecodeError:
        return [f"{rid}: its result is not JSON: {st.get('result')!r}"]
    if not isinstance(result, dict) or not isinstance(result.get("version"), str):
        return [f"{rid}: completed without a result version: {st.get('result')!r}"]
    problems = []
    if result.get("request_id") != rid:
        problems.append(f"{rid}: the status result names request_id {result.get('request_id')!r}")
    path = model_dir / job.model_id / str(result["version"]) / "manifest.json"
    if not path.is_file():
        return [*problems, f"{rid}: no stored manifest at {path}"]
    manifest: object = json.loads(path.read_text())
    assert isinstance(manifest, dict)
    mine = {"request_id": rid, "training_seed": job.seed, "training_epochs": job.epochs}
    theirs = {name: manifest.get(name) for name in mine}
    if theirs != mine:
        problems.append(f"{rid}: its stored model is not its own: manifest {theirs}, job {mine}")
    if not manifest.get("entry_id") or manifest.get("entry_id") != result.get("entry_id"):
        problems.append(
            f"{rid}: manifest entry_id {manifest.get('entry_id')!r} vs result entry_id"
            f" {result.get('entry_id')!r}"
        )
    return problems


def job_problems(
    client: redis.Redis,
    model_dir: Path,
    jobs: Sequence[Job],
    starts: Mapping[str, int] | None = None,
) -> list[str]:
    """`starts`: the `started` events each job must show (1 unless the test killed its runs)."""
    problems: list[str] = []
    for job in jobs:
        rid = job.request_id
        st = status(client, rid)
        state = st.get("status", "<no status>")
        try:
            evs = events(client, rid)
        except ContractError as exc:
            problems.append(f"{rid}: an event does not decode: {exc}")
            continue
        names = [kind(e) for e in evs]
        terminal = [e for e in evs if is_final(e)]
        if state not in FINAL:
            problems.append(f"{rid}: ended as {state!r}, not a final status")
        if len(terminal) != 1:
            shown = [kind(e) for e in terminal]
            problems.append(f"{rid}: {len(terminal)} terminal events {shown}, expected one")
        elif state in FINAL and (terminal[0].type.endswith("completed.v1")) != (
            state == "completed"
        ):
            problems.append(f"{rid}: status {state!r} but terminal event {kind(terminal[0])}")
        if terminal and evs[-1] is not terminal[-1]:
            problems.append(f"{rid}: events after its terminal event: {summary(names)}")
        wanted = (starts or {}).get(rid, 1)
        started = names.count("started")
        if started != wanted:
            problems.append(
                f"{rid}: `started` {started} times, expected {wanted} (failures injected:"
                f" {wanted - 1})"
            )
        epochs = names.count("epoch")
        if epochs > job.epochs * max(1, started):
            problems.append(f"{rid}: {epochs} epoch events for {job.epochs} epochs x {started}")
        if state == "completed":
            problems += _manifest_problems(job, st, model_dir)
    return problems


# --------------------------------------------------------------------------- workers, entries


def worker_problems(client: redis.Redis, workers: Sequence[WorkerProcess]) -> list[str]:
    problems = []
    for worker in workers:
        if not worker.alive:
            problems.append(
                f"worker {worker.consumer} exited with {worker.process.returncode}:"
                f"\n{tail(worker.log())}"
            )
            continue
        ttl_ms = client.pttl(worker_health_key(worker.consumer))
        if ttl_ms < (HEALTH_TTL_S - HEALTH_FRESH_S) * 1000:
            problems.append(
                f"worker {worker.consumer} health key stale or missing (pttl {ttl_ms} ms)"
            )
    return problems


def entry_problems(client: redis.Redis, live: Sequence[str]) -> list[str]:
    """Every entry is acknowledged, pending to a live consumer, or dead-lettered (and acked)."""
    problems = []
    dead = {d.entry_id for d in dead_letters(client)}
    rows = client.xpending_range(JOBS_STREAM, JOBS_GROUP, min="-", max="+", count=10_000)
    for row in rows:
        entry_id, owner = text(row["message_id"]), text(row["consumer"])
        if entry_id in dead:
            problems.append(f"entry {entry_id} is dead-lettered but still pending to {owner}")
        elif owner not in live:
            problems.append(f"entry {entry_id} is pending to {owner}, which is not a live worker")
    last = client.xrevrange(JOBS_STREAM, count=1)
    if last:
        groups = client.xinfo_groups(JOBS_STREAM)
        delivered = [text(g["last-delivered-id"]) for g in groups if text(g["name"]) == JOBS_GROUP]
        last_id = text(last[0][0])
        if not delivered or _id(delivered[0]) < _id(last_id):
            problems.append(f"entries up to {last_id} unread (group at {delivered})")
    return problems


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def tail(log: str, lines: int = 25) -> str:
    return "\n".join("    " + line[:400] for line in log.splitlines()[-lines:])


# --------------------------------------------------------------------------- settling


def settle(
    client: redis.Redis,
    jobs: Sequence[Job],
    *,
    timeout_s: float,
    workers: Sequence[WorkerProcess] = (),
) -> float:
    """Wait until every job has a final status and nothing is pending; the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            done = all(is_final_status(client, j.request_id) for j in jobs)
            if done and client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0:
                return time.monotonic() - started
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            pass  # Redis restarting
        if time.monotonic() - started > timeout_s:
            logs = "\n".join(
                f"  worker {w.consumer} alive={w.alive}:\n{tail(w.log(), 12)}" for w in workers
            )
            raise AssertionError(
                f"jobs not settled after {timeout_s:.0f} s:\n{describe(client, jobs)}\n"
                f"pending: {client.xpending(JOBS_STREAM, JOBS_GROUP)}\n{logs}"
            )
        time.sleep(0.2)


def probe_workers(
    client: redis.Redis,
    model_dir: Path,
    workers: Sequence[WorkerProcess],
    *,
    tag: str,
    rounds: int = 3,
    timeout_s: float = 120.0,
) -> list[str]:
    """Every live worker takes and completes one more valid job (rounds until each took one)."""
    covered: set[str] = set()
    probes: list[Job] = []
    token = uuid.uuid4().hex[:6]  # request ids never seen by the (shared) API before
    live = [w for w in workers if w.alive]
    for n in range(rounds):
        missing = [w for w in live if w.consumer not in covered]
        if not missing:
            break
        batch = [
            Job(f"probe-{tag}-{token}-{n}-{i}", seed=500 + i, epochs=1) for i in range(len(missing))
        ]
        enqueue(client, *batch)
        try:
            settle(client, batch, timeout_s=timeout_s, workers=live)
        except AssertionError as exc:
            return [f"probe jobs did not complete: {exc}"]
        covered |= {status(client, p.request_id).get("worker", "") for p in batch}
        probes += batch
    problems = job_problems(client, model_dir, probes)
    problems += [
        f"worker {w.consumer} took none of the probe jobs in {rounds} rounds"
        for w in live
        if w.consumer not in covered
    ]
    return problems


def assert_invariants(
    client: redis.Redis,
    model_dir: Path,
    jobs: Sequence[Job],
    workers: Sequence[WorkerProcess],
    *,
    starts: Mapping[str, int] | None = None,
    tag: str = "after",
) -> None:
    """All the invariants; `workers` are the ones that must still be alive and serving."""
    problems = job_problems(client, model_dir, jobs, starts)
    problems += worker_problems(client, workers)
    live = [w.consumer for w in workers if w.alive]
    problems += entry_problems(client, live)
    if not any(p.startswith("worker ") for p in problems):
        problems += probe_workers(client, model_dir, workers, tag=tag)
        problems += entry_problems(client, live)
    if problems:
        raise AssertionError(
            "invariants broken:\n- " + "\n- ".join(problems) + "\njobs:\n" + describe(client, jobs)
        )
