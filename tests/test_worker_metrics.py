"""A worker's Prometheus metrics, read as Prometheus reads them: `GET /metrics` on the port of
`python -m handwriting_ai.worker --metrics-port N` (and of `digits up --worker-metrics-port`),
parsed by prometheus-client's own parser. Jobs are driven the way an operator drives them
(`XADD` fields, a `cancel_requested` flag); the counters must move by exactly what happened."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

import stream_helpers
from handwriting_ai.api.metrics import ApiMetrics
from handwriting_ai.cli import build_parser
from handwriting_ai.inference.engine import EngineHolder
from handwriting_ai.settings import load_settings
from handwriting_ai.streams.keys import JOBS_GROUP, JOBS_STREAM, status_key
from handwriting_ai.supervisor import child_specs, up
from handwriting_ai.supervisor.up import worker_metrics_lines
from handwriting_ai.worker import group
from handwriting_ai.worker.group import PendingSummary
from handwriting_ai.worker.metrics import OUTCOMES, WorkerMetrics, oldest_age_s
from redis_server import candidate_port
from tiny_mnist import write_tiny_mnist
from worker_support import (
    TINY_MODEL_ID,
    LiveApi,
    base_env,
    kill_group,
    serve_app,
    start_worker_process,
    status,
    wait_until,
    worker_env,
    xadd,
)

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "ops" / "grafana" / "handwriting-ai.json"


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(url: str) -> Samples | None:
    """The metrics at `url`, None while nothing answers there."""
    try:
        response = httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} is not exposed"
    return samples[key]


# --------------------------------------------------------------------------- pending gauges


def test_the_oldest_pending_age_is_read_on_redis_clock() -> None:
    assert oldest_age_s(PendingSummary(2, "1700000000000-3", 1700000005500)) == 5.5
    assert oldest_age_s(PendingSummary(0, None, 1700000005500)) == 0.0
    # A clock that looks behind the entry (it cannot be, on one server): never negative.
    assert oldest_age_s(PendingSummary(1, "1700000009000-0", 1700000005500)) == 0.0


async def test_pending_gauges_follow_the_group(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    connection = Redis.from_url(redis_url, decode_responses=True)
    metrics = WorkerMetrics()
    try:
        client.xgroup_create(JOBS_STREAM, JOBS_GROUP, id="0", mkstream=True)
        seconds, _ = client.time()
        old = client.xadd(JOBS_STREAM, {"model_id": TINY_MODEL_ID}, id=f"{seconds * 1000 - 5000}-0")
        new = client.xadd(JOBS_STREAM, {"model_id": TINY_MODEL_ID})
        xadd(client, {"model_id": TINY_MODEL_ID})  # queued, never delivered: not pending
        client.xreadgroup(JOBS_GROUP, "ghost", {JOBS_STREAM: ">"}, count=2)

        metrics.pending_seen(await group.pending_summary(connection), now_s=time.time())
        seen = parse(metrics.exposition().decode())
        assert value(seen, "digits_worker_pending_entries") == 2
        assert 5.0 <= value(seen, "digits_worker_oldest_pending_age_seconds") < 7.0
        assert abs(value(seen, "digits_worker_pending_checked_timestamp_seconds") - time.time()) < 5

        client.xack(JOBS_STREAM, JOBS_GROUP, old)  # the oldest is done: the next one is the age
        metrics.pending_seen(await group.pending_summary(connection), now_s=time.time())
        seen = parse(metrics.exposition().decode())
        assert value(seen, "digits_worker_pending_entries") == 1
        assert value(seen, "digits_worker_oldest_pending_age_seconds") < 2.0

        client.xack(JOBS_STREAM, JOBS_GROUP, new)
        metrics.pending_seen(await group.pending_summary(connection), now_s=time.time())
        seen = parse(metrics.exposition().decode())
        assert value(seen, "digits_worker_pending_entries") == 0
        assert value(seen, "digits_worker_oldest_pending_age_seconds") == 0
    finally:
        client.close()
        await connection.aclose()


# --------------------------------------------------------------------------- a worker process


class FlakyUploads:
    """A stand-in for the API's upload route: 503 to the first `failures` uploads, then 201 with
    an answer the worker accepts. `/v1/admin/ping` accepts any key."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0

    def app(self) -> Litestar:
        @post("/v1/admin/models/upload")
        async def upload(request: Request[object, object, State]) -> Response[dict[str, object]]:
            await request.body()
            self.attempts += 1
            if self.attempts <= self.failures:
                return Response({"code": "overloaded"}, status_code=503)
            answer: dict[str, object] = {"version": f"v{self.attempts}"}
            return Response({**answer, "model_bytes": 1, "manifest_bytes": 1}, status_code=201)

        @get("/v1/admin/ping")
        async def ping() -> dict[str, bool]:
            return {"ok": True}

        return Litestar([upload, ping])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("data"))


@contextmanager
def worker_process(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = start_worker_process(env, "--metrics-port", str(port))
    try:
        yield process
    finally:
        kill_group(process)


def final(client: redis.Redis, request_id: str, wanted: str) -> bool:
    state = status(client, request_id).get("status")
    assert state in (None, "queued", "running", wanted), (request_id, state)
    return state == wanted


@pytest.mark.slow
def test_a_worker_process_counts_what_it_did(
    tmp_path: Path, data_root: Path, redis_url: str
) -> None:
    """A dead worker's poison entry (reclaimed, then dead-lettered as the job's fault), a job
    whose first upload gets a 503 (retried, then completed) and a long job cancelled while it
    trains: each counter moves by exactly that, and the gauges come back to 0."""
    uploads = FlakyUploads(failures=1)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with serve_app(uploads.app()) as api_url:
        # An entry delivered to a consumer that is gone (no lease): the worker must take it over.
        client.xgroup_create(JOBS_STREAM, JOBS_GROUP, id="0", mkstream=True)
        poison = xadd(client, {"model_id": TINY_MODEL_ID, "epochs": "many"})
        client.xreadgroup(JOBS_GROUP, "ghost", {JOBS_STREAM: ">"}, count=1)
        env = worker_env(
            redis_url,
            data_root,
            tmp_path,
            LiveApi(api_url, tmp_path),
            STREAMS__HEARTBEAT_INTERVAL_S="0.2",
            STREAMS__CLAIM_MIN_IDLE_S="0.6",
            STREAMS__RECLAIM_INTERVAL_S="0.2",
        )
        port = candidate_port()
        url = f"http://127.0.0.1:{port}/metrics"
        with worker_process(env, port) as process:
            samples: Samples | None = None

            def answers() -> bool:
                nonlocal samples
                assert process.poll() is None, process.stderr.read() if process.stderr else b""
                samples = scrape(url)
                return samples is not None

            wait_until(answers, timeout_s=60, what="the metrics port")
            assert samples is not None  # served before the worker takes any entry
            assert {value(samples, "digits_worker_jobs_total", outcome=o) for o in OUTCOMES} == {0}
            assert value(samples, "digits_worker_jobs_started_total") == 0
            assert value(samples, "digits_worker_slots") == 1

            wait_until(
                lambda: final(client, f"job-{poison}", "failed"), timeout_s=60, what="the reclaim"
            )
            xadd(client, {"request_id": "good", "model_id": TINY_MODEL_ID, "batch_size": "32"})
            wait_until(lambda: final(client, "good", "completed"), timeout_s=90, what="good")

            long_job = {"request_id": "long", "model_id": TINY_MODEL_ID, "epochs": "300"}
            xadd(client, {**long_job, "batch_size": "32"})

            def training() -> bool:
                seen = scrape(url) or {}
                return (
                    seen.get(("digits_worker_training_samples_per_second", ()), 0) > 0
                    and seen.get(("digits_worker_pending_entries", ()), 0) == 1
                    and seen.get(("digits_worker_jobs_running", ()), 0) == 1
                )

            wait_until(training, timeout_s=60, what="the long job to train", every_s=0.2)
            client.hset(status_key("long"), "cancel_requested", "1")  # what the API's cancel does
            wait_until(lambda: final(client, "long", "cancelled"), timeout_s=60, what="cancel")

            def idle() -> bool:
                seen = scrape(url) or {}
                return (
                    seen.get(("digits_worker_pending_entries", ()), 1) == 0
                    and seen.get(("digits_worker_training_samples_per_second", ()), 1) == 0
                    and seen.get(("digits_worker_jobs_running", ()), 1) == 0
                )

            wait_until(idle, timeout_s=30, what="the gauges to come back to 0", every_s=0.2)
            after = scrape(url)
            assert after is not None
    client.close()
    expected = {"completed": 1, "failed": 1, "cancelled": 1}
    assert {o: value(after, "digits_worker_jobs_total", outcome=o) for o in OUTCOMES} == {
        o: expected.get(o, 0) for o in OUTCOMES
    }
    assert value(after, "digits_worker_jobs_started_total") == 2  # the poison never started
    assert value(after, "digits_worker_dead_letters_total", kind="user") == 1
    assert value(after, "digits_worker_dead_letters_total", kind="system") == 0
    assert value(after, "digits_worker_reclaims_total") == 1
    assert value(after, "digits_worker_upload_retries_total") == 1
    assert uploads.attempts == 2
    assert value(after, "digits_worker_oldest_pending_age_seconds") == 0


def test_the_worker_command_takes_a_metrics_port() -> None:
    args = build_parser().parse_args(["worker", "--metrics-port", "9100"])
    assert (args.metrics_port, args.metrics_host) == (9100, "127.0.0.1")
    assert build_parser().parse_args(["worker"]).metrics_port == 0  # off unless asked


def test_a_taken_metrics_port_stops_the_worker_with_a_configuration_error(
    tmp_path: Path, redis_url: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port: int = busy.getsockname()[1]
        env = {"REDIS_URL": redis_url, "APP__DATA_ROOT": str(tmp_path)}
        process = start_worker_process(env, "--metrics-port", str(port))
        try:
            assert process.wait(60) == 2
        finally:
            kill_group(process)
        assert process.stderr is not None
        assert f"cannot serve metrics on 127.0.0.1:{port}" in process.stderr.read().decode()


# --------------------------------------------------------------------------- digits up


def test_up_gives_worker_i_the_port_base_plus_i_minus_1() -> None:
    args = build_parser().parse_args(["up", "--workers", "3", "--worker-metrics-port", "9100"])
    assert args.worker_metrics_port == 9100
    specs = child_specs({}, host="0.0.0.0", port=8081, workers=3, worker_metrics_port=9100)
    workers = {s.name: s.argv[1:] for s in specs if s.name.startswith("worker-")}
    serve = ("--metrics-host", "0.0.0.0")
    assert workers == {
        f"worker-{i}": ("-m", "handwriting_ai.worker", "--metrics-port", str(9099 + i), *serve)
        for i in (1, 2, 3)
    }
    assert worker_metrics_lines("0.0.0.0", 9100, 2) == [
        "worker-1 metrics: http://127.0.0.1:9100/metrics",
        "worker-2 metrics: http://127.0.0.1:9101/metrics",
    ]
    # Off by default: the workers serve nothing.
    assert build_parser().parse_args(["up"]).worker_metrics_port == 0
    plain = child_specs({}, host="127.0.0.1", port=8081, workers=2)
    assert [s.argv[1:] for s in plain[1:]] == [("-m", "handwriting_ai.worker")] * 2


def test_up_refuses_a_busy_worker_metrics_port_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port: int = busy.getsockname()[1]
        settings = load_settings({"APP__DATA_ROOT": str(tmp_path)})
        # The second worker's port (BASE+1) is the busy one.
        code = up(settings, workers=2, host="127.0.0.1", port=0, worker_metrics_port=port - 1)
        assert code == 2
    assert f"port {port}" in capsys.readouterr().err
    assert not (tmp_path / "redis").exists()  # no Redis was started


@pytest.mark.slow
def test_digits_up_serves_each_workers_metrics_on_its_port(tmp_path: Path) -> None:
    from redis_server import running_redis

    base = candidate_port()
    log = tmp_path / "up.log"
    with running_redis(tmp_path) as server:
        env = base_env(
            REDIS_URL=server.url,
            APP__DATA_ROOT=str(tmp_path / "data"),
            APP__PORT="0",
            APP__THREADS="1",
            APP__LOG_LEVEL="warning",
        )
        cmd = [sys.executable, "-m", "handwriting_ai.cli", "up", "--workers", "1"]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [*cmd, "--worker-metrics-port", str(base)], env=env, stdout=out, stderr=out
            )
        try:
            url = f"http://127.0.0.1:{base}/metrics"
            wait_until(lambda: scrape(url) is not None, timeout_s=90, what="worker-1's metrics")
            samples = scrape(url)
            assert samples is not None
            assert value(samples, "digits_worker_jobs_total", outcome="completed") == 0
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert f"digits up: worker-1 metrics: http://127.0.0.1:{base}/metrics" in log.read_text()


# --------------------------------------------------------------------------- the docs


def exposed_names() -> set[str]:
    """Every metric the API and a worker expose, by the name a query uses (`_total` on
    counters; a histogram by its own name)."""
    api = ApiMetrics()
    api.watch(EngineHolder(), lambda: None, lambda: None)
    names: set[str] = set()
    for registry in (api.registry, WorkerMetrics().registry):
        for family in registry.collect():
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_the_readme_lists_every_metric_once() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(digits_\w+)", section, re.MULTILINE)
    assert sorted(listed) == sorted(exposed_names())
    assert "--worker-metrics-port" in section
    assert "--metrics-port" in section


def test_the_dashboard_shows_every_metric_and_nothing_else() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_bucket$", "", name) for name in re.findall(r"digits_\w+", " ".join(exprs))}
    assert used == exposed_names()
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
