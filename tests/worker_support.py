"""Worker test helpers: a live API over real HTTP (uvicorn in a thread), worker settings and
processes, and readers for a job's status, events and dead letters. Nothing is mocked."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import redis
import uvicorn
from attrs import frozen
from litestar import Litestar
from redis.typing import EncodableT, FieldT

from handwriting_ai.api.app import create_app
from handwriting_ai.api.edge import EdgeProtocol
from handwriting_ai.contracts.events import TrainEvent, decode_event
from handwriting_ai.contracts.jobs import DeadLetter, dead_letter_from_fields
from handwriting_ai.inference.store import list_versions
from handwriting_ai.settings import Settings, load_settings
from handwriting_ai.streams.keys import DEAD_STREAM, JOBS_STREAM, job_events_key, status_key
from helpers import make_settings, write_artifact

API_KEY = "worker-test-key"
TINY_MODEL_ID = "mnist_digitnet_tiny_v1"
SyncRedis = redis.Redis

# What a subprocess of a test inherits from the test's own environment: where Python, the
# installed packages (PYTHONPATH: a mutation run points it at a scratch copy) and a temp dir are.
# Never the developer's settings (STREAMS__*, APP__*, REDIS_URL, ...): a test sets what it means.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


def base_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess of a test: `INHERITED_ENV` and `LC_*` from ours, then
    exactly `extra`."""
    env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV or k.startswith("LC_")}
    env.update(extra)
    return env


SERVE_LINE = re.compile(r"digits: API listening on http://(\S+):(\d+) ")


def serve_port(log: str) -> int | None:
    """The port `digits serve` says it listens on (its `--port 0`: the kernel's pick): the last
    such line of its log, None before it says."""
    found = SERVE_LINE.findall(log)
    return int(found[-1][1]) if found else None


@contextmanager
def serve_app(app: Litestar, *, http: type[EdgeProtocol] = EdgeProtocol) -> Iterator[str]:
    """Serve an ASGI app with uvicorn (the service's edge protocol) in a thread on a port the
    kernel picks; yields its URL.

    The socket is bound (port 0) before uvicorn starts and handed to it, so no other process can
    take the port between choosing and listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, http=http)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout_s=30, what="the API to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@frozen
class LiveApi:
    url: str
    model_dir: Path

    def versions(self, model_id: str = TINY_MODEL_ID) -> list[str]:
        return list_versions(self.model_dir, model_id)


@contextmanager
def live_api(tmp_dir: Path) -> Iterator[LiveApi]:
    """The real app (uploads enabled by an API key) served by uvicorn on a free port."""
    model_dir = tmp_dir / "api-models"
    model_dir.mkdir(parents=True)
    write_artifact(model_dir, "tiny_seven", seed=1, prefer=7)
    settings = make_settings(model_dir, ["tiny_seven"], {"SECURITY__API_KEY": API_KEY})
    with serve_app(create_app(settings)) as url:
        yield LiveApi(url, model_dir)


def worker_env(
    redis_url: str, data_root: Path, work_dir: Path, api: LiveApi, **extra: str
) -> dict[str, str]:
    """Environment for a worker: real Redis, tiny data, its own artifacts folder, the live API."""
    return {
        "REDIS_URL": redis_url,
        "APP__DATA_ROOT": str(data_root),
        "APP__ARTIFACTS_ROOT": str(work_dir / "artifacts"),
        "APP__LOG_LEVEL": "warning",
        "HANDWRITING_API_URL": api.url,
        "HANDWRITING_API_KEY": API_KEY,
        "EVENTS__BATCH_EVERY": "5",
        "APP__THREADS": "1",  # two workers share this machine's cores
        **extra,
    }


def worker_settings(env: Mapping[str, str]) -> Settings:
    return load_settings(dict(env))


def start_worker_process(env: Mapping[str, str], *args: str) -> subprocess.Popen[bytes]:
    """`python -m handwriting_ai.worker` as its own process (so it can be SIGKILLed), with
    `base_env()` and `env`: nothing of the developer's shell settings."""
    return subprocess.Popen(
        [sys.executable, "-m", "handwriting_ai.worker", *args],
        env=base_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a kill of the group takes its training children too
    )


def kill_group(process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
    """Kill the worker and its children: a machine going away, not a polite stop."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    process.wait(10)


def wait_until(
    check: Callable[[], bool], *, timeout_s: float, what: str, every_s: float = 0.05
) -> float:
    """Poll `check` until true; the seconds it took. Fails the test after `timeout_s`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
    return time.monotonic() - started


def events(client: SyncRedis, request_id: str) -> list[TrainEvent]:
    rows = client.xrange(job_events_key(request_id)) or []
    return [decode_event({_s(k): _s(v) for k, v in (f or {}).items()}) for _, f in rows]


def event_types(client: SyncRedis, request_id: str) -> list[str]:
    return [
        e.type.removeprefix("digits.train.").removesuffix(".v1") for e in events(client, request_id)
    ]


def status(client: SyncRedis, request_id: str) -> dict[str, str]:
    raw = client.hgetall(status_key(request_id))
    return {_s(k): _s(v) for k, v in raw.items()}


def dead_letters(client: SyncRedis) -> list[DeadLetter]:
    rows = client.xrange(DEAD_STREAM) or []
    return [dead_letter_from_fields({_s(k): _s(v) for k, v in (f or {}).items()}) for _, f in rows]


def entry_fields(letter: DeadLetter) -> dict[str, str]:
    value: object = json.loads(letter.entry_fields)
    assert isinstance(value, dict)
    return {str(k): str(v) for k, v in value.items()}


def xadd(client: SyncRedis, fields: Mapping[str, str]) -> str:
    """`redis-cli XADD digits:train '*' k v ...`: the entry id."""
    flat: dict[FieldT, EncodableT] = {k: v for k, v in fields.items()}
    return _s(client.xadd(JOBS_STREAM, flat))


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def wait_until_async(
    check: Callable[[], bool], *, timeout_s: float, what: str, every_s: float = 0.05
) -> float:
    """`wait_until` for tests whose worker runs on the same event loop."""
    import asyncio

    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(every_s)
    return time.monotonic() - started


def consumer_of(process: subprocess.Popen[bytes]) -> str:
    """The consumer name a worker process uses: `<host>-<pid>`."""
    return f"{socket.gethostname()}-{process.pid}"


def is_healthy(client: SyncRedis, consumer: str) -> bool:
    return bool(client.exists(f"digits:worker:{consumer}:health"))
