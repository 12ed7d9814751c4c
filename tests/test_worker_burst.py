"""A burst worker drains `digits:train` the way an operator fills it (`redis-cli XADD` fields):
a good job runs to `completed` and is uploaded over real HTTP; poison jobs are dead-lettered with
readable reasons and the worker goes on; a request_id added twice trains once. A worker process
takes nothing from the developer's shell settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from handwriting_ai.contracts.events import TrainFailed
from handwriting_ai.streams.keys import EVENTS_STREAM, JOBS_GROUP, JOBS_STREAM
from handwriting_ai.worker import serve_worker
from redis_server import running_redis
from tiny_mnist import write_tiny_mnist
from worker_support import (
    TINY_MODEL_ID,
    LiveApi,
    dead_letters,
    entry_fields,
    event_types,
    events,
    kill_group,
    live_api,
    start_worker_process,
    status,
    worker_env,
    worker_settings,
    xadd,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    with live_api(tmp_path_factory.mktemp("api")) as served:
        yield served


async def test_burst_worker_runs_good_jobs_and_dead_letters_poison(
    tmp_path: Path, data_root: Path, api: LiveApi
) -> None:
    with running_redis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        typo = xadd(client, {"model_id": TINY_MODEL_ID, "epoch": "1"})
        bad = xadd(client, {"model_id": TINY_MODEL_ID, "epochs": "many", "request_id": "bad-1"})
        unknown = xadd(client, {"model_id": "mnist_nosucharch_v1", "request_id": "unknown-1"})
        good = xadd(client, {"model_id": TINY_MODEL_ID, "epochs": "1", "batch_size": "32"})
        for _ in range(2):  # the same request_id twice: trained once
            client.xadd(
                JOBS_STREAM,
                {"model_id": TINY_MODEL_ID, "epochs": "1", "batch_size": "32", "request_id": "dup"},
            )
        env = worker_env(server.url, data_root, tmp_path, api)
        worker = await serve_worker(worker_settings(env), burst=True, install_signals=False)

        # The good redis-cli job: its request_id comes from the entry id; full event sequence.
        rid = f"job-{good}"
        types = event_types(client, rid)
        assert types[0] == "started"
        assert "batch" in types
        tail = [t for t in types if t != "batch"]
        assert tail == ["started", "epoch", "best", "artifact", "upload", "prune", "completed"]
        done = status(client, rid)
        assert done["status"] == "completed"
        assert done["attempts"] == "1"
        assert '"version"' in done["result"]
        assert 0 < client.ttl(f"digits:job:{rid}") <= 86_400
        final = events(client, rid)[-1]
        assert final.run_id is not None
        assert all(e.run_id == final.run_id for e in events(client, rid)[-4:])
        assert len(api.versions()) == 2  # this job and "dup", once each

        # Poison: failed (user) event, dead letter with the original fields and the reason.
        letters = {letter.entry_id: letter for letter in dead_letters(client)}
        assert set(letters) == {typo, bad, unknown}
        assert entry_fields(letters[typo]) == {"model_id": TINY_MODEL_ID, "epoch": "1"}
        assert "@ $.epoch" in letters[typo].reason
        assert "@ $.epochs" in letters[bad].reason
        assert "nosucharch" in letters[unknown].reason
        # Reported under `job-<entry id>`, never under the request_id they name (a job that owns
        # it may be starting elsewhere); the dead letter keeps the fields as sent.
        assert entry_fields(letters[bad])["request_id"] == "bad-1"
        assert not client.exists("digits:job:bad-1", "digits:job:unknown-1")
        for request_id in (f"job-{typo}", f"job-{bad}", f"job-{unknown}"):
            failed = events(client, request_id)
            assert [e.type for e in failed] == ["digits.train.failed.v1"]
            assert isinstance(failed[0], TrainFailed)
            assert failed[0].error_kind == "user"
            assert not failed[0].will_retry
            assert status(client, request_id)["status"] == "failed"

        # The duplicate: one started event, both entries acknowledged.
        assert event_types(client, "dup").count("started") == 1
        assert status(client, "dup")["status"] == "completed"
        assert client.xpending(JOBS_STREAM, JOBS_GROUP)["pending"] == 0
        assert client.xlen(EVENTS_STREAM) > 0
        assert "j_complete=2" in repr(worker)
        assert "j_failed=3" in repr(worker)
        client.close()


def test_a_worker_process_takes_nothing_from_the_developers_shell(
    tmp_path: Path, data_root: Path, api: LiveApi, hostile_environ: dict[str, str]
) -> None:
    """`hostile_environ` in our environment (an invalid claim idle time and batch setting that
    would stop the worker at start, a Redis and an API nowhere, one delivery, another key): a
    worker process started by `start_worker_process` still drains a job, uploads it and exits 0."""
    model_id = "mnist_digitnet_tiny_env"
    with running_redis(tmp_path) as server:
        client = redis.Redis.from_url(server.url)
        job = {"model_id": model_id, "epochs": "1", "batch_size": "32", "request_id": "env-1"}
        xadd(client, job)
        process = start_worker_process(worker_env(server.url, data_root, tmp_path, api), "--burst")
        try:
            _, err = process.communicate(timeout=240)
        finally:
            kill_group(process)
        assert process.returncode == 0, err.decode(errors="replace")[-3000:]
        assert status(client, "env-1")["status"] == "completed", status(client, "env-1")
        assert len(api.versions(model_id)) == 1
        client.close()
