"""The supervisor of `digits up`: the backoff policy with plain values, then real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from redis.typing import EncodableT, FieldT

from handwriting_ai.logging import configure_logging
from handwriting_ai.streams.keys import JOBS_STREAM
from handwriting_ai.supervisor import (
    ChildSpec,
    Supervisor,
    backoff_s,
    child_environment,
    child_specs,
    failures_after_exit,
)
from handwriting_ai.supervisor import local_url as local_url_of
from handwriting_ai.supervisor.embedded_redis import pings
from helpers import pid_alive
from tiny_mnist import write_tiny_mnist
from worker_support import TINY_MODEL_ID, base_env, wait_until

SAMPLE = Path(__file__).resolve().parents[1] / "ops" / "samples" / "digit.jpg"
SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")
STOP_WAIT_S = 10.0  # a process that was SIGKILLed is reaped within this


def _ready_then(ready: Path, code: str) -> str:
    """Python code for a child: its setup, then it creates `ready` (the test waits for that file,
    not for a time), then `code`."""
    return f"{code}\nopen({str(ready)!r}, 'w').close()\n"


def test_backoff_doubles_and_is_capped() -> None:
    assert backoff_s(0) == 0.0
    assert [backoff_s(n, base_s=0.5, cap_s=30.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_s(7, base_s=0.5, cap_s=30.0) == 30.0
    assert backoff_s(10_000, base_s=0.5, cap_s=30.0) == 30.0


def test_a_stable_child_starts_its_failure_count_again() -> None:
    assert failures_after_exit(0, 0.2, stable_s=30.0) == 1
    assert failures_after_exit(3, 0.2, stable_s=30.0) == 4
    assert failures_after_exit(3, 45.0, stable_s=30.0) == 1


def test_children_learn_where_redis_and_the_api_are(tmp_path: Path) -> None:
    env = child_environment(
        {"PATH": "/bin", "REDIS_URL": "redis://elsewhere"},
        redis_url="redis://127.0.0.1:7000/0",
        api_url="http://127.0.0.1:9000",
        upload_key="k",
        config=tmp_path / "c.toml",
    )
    assert env["REDIS_URL"] == "redis://127.0.0.1:7000/0"
    assert env["SECURITY__ADMIN_KEY"] == env["HANDWRITING_API_KEY"] == "k"
    assert "SECURITY__API_KEY" not in env  # reads stay as the operator configured them
    assert env["HANDWRITING_API_URL"] == "http://127.0.0.1:9000"
    assert env["HANDWRITING_AI_CONFIG"] == str((tmp_path / "c.toml").resolve())
    assert env["PATH"] == "/bin"
    specs = child_specs(env, host="0.0.0.0", port=9000, workers=2)
    assert [s.name for s in specs] == ["api", "worker-1", "worker-2"]
    assert specs[0].argv[1:] == (
        "-m", "handwriting_ai.cli", "serve", "--host", "0.0.0.0", "--port", "9000"
    )  # fmt: skip
    assert specs[1].argv[1:] == ("-m", "handwriting_ai.worker")
    assert specs[0].pass_fds == ()
    # APP__PORT=0: `digits up` binds the port and hands the socket to the API
    (api, *_) = child_specs(env, host="127.0.0.1", port=40123, workers=0, api_fd=7)
    assert api.argv[1:] == ("-m", "handwriting_ai.cli", "serve", "--fd", "7")
    assert api.pass_fds == (7,)
    assert local_url_of("0.0.0.0", 9000) == "http://127.0.0.1:9000"
    assert local_url_of("::", 9000) == "http://[::1]:9000"


def _until(condition: Callable[[], bool], timeout_s: float, tick: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        tick()
        time.sleep(0.02)


def test_a_killed_child_is_restarted_with_backoff_and_logged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    sup = Supervisor(
        [ChildSpec("api", SLEEPER, base_env()), ChildSpec("worker-1", SLEEPER, {})],
        base_backoff_s=0.3,
        stop_timeout_s=5.0,
    )
    sup.start()
    try:
        worker = sup.child("worker-1")
        first = worker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        _until(lambda: worker.restarts == 1 and worker.running, 5.0, sup.tick)
        assert time.monotonic() - killed_at >= 0.3  # waited for the backoff
        assert worker.pid != first
        assert worker.failures == 1
        assert sup.child("api").restarts == 0
        # a second quick death doubles the delay
        os.kill(worker.pid or 0, signal.SIGKILL)
        _until(lambda: worker.restart_at is not None, 5.0, sup.tick)
        assert worker.failures == 2
        _until(lambda: worker.restarts == 2 and worker.running, 5.0, sup.tick)
    finally:
        pids = [c.pid for c in sup.children]
        sup.shutdown()
    assert all(pid is not None and not pid_alive(pid) for pid in pids)
    logged = capsys.readouterr().err
    exited = [json.loads(line) for line in logged.splitlines() if '"child_exited"' in line]
    assert [e["child"] for e in exited] == ["worker-1", "worker-1"]
    assert exited[0]["returncode"] == -signal.SIGKILL
    assert [e["restart_in_s"] for e in exited] == [0.3, 0.6]
    assert logged.count('"child_restarted"') == 2


def test_shutdown_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ignore = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)"
    stubborn = (sys.executable, "-c", _ready_then(ready, ignore) + "time.sleep(60)\n")
    sup = Supervisor([ChildSpec("stubborn", stubborn, {})], stop_timeout_s=0.5)
    sup.start()
    pid = sup.child("stubborn").pid
    assert pid is not None
    wait_until(ready.exists, timeout_s=30, what="the child to ignore SIGTERM")
    started = time.monotonic()
    sup.shutdown()
    assert 0.5 <= time.monotonic() - started < 5.0
    assert not pid_alive(pid)


def _on_sigterm_write(name: str, out: Path, delay_s: float, ready: Path) -> tuple[str, ...]:
    """A child that, on SIGTERM, waits `delay_s` (a job finishing), then appends its name; it
    creates `ready` once its handler is installed."""
    code = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        f"    time.sleep({delay_s})\n"
        f"    open({str(out)!r}, 'a').write({name!r} + '\\n')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)"
    )
    return (sys.executable, "-c", _ready_then(ready, code) + "time.sleep(60)\n")


def test_workers_stop_before_the_api_they_upload_to(tmp_path: Path) -> None:
    order = tmp_path / "order"
    ready = [tmp_path / "api.ready", tmp_path / "worker-1.ready"]
    specs = [
        ChildSpec("api", _on_sigterm_write("api", order, 0.0, ready[0]), {}),
        ChildSpec("worker-1", _on_sigterm_write("worker-1", order, 0.6, ready[1]), {}, stop_wave=1),
    ]
    sup = Supervisor(specs, stop_timeout_s=10.0)
    sup.start()
    wait_until(lambda: all(r.exists() for r in ready), timeout_s=30, what="both handlers")
    sup.shutdown()
    # The API is asked to stop only once the worker has finished.
    assert order.read_text().splitlines() == ["worker-1", "api"]
    waves = [(s.name, s.stop_wave) for s in child_specs({}, host="h", port=1, workers=2)]
    assert waves == [("api", 0), ("worker-1", 1), ("worker-2", 1)]


def test_run_stops_on_sigterm_from_another_process(tmp_path: Path) -> None:
    """`run` in a real process: SIGTERM to the supervisor stops its children, exit 0."""
    script = tmp_path / "sup.py"
    pids = tmp_path / "pids"
    script.write_text(
        "import sys\n"
        "from handwriting_ai.supervisor import ChildSpec, Supervisor\n"
        f"argv = {SLEEPER!r}\n"
        "sup = Supervisor([ChildSpec('a', argv, {}), ChildSpec('b', argv, {})])\n"
        f"sup.hooks.append(lambda: open({str(pids)!r}, 'w').write("
        "' '.join(str(c.pid) for c in sup.children)))\n"
        "sys.exit(sup.run())\n"
    )
    # The hook runs in the supervisor's loop, so the file also says its handlers are installed.
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=base_env(), stderr=subprocess.DEVNULL
    )
    try:
        wait_until(
            lambda: pids.exists() and len(pids.read_text().split()) == 2,
            timeout_s=20,
            what="the supervisor's children",
        )
        children = [int(p) for p in pids.read_text().split()]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_WAIT_S)
    assert not any(pid_alive(pid) for pid in children)


# --- the real thing: `digits up` ------------------------------------------------------------


def _status(url: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(url, data=data, timeout=1) as response:
            code: int = response.status
            return code
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _read(url: str, image: bytes) -> dict[str, object]:
    response = httpx.post(url, files={"file": ("digit.jpg", image, "image/jpeg")}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def _start_up(data_root: Path, log: Path, *, workers: int = 1) -> subprocess.Popen[bytes]:
    """`digits up` on the port the kernel picks (APP__PORT=0; `_wait_ready` says which)."""
    env = base_env(
        APP__DATA_ROOT=str(data_root),
        APP__PORT="0",
        APP__THREADS="1",
        STREAMS__SHUTDOWN_GRACE_S="5",
    )
    cmd = [sys.executable, "-m", "handwriting_ai.cli", "up", "--workers", str(workers)]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=out)


UP_API_LINE = re.compile(r"digits up: API: http://127\.0\.0\.1:(\d+) ")


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> int:
    """Wait until `digits up` says "ready" (its own probe of /readyz got a 200); the API's port,
    from the `API: <url>` line it wrote before starting the API."""

    def ready() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        return "digits up: ready" in log.read_text()

    wait_until(ready, timeout_s=120, what=f"`digits up` to be ready ({log})", every_s=0.25)
    found = UP_API_LINE.findall(log.read_text())
    assert found, log.read_text()[-3000:]
    port = int(found[-1])
    assert _status(f"http://127.0.0.1:{port}/readyz") == 200
    return port


def _log_events(log: Path, event: str) -> list[dict[str, object]]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                found.append(record)
    return found


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_WAIT_S)


@pytest.mark.slow
def test_digits_up_runs_everything_and_keeps_queued_jobs(tmp_path: Path) -> None:
    data_root = write_tiny_mnist(tmp_path / "data")
    log = tmp_path / "up.log"
    # First start without workers, so that the job below stays queued across the restart.
    proc = _start_up(data_root, log, workers=0)
    try:
        port = _wait_ready(proc, log)
        redis_port = int((data_root / "redis" / "port").read_text())
        key = (data_root / "admin_key").read_text().strip()
        assert len(key) >= 32
        assert (data_root / "admin_key").stat().st_mode & 0o777 == 0o600
        # Reads need no key (none configured) and are answered by the shipped ensemble.
        reading = _read(f"http://127.0.0.1:{port}/v1/read", SAMPLE.read_bytes())  # README's
        assert (reading["digit"], reading["model_id"]) == (7, "ensemble_3_models")
        # Uploads do need the generated key.
        assert _status(f"http://127.0.0.1:{port}/v1/admin/models/upload", b"x") == 401
        client = redis.Redis(port=redis_port, decode_responses=True)
        job: dict[FieldT, EncodableT] = {"model_id": TINY_MODEL_ID, "epochs": "1"}
        job.update(batch_size="32", request_id="queued-1")
        entry = client.xadd(JOBS_STREAM, job)
        client.close()
    finally:
        _stop(proc, signal.SIGINT)  # Ctrl-C
    text = log.read_text()
    assert f"API: http://127.0.0.1:{port}" in text
    assert "digits up: stopped" in text
    assert _status(f"http://127.0.0.1:{port}/healthz") == 0  # the API is gone
    assert not pings(redis_port)  # and so is Redis

    log = tmp_path / "up2.log"
    proc = _start_up(data_root, log)  # the same data root: Redis comes back from its AOF
    try:
        _wait_ready(proc, log)
        assert int((data_root / "redis" / "port").read_text()) == redis_port
        client = redis.Redis(port=redis_port, decode_responses=True)
        assert entry in [e_id for e_id, _ in client.xrange(JOBS_STREAM) or []]

        def job_status() -> str:
            return str(client.hget("digits:job:queued-1", "status") or "")

        _wait(lambda: job_status() in ("completed", "failed", "dead"), 120)
        assert job_status() == "completed", client.hgetall("digits:job:queued-1")
        # A worker killed with SIGKILL is restarted by the supervisor.
        (started,) = [e for e in _log_events(log, "child_started") if e["child"] == "worker-1"]
        worker_pid = started["pid"]
        assert isinstance(worker_pid, int)
        os.kill(worker_pid, signal.SIGKILL)
        _wait(lambda: bool(_log_events(log, "child_restarted")), 30)
        (restarted,) = _log_events(log, "child_restarted")
        assert restarted["child"] == "worker-1"
        assert restarted["pid"] != worker_pid
        client.close()
    finally:
        _stop(proc, signal.SIGTERM)
    (exited,) = _log_events(log, "child_exited")
    assert exited["returncode"] == -signal.SIGKILL


def _wait(condition: Callable[[], bool], timeout_s: float) -> None:
    wait_until(condition, timeout_s=timeout_s, what="the condition", every_s=0.2)


def test_up_refuses_a_busy_api_port_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from handwriting_ai.settings import load_settings
    from handwriting_ai.supervisor import up

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port: int = busy.getsockname()[1]
        settings = load_settings({"APP__DATA_ROOT": str(tmp_path)})
        assert up(settings, workers=1, host="127.0.0.1", port=port) == 2
    assert "address is in use" in capsys.readouterr().err
    assert not (tmp_path / "redis").exists()  # no Redis was started


@pytest.mark.slow
def test_digits_up_with_redis_url_starts_no_redis(
    tmp_path: Path, hostile_environ: dict[str, str]
) -> None:
    """Also: the developer's shell settings (`hostile_environ`) change nothing."""
    from redis_server import running_redis

    with running_redis(tmp_path) as server:
        data_root, log = tmp_path / "data", tmp_path / "up.log"
        env = base_env(
            REDIS_URL=server.url,
            SECURITY__API_KEY="configured-key",
            APP__DATA_ROOT=str(data_root),
            APP__PORT="0",
            APP__THREADS="1",
        )
        cmd = [sys.executable, "-m", "handwriting_ai.cli", "up", "--workers", "0"]
        with log.open("ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out)
        try:
            port = _wait_ready(proc, log)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/models/active",
                headers={"X-Api-Key": "configured-key"},
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(STOP_WAIT_S)
        text = log.read_text()
        assert f"Redis: {server.url} (REDIS_URL; no embedded Redis)" in text
        assert "upload key: SECURITY__API_KEY" in text
        assert not (data_root / "redis").exists()
        assert not (data_root / "admin_key").exists()
        assert redis.Redis.from_url(server.url).ping()  # not ours to stop
