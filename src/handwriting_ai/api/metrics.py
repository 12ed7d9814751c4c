"""Prometheus metrics of one API process, served at `GET /metrics` (text exposition format).

A read's outcome is counted where its answer is made: the handler for a reading,
`errors.error_response` for a refusal, `shed.py` for one refused before its upload was read.
Everything else is read at scrape time from what the process already keeps (the read
admission, the SSE hub, the served ensemble), so a metric cannot drift from the thing it shows.
Each app has its own registry: tests run many apps in one process. The route is in `health.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from handwriting_ai.api.admission import ReadAdmission
from handwriting_ai.api.event_hub import EventHub
from handwriting_ai.inference.engine import EngineHolder
from handwriting_ai.inference.read import Reading
from handwriting_ai.inference.reload import ReloadOutcome

READ_PATH = "/v1/read"
# A read is ~2-20 ms here, a 12 MP photo ~60 ms, a queued one up to the timeout (5 s).
READ_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS_S = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.reads = Counter(
            "digits_reads",
            "POST /v1/read answers by outcome (ok; refused: 4xx, 503; error: other 5xx) and code",
            ["outcome", "code"],
            registry=self.registry,
        )
        self.read_seconds = Histogram(
            "digits_read_seconds",
            "Time to answer a successful read: form, queue and compute",
            buckets=READ_BUCKETS_S,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "digits_read_stage_seconds",
            "Time of a successful read in each stage on its read thread",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=self.registry,
        )
        self.read_places = Counter(
            "digits_read_runs",
            "Reads computed, by where: on the event loop (small quick reads) or a read thread",
            ["where"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "digits_model_reloads",
            "Model versions this replica loaded (loaded) or could not load (failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.promotions = Counter(
            "digits_model_promotions",
            "Versions made current: by the promotion gate on this replica, or by an operator"
            " through this replica (promote, rollback, pin)",
            ["by"],
            registry=self.registry,
        )
        self.gate_decisions = Counter(
            "digits_model_gate_decisions",
            "Promotion gate decisions taken on this replica (promoted, held, refused)",
            ["decision"],
            registry=self.registry,
        )

    def reconciled(self, outcomes: Iterable[ReloadOutcome]) -> None:
        for outcome in outcomes:
            if outcome.action in ("promoted", "held", "refused"):
                self.gate_decisions.labels(outcome.action).inc()
            if outcome.action == "promoted":
                self.promotions.labels("gate").inc()
            if outcome.action in ("promoted", "followed"):
                self.reloads.labels("loaded").inc()
            elif outcome.action == "failed":
                self.reloads.labels("failed").inc()

    def read_answered(self, reading: Reading, seconds: float) -> None:
        self.reads.labels("ok", "").inc()
        self.read_seconds.observe(seconds)
        self.stage_seconds.labels("decode").observe(reading.decode_ms / 1000)
        self.stage_seconds.labels("preprocess").observe(reading.preprocess_ms / 1000)
        self.stage_seconds.labels("forward").observe(reading.forward_ms / 1000)

    def read_ran(self, *, inline: bool) -> None:
        self.read_places.labels("loop" if inline else "thread").inc()

    def read_refused(self, status: int, code: str) -> None:
        outcome = "error" if status >= 500 and status != 503 else "refused"
        self.reads.labels(outcome, code).inc()

    def watch(
        self,
        engine: EngineHolder,
        reads: Callable[[], ReadAdmission | None],
        events: Callable[[], EventHub | None],
    ) -> None:
        """Add the metrics read at scrape time (the admission and the hub come and go with
        the app's lifespan: they are looked up at each scrape)."""
        self.registry.register(_StateCollector(engine, reads, events))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(
        self,
        engine: EngineHolder,
        reads: Callable[[], ReadAdmission | None],
        events: Callable[[], EventHub | None],
    ) -> None:
        self.engine, self.reads, self.events = engine, reads, events

    def collect(self) -> Iterator[Metric]:
        admission = self.reads()
        admitted = 0 if admission is None else admission.admitted
        threads = 0 if admission is None else admission.threads
        yield _gauge(
            "digits_reads_in_flight", "Reads running on a read thread", min(admitted, threads)
        )
        yield _gauge(
            "digits_read_queue_depth",
            "Reads admitted and waiting for a read thread",
            max(0, admitted - threads),
        )
        hub = self.events()
        yield _gauge(
            "digits_sse_streams_open",
            "Open /v1/train/{id}/events streams",
            0 if hub is None else hub.open_streams,
        )
        served = GaugeMetricFamily(
            "digits_model_served",
            "1 for each model version in the served ensemble",
            labels=["model_id", "version", "arch"],
        )
        ensemble = self.engine.ensemble
        for member in () if ensemble is None else ensemble.members:
            m = member.manifest
            served.add_metric([m.model_id, m.version, m.arch], 1)
        yield served
        yield CounterMetricFamily(
            "digits_model_swaps",
            "Ensembles swapped in after the first (reloads and promotions)",
            value=self.engine.swaps,
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
