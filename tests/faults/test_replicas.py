"""API replicas sharing one model directory converge on one served version per model id.

Each replica is a real app (`create_app`, lifespan included; in the last test, a real `digits
serve` process) on a shared `DIGITS__MODEL_DIR` and one real redis-server. New versions appear
on disk the way an upload stores them (written whole elsewhere, then renamed into place);
`CURRENT` is never touched by the test except to play an operator. Nothing of ours is mocked:
what a replica serves is read from `/v1/models/active`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
from litestar.testing import TestClient

import stream_helpers
from handwriting_ai.api.app import create_app
from handwriting_ai.api.schemas import ActiveModels
from handwriting_ai.contracts.converter import structure
from handwriting_ai.inference.store import set_current, version_dir
from helpers import Client, json_of, make_settings, png_bytes, post_read, seven, write_artifact
from stream_helpers import completed, publish
from worker_support import base_env, serve_port

redis_server = stream_helpers.redis_server
redis_url = stream_helpers.redis_url

MODEL = "tiny_a"
V1, V2, V3, V4, V5 = (f"2025010{d}T000000Z" for d in range(1, 6))
INTERVAL_S = "0.2"  # DIGITS__RECONCILE_INTERVAL_S in these tests
CONVERGE_S = 30.0  # generous: the test machine is shared and slow


def _val_acc(value: float) -> Callable[[dict[str, object]], None]:
    return lambda manifest: manifest.update(val_acc=value)


def _seed(model_dir: Path, *, prefer: int = 3, val_acc: float = 0.99) -> None:
    """V1 stored and named by CURRENT: what every replica serves at first."""
    write_artifact(model_dir, MODEL, seed=1, prefer=prefer, version=V1, edit=_val_acc(val_acc))


def _store(model_dir: Path, version: str, *, prefer: int, val_acc: float) -> None:
    """A new stored version that CURRENT does not name, appearing at once as an upload does."""
    staging = model_dir.parent / f"staging-{version}"
    write_artifact(staging, MODEL, seed=5, prefer=prefer, version=version, edit=_val_acc(val_acc))
    os.replace(version_dir(staging, MODEL, version), version_dir(model_dir, MODEL, version))


def _current(model_dir: Path) -> str:
    return (model_dir / MODEL / "CURRENT").read_text().strip()


@contextmanager
def replica(model_dir: Path, extra: Mapping[str, str]) -> Iterator[Client]:
    env = {"DIGITS__RECONCILE_INTERVAL_S": INTERVAL_S, **extra}
    with TestClient(create_app(make_settings(model_dir, [MODEL], env))) as client:
        yield client


def _served(client: Client) -> str | None:
    active = structure(json_of(client.get("/v1/models/active")), ActiveModels)
    return next((m.version for m in active.members if m.model_id == MODEL), None)


def _digit(client: Client) -> int:
    body = json_of(post_read(client, png_bytes(seven())))
    assert isinstance(body, dict)
    digit = body["digit"]
    assert isinstance(digit, int)
    return digit


def _until(check: Callable[[], bool], what: str, timeout_s: float = CONVERGE_S) -> None:
    stream_helpers.wait_for(check, timeout_s=timeout_s, what=what)


def _stays(client: Client, version: str, seconds: float = 1.5) -> None:
    """`version` is still served after several reconcile intervals."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert _served(client) == version
        time.sleep(0.1)


def test_a_replica_that_was_down_for_the_event_serves_the_promoted_version(
    model_dir: Path, redis_url: str
) -> None:
    _seed(model_dir)
    with replica(model_dir, {"REDIS_URL": redis_url}) as a:
        assert _served(a) == V1
    # Every replica is down (restarting) while training ends: nobody reads the event.
    _store(model_dir, V2, prefer=8, val_acc=0.995)
    publish(redis_url, completed("r1", MODEL, version=V2, val_acc=0.995))
    with replica(model_dir, {"REDIS_URL": redis_url}) as b:
        # Reconciled at start, before serving: no new event needed.
        assert _served(b) == V2
        assert _digit(b) == 8
        assert _current(model_dir) == V2
        with replica(model_dir, {"REDIS_URL": redis_url}) as a:
            assert _served(a) == V2
            assert _digit(a) == 8


def test_a_failed_reload_is_applied_by_the_next_reconcile(model_dir: Path, redis_url: str) -> None:
    _seed(model_dir)
    with replica(model_dir, {"REDIS_URL": redis_url}) as a:
        # The event comes first; the version folder is not there yet, so this reload fails.
        publish(redis_url, completed("r1", MODEL, version=V2, val_acc=0.995))
        _stays(a, V1, seconds=1.0)
        _store(model_dir, V2, prefer=8, val_acc=0.995)
        _until(lambda: _served(a) == V2, "the failed reload to be applied")
        assert _digit(a) == 8
        assert _current(model_dir) == V2


def test_a_replica_converges_on_another_replicas_promotion(model_dir: Path) -> None:
    _seed(model_dir)
    # No Redis: the shared model directory is the registry, and its files are all either
    # replica learns from (on its periodic pass). With Redis, Redis is the registry and these
    # files are its cache: see test_replicas_apart.py.
    with replica(model_dir, {}) as a, replica(model_dir, {}) as b:
        assert (_served(a), _served(b)) == (V1, V1)
        _store(model_dir, V2, prefer=8, val_acc=0.995)
        _until(lambda: _served(a) == V2, "A to promote v2")
        _until(lambda: _served(b) == V2, "B to follow A's promotion")
        assert _digit(b) == 8
        # An operator rolls back by hand: both follow CURRENT, and v2, already judged, is not
        # promoted again behind the operator's back.
        set_current(model_dir, MODEL, V1)
        _until(lambda: (_served(a), _served(b)) == (V1, V1), "both to follow the rollback")
        _stays(a, V1)
        assert (_served(b), _current(model_dir)) == (V1, V1)


def test_accuracy_cannot_slide_below_the_best_ever_served(model_dir: Path, redis_url: str) -> None:
    _seed(model_dir, val_acc=0.99)
    env = {"REDIS_URL": redis_url, "DIGITS__PROMOTION_TOLERANCE": "0.002"}
    with replica(model_dir, env) as a:
        _store(model_dir, V2, prefer=8, val_acc=0.9885)  # within 0.002 of 0.99: promoted
        publish(redis_url, completed("r2", MODEL, version=V2, val_acc=0.9885))
        _until(lambda: _served(a) == V2, "v2 (0.9885) to be promoted")
        _store(model_dir, V3, prefer=5, val_acc=0.9870)  # within 0.002 of v2, not of 0.99
        publish(redis_url, completed("r3", MODEL, version=V3, val_acc=0.9870))
        _stays(a, V2)
        _store(model_dir, V4, prefer=4, val_acc=0.9881)  # within 0.002 of the best: promoted
        publish(redis_url, completed("r4", MODEL, version=V4, val_acc=0.9881))
        _until(lambda: _served(a) == V4, "v4 (0.9881) to be promoted")
    assert _current(model_dir) == V4
    # The best ever served (0.99) survives a restart and binds every replica.
    _store(model_dir, V5, prefer=6, val_acc=0.9875)
    with replica(model_dir, env) as b:
        assert _served(b) == V4
        _stays(b, V4)
    assert _current(model_dir) == V4


# --------------------------------------------------------------------------- real processes


@contextmanager
def serve_process(model_dir: Path, redis_url: str, log_path: Path) -> Iterator[str]:
    """`digits serve --port 0`, JSON logs in `log_path`; its base URL (the port it says it bound)
    while it runs."""
    env = base_env(
        DIGITS__MODEL_DIR=str(model_dir),
        DIGITS__ACTIVE_MODEL=MODEL,
        DIGITS__RECONCILE_INTERVAL_S=INTERVAL_S,
        REDIS_URL=redis_url,
        APP__THREADS="1",
        APP__LOG_FORMAT="json",
    )
    command = [sys.executable, "-m", "handwriting_ai.cli", "serve", "--port", "0"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    url = ""

    def ready() -> bool:
        nonlocal url
        assert process.poll() is None, log_path.read_text()[-3000:]
        port = serve_port(log_path.read_text())
        if port is None:
            return False
        url = f"http://127.0.0.1:{port}"
        try:
            return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _until(ready, "digits serve to be ready", timeout_s=120)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def _served_at(url: str) -> str | None:
    active = structure(httpx.get(f"{url}/v1/models/active", timeout=5).json(), ActiveModels)
    return next((m.version for m in active.members if m.model_id == MODEL), None)


def _log_events(path: Path, event: str) -> list[dict[str, object]]:
    found = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
    return found


def test_two_serve_processes_judge_a_version_once_and_serve_it_both(
    model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    _seed(model_dir)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with (
        serve_process(model_dir, redis_url, logs[0]) as a,
        serve_process(model_dir, redis_url, logs[1]) as b,
    ):
        assert (_served_at(a), _served_at(b)) == (V1, V1)
        _store(model_dir, V2, prefer=8, val_acc=0.995)
        _store(model_dir, V3, prefer=5, val_acc=0.95)  # far worse: held back
        publish(redis_url, completed("r2", MODEL, version=V2, val_acc=0.995))
        _until(lambda: (_served_at(a), _served_at(b)) == (V2, V2), "both processes to serve v2")
        assert {_served_at(u) for u in (a, b) for _ in range(5)} == {V2}
    # Both heard the event; one judged each version under the shared lock, the other followed.
    promoted = [r for log in logs for r in _log_events(log, "model_promoted")]
    held = [r for log in logs for r in _log_events(log, "model_candidate")]
    assert [r["new_version"] for r in promoted] == [V2]
    assert [r["version"] for r in held] == [V3]
    assert _current(model_dir) == V2
