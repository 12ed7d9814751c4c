"""Prometheus metrics of one worker process, served by `digits worker --metrics-port N`.

Counters count from process start and are fed where the thing happens: a job's outcome in
`Worker._count`, a started run in `JobRun._start`, a reclaim in `Intake`, an upload retry in
`upload_artifacts`. The consumer group's pending entries are read on the maintenance tick
(`Upkeep.maintain`), never at scrape time, so a scrape never waits on Redis: a dead Redis shows as
a `digits_worker_pending_checked_timestamp_seconds` that stops moving. One process is one worker,
so there is no `worker` label (Prometheus adds `instance`). Each worker has its own registry:
tests run several workers in one process.

Served by prometheus-client's own `start_http_server` (a daemon thread): its handling of the
exposition formats and content negotiation is the library's, and a slow scraper never touches the
worker's event loop. Everything a scrape reads was set on the loop thread as plain values.
"""

from __future__ import annotations

from typing import get_args
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

from handwriting_ai.worker.delivery import parse_id
from handwriting_ai.worker.group import PendingSummary
from handwriting_ai.worker.job import Outcome

OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
# The endings that write a dead letter, by whose fault: the job's (`failed`) or ours (`dead`).
DEAD_LETTER_KINDS: dict[Outcome, str] = {"failed": "user", "dead": "system"}


def oldest_age_s(summary: PendingSummary) -> float:
    """Pure: seconds since the oldest pending entry was added (its id is Redis' clock in ms)."""
    if summary.count == 0 or not summary.oldest_id:
        return 0.0
    return max(0.0, (summary.server_ms - parse_id(summary.oldest_id)[0]) / 1000)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter(
            "digits_worker_jobs",
            "Jobs ended by outcome: completed; failed (the job's fault, dead-lettered); dead "
            "(ours, retries used up, dead-lettered); retried; cancelled; skipped (final, "
            "duplicate or deleted); abandoned (left pending by a stop); lost (taken by another "
            "worker)",
            ["outcome"],
            registry=r,
        )
        self.started = Counter(
            "digits_worker_jobs_started", "Runs started (the `started` status written)", registry=r
        )
        self.dead_letters = Counter(
            "digits_worker_dead_letters",
            "Entries written to digits:train:dead, by kind (user: the job's fault; system: ours)",
            ["kind"],
            registry=r,
        )
        self.reclaims = Counter(
            "digits_worker_reclaims",
            "Entries taken over from a dead worker (XCLAIM after its lease was gone)",
            registry=r,
        )
        self.upload_retries = Counter(
            "digits_worker_upload_retries",
            "Artifact uploads to the API tried again after a transient error",
            registry=r,
        )
        self.samples_per_second = Gauge(
            "digits_worker_training_samples_per_second",
            "Training throughput: the latest rate each running training reported, summed",
            registry=r,
        )
        self.running = Gauge("digits_worker_jobs_running", "Jobs this worker runs", registry=r)
        self.slots = Gauge("digits_worker_slots", "Training slots (--concurrency)", registry=r)
        self.pending = Gauge(
            "digits_worker_pending_entries",
            "Entries of digits:train delivered and not yet acknowledged, group-wide",
            registry=r,
        )
        self.oldest_pending = Gauge(
            "digits_worker_oldest_pending_age_seconds",
            "Age of the oldest pending entry (since it was added to digits:train); 0: none",
            registry=r,
        )
        self.pending_checked = Gauge(
            "digits_worker_pending_checked_timestamp_seconds",
            "When the pending gauges were last read from Redis (Unix time)",
            registry=r,
        )
        for outcome in OUTCOMES:  # every series exists from the start, at 0
            self.jobs.labels(outcome)
        for kind in DEAD_LETTER_KINDS.values():
            self.dead_letters.labels(kind)
        self._rates: dict[str, float] = {}

    def job_ended(self, outcome: Outcome) -> None:
        self.jobs.labels(outcome).inc()
        kind = DEAD_LETTER_KINDS.get(outcome)
        if kind is not None:
            self.dead_letters.labels(kind).inc()

    def training_rate(self, entry_id: str, samples_per_sec: float | None) -> None:
        """The latest rate of one run; None once it no longer trains."""
        if samples_per_sec is None:
            self._rates.pop(entry_id, None)
        else:
            self._rates[entry_id] = max(0.0, samples_per_sec)
        self.samples_per_second.set(sum(self._rates.values()))

    def pending_seen(self, summary: PendingSummary, *, now_s: float) -> None:
        self.pending.set(summary.count)
        self.oldest_pending.set(oldest_age_s(summary))
        self.pending_checked.set(now_s)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """`start_http_server` on the worker's registry; `close` stops it (tests run many)."""

    def __init__(self, metrics: WorkerMetrics, *, host: str, port: int) -> None:
        self.server: WSGIServer
        self.server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port = int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()  # waits for the serving loop (it polls every 0.5 s)
        self.server.server_close()
        self._thread.join(1)
