"""The embedded Redis of `digits up`: a real redis-server with AOF in a temp data root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from handwriting_ai.streams.keys import JOBS_STREAM
from handwriting_ai.supervisor.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    find_redis_server,
    pings,
    redis_url_for,
    server_args,
)
from helpers import pid_alive
from worker_support import base_env


def test_the_binary_is_found() -> None:
    binary = find_redis_server()
    assert binary.name == "redis-server"
    assert binary.is_file()


def test_server_args_persist_and_never_evict(tmp_path: Path) -> None:
    args = server_args(6390, tmp_path)
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] == "everysec"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--bind"] == "127.0.0.1"
    assert pairs["--dir"] == str(tmp_path)


def test_a_queued_job_survives_a_restart(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "data" / "redis")
    server.start()
    first_pid = server.pid
    assert first_pid is not None
    port = server.port
    try:
        client = redis.Redis(port=port, decode_responses=True)
        entry = client.xadd(JOBS_STREAM, {"model_id": "mnist_digitnet_tiny_v1", "epochs": "1"})
        client.close()
        assert server.stop() == 0  # SHUTDOWN: a clean exit, the AOF flushed
        assert not pid_alive(first_pid)
        assert not pings(port)
        assert (tmp_path / "data" / "redis" / "port").read_text().strip() == str(port)

        server.start()  # remembers and reuses the port
        assert server.port == port
        assert server.pid != first_pid
        client = redis.Redis(port=port, decode_responses=True)
        entries = client.xrange(JOBS_STREAM) or []
        client.close()
        assert [(e_id, fields) for e_id, fields in entries] == [
            (entry, {"model_id": "mnist_digitnet_tiny_v1", "epochs": "1"})
        ]
    finally:
        second_pid = server.pid
        server.stop()
    assert second_pid is not None
    assert not pid_alive(second_pid)
    assert any(p.name.startswith("appendonly") for p in (tmp_path / "data" / "redis").iterdir())


def test_a_configured_port_in_use_is_an_error(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path / "a")
    first.start()
    try:
        second = EmbeddedRedis(tmp_path / "b", port=first.port)
        with pytest.raises(EmbeddedRedisError, match="in use"):
            second.start()
    finally:
        first.stop()
    assert first.poll() is None  # stopped and forgotten


def _digits(data_root: Path, *args: str, redis_url: str = "") -> subprocess.CompletedProcess[str]:
    env = base_env(APP__DATA_ROOT=str(data_root), REDIS_URL=redis_url)
    return subprocess.run(
        [sys.executable, "-m", "handwriting_ai.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_redis_cli_and_watch_find_the_embedded_server(tmp_path: Path) -> None:
    data_root = tmp_path / "data"
    missing = _digits(data_root, "redis-cli", "PING")
    assert missing.returncode == 2
    assert "no Redis: set REDIS_URL or run `digits up`" in missing.stderr
    server = EmbeddedRedis(data_root / "redis")
    server.start()
    try:
        added = _digits(data_root, "redis-cli", "XADD", JOBS_STREAM, "*", "model_id", "m", "x", "1")
        assert added.returncode == 0, added.stderr
        entry = added.stdout.strip()
        client = redis.Redis(port=server.port, decode_responses=True)
        assert [e_id for e_id, _ in client.xrange(JOBS_STREAM) or []] == [entry]
        # redis-cli's own options pass through (the RUNBOOK's health-key scan).
        client.set("digits:worker:w1:health", "ok")
        scan = _digits(data_root, "redis-cli", "--scan", "--pattern", "digits:worker:*:health")
        assert (scan.returncode, scan.stdout.split()) == (0, ["digits:worker:w1:health"]), scan
        client.close()
        unknown = _digits(data_root, "watch", "no-such-job", "--timeout-s", "5")
        assert unknown.returncode == 2  # reached Redis, which does not know the job
        assert "redis unavailable" not in unknown.stdout
    finally:
        server.stop()
    assert redis_url_for("redis://elsewhere:1/0", data_root) == "redis://elsewhere:1/0"
    assert redis_url_for(None, data_root) == f"redis://127.0.0.1:{server.port}/0"
